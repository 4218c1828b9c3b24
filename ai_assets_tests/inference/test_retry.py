"""RetryPolicy backoff and `classify` over the SDK's real exception types."""

from __future__ import annotations

import email.utils
import json
import random
import re

import httpx2
import openai
import pytest

from ai_assets.lib.llm.retry import (
    MIN_SECRET_FRAGMENT,
    Failure,
    MalformedResponseError,
    RetryPolicy,
    classify,
    parse_retry_after,
    redact,
    secret_part,
)

REQUEST = httpx2.Request("POST", "https://api.example.test/v1/chat/completions")


def status_error(
    status: int, headers: dict[str, str] | None = None, body: object | None = None
) -> openai.APIStatusError:
    """The exception the SDK raises for `status`, built the way the SDK builds it."""
    body = body if body is not None else {"error": {"message": f"status {status}"}}
    response = httpx2.Response(status, headers=headers or {}, json=body, request=REQUEST)
    client = openai.AsyncOpenAI(api_key="test", base_url="https://api.example.test/v1")
    err = client._make_status_error_from_response(response)
    assert isinstance(err, openai.APIStatusError)
    return err


# --- delay ---------------------------------------------------------------------------------------


def test_backoff_is_full_jitter_within_an_exponential_ceiling_capped_by_max_delay() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=4.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (50, 4.0)]:
        draws = [policy.delay(attempt, None, rng) for _ in range(400)]
        assert all(0.0 <= d <= ceiling for d in draws), attempt
        # Full jitter: draws cover the whole range, not a band near the ceiling.
        assert min(draws) < 0.1 * ceiling and max(draws) > 0.9 * ceiling, attempt


def test_retry_after_is_a_floor_and_is_not_capped_by_max_delay() -> None:
    policy = RetryPolicy(base_delay_s=0.01, max_delay_s=2.0)
    rng = random.Random(2)
    for retry_after in (1.0, 5.0, 120.0):
        draws = [policy.delay(1, retry_after, rng) for _ in range(200)]
        assert all(retry_after <= d <= retry_after * 1.1 for d in draws), retry_after
        assert len(set(draws)) > 100  # jittered, so simultaneous 429s do not return in lockstep
    # A backoff ceiling larger than Retry-After can still win.
    late = RetryPolicy(base_delay_s=10.0, max_delay_s=60.0)
    assert max(late.delay(3, 0.5, rng) for _ in range(100)) > 5.0


def test_should_retry_respects_attempts_retryability_and_retry_after_ceiling() -> None:
    policy = RetryPolicy(max_attempts=3, max_retry_after_s=30.0)
    transient = Failure(True, "server_error", "boom", 500)
    assert policy.should_retry(transient, 1) and policy.should_retry(transient, 2)
    assert not policy.should_retry(transient, 3)
    assert not policy.should_retry(Failure(False, "bad_request", "no", 400), 1)
    assert policy.should_retry(Failure(True, "rate_limited", "wait", 429, 30.0), 1)
    assert not policy.should_retry(Failure(True, "rate_limited", "wait an hour", 429, 3600.0), 1)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


# --- Retry-After parsing -------------------------------------------------------------------------


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(None) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"Retry-After": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after": "-3"}) == 0.0
    # retry-after-ms is finer, so it wins when both are present.
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "junk", "retry-after": "9"}) == 9.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(30.0, abs=1.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after({"retry-after": past}, now=now) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "inf"}) is None
    assert parse_retry_after(httpx2.Headers({"RETRY-AFTER": "4"})) == 4.0


# --- classify ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable", "kind"),
    [
        (429, True, "rate_limited"),
        (408, True, "timeout"),
        (409, True, "conflict"),
        (500, True, "server_error"),
        (502, True, "server_error"),
        (503, True, "server_error"),
        (529, True, "server_error"),
        (400, False, "bad_request"),
        (401, False, "auth_error"),
        (403, False, "auth_error"),
        (404, False, "not_found"),
        (422, False, "bad_request"),
        (418, False, "client_error"),
    ],
)
def test_classify_status_codes(status: int, retryable: bool, kind: str) -> None:
    failure = classify(status_error(status))
    assert (failure.retryable, failure.kind, failure.status) == (retryable, kind, status)
    assert str(status) in failure.describe()


def test_classify_reads_retry_after_headers_from_the_response() -> None:
    assert classify(status_error(429, {"Retry-After": "12"})).retry_after_s == 12.0
    assert classify(status_error(503, {"retry-after-ms": "1500"})).retry_after_s == 1.5
    assert classify(status_error(429)).retry_after_s is None


def test_insufficient_quota_and_x_should_retry() -> None:
    quota = classify(status_error(429, body={"error": {"message": "quota", "code": "insufficient_quota"}}))
    assert (quota.retryable, quota.kind) == (False, "insufficient_quota")
    assert classify(status_error(500, {"x-should-retry": "false"})).retryable is False
    assert classify(status_error(400, {"x-should-retry": "true"})).retryable is True


def test_classify_transport_and_body_failures_are_retryable() -> None:
    timeout = classify(openai.APITimeoutError(request=REQUEST))
    assert (timeout.retryable, timeout.kind) == (True, "timeout")
    try:
        raise openai.APIConnectionError(request=REQUEST) from httpx2.RemoteProtocolError("Server disconnected")
    except openai.APIConnectionError as exc:
        dropped = classify(exc)
    assert (dropped.retryable, dropped.kind) == (True, "connection")
    assert "RemoteProtocolError" in dropped.message
    assert classify(ConnectionResetError("reset")).retryable
    assert classify(TimeoutError()).kind == "timeout"
    try:
        json.loads('{"choices": [')
    except json.JSONDecodeError as exc:
        garbage = classify(exc)
    assert (garbage.retryable, garbage.kind) == (True, "malformed_response")
    assert classify(MalformedResponseError("no choices")).retryable
    invalid = openai.APIResponseValidationError(httpx2.Response(200, request=REQUEST), body="x")
    assert (classify(invalid).retryable, classify(invalid).kind) == (True, "malformed_response")


def test_unknown_exceptions_are_final() -> None:
    failure = classify(TypeError("create() got an unexpected keyword argument 'foo'"))
    assert (failure.retryable, failure.kind) == (False, "error")
    assert "TypeError" in failure.message


def test_messages_never_carry_api_keys() -> None:
    key = "sk-proj-Abc123def456ghi789"
    leaky = status_error(401, body={"error": {"message": f"Incorrect API key provided: Bearer {key}"}})
    failure = classify(leaky)
    assert key not in failure.message and key not in failure.describe()
    assert "Incorrect API key" in failure.message
    # An explicitly named secret that does not look like a key is scrubbed too.
    custom = classify(
        status_error(403, body={"error": {"message": "token hunter2-token rejected"}}), secrets=["hunter2-token"]
    )
    assert "hunter2-token" not in custom.message
    assert redact('{"api_key": "abc123xyz"}') == '{"api_key": "***"}'
    long = classify(status_error(400, body={"error": {"message": "x" * 5000}}))
    assert len(long.message) <= 500


@pytest.mark.parametrize(
    ("key", "echoed"),
    [
        ("sk-Zq8hT3kP0wYb7uVn2LmR5sXc", "Zq8hT3kP0wYb7uVn2LmR5sXc"),  # without the sk- prefix
        ("sk-proj-Zq8hT3kP0wYb7uVn2LmR5sXc", "Zq8hT3kP0wYb7uVn2LmR5sXc"),  # without sk-proj-
        ("sk-proj-Zq8hT3kP0wYb7uVn2LmR5sXc", "proj-Zq8hT3kP0wYb7uVn2LmR5sXc"),  # without sk- only
        ("sk-Zq8hT3kP0wYb7uVn2LmR5sXc", "T3kP0wYb7uVn"),  # a "key id" from the middle
        ("Zq8hT3kP0wYb7uVn2LmR5sXc", "Zq8hT3kP0wYb"),  # a key with no known prefix, cut short
    ],
)
def test_a_key_echoed_in_any_shape_is_redacted(key: str, echoed: str) -> None:
    body = {"error": {"message": f"Incorrect API key provided: {echoed}. Check your key id {echoed}!"}}
    failure = classify(status_error(401, body=body), secrets=[key])
    secret = secret_part(key)
    leaked = [secret[i : i + MIN_SECRET_FRAGMENT] for i in range(len(secret) - MIN_SECRET_FRAGMENT + 1)]
    assert not [fragment for fragment in leaked if fragment in failure.message], failure.message
    # Only the secret part goes: "proj-" (a public prefix) may stay, the sentence around it does.
    assert re.search(r"Incorrect API key provided: (proj-)?\*\*\*\. Check your key id (proj-)?\*\*\*!", failure.message)


def test_redaction_keeps_text_that_merely_shares_short_runs_with_the_key() -> None:
    key = "sk-proj-Zq8hT3kP0wYb7uVn2LmR5sXc"
    assert secret_part(key) == "Zq8hT3kP0wYb7uVn2LmR5sXc" and secret_part("plain-token") == "plain-token"
    text = "model Zq8h not found; retry T3kP0w later"  # runs of 4 and 6 characters: not the key
    assert redact(text, [key]) == text
    assert redact("a" * 10_000 + "T3kP0wYb7uVn" + "b" * 10_000, [key]) == "a" * 10_000 + "***" + "b" * 10_000
    assert redact("key: abc", ["abc"]) == "key: abc"  # under 4 characters: too short to be a secret
