"""When to retry a failed request, and how long to wait first.

`classify` turns whatever a call raised into a `Failure` (retryable or not, with a short, key-free
message); `RetryPolicy` says how many attempts an item gets and how long to back off between them.
The OpenAI client is built with `max_retries=0`, so this module is the only retry logic in play.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import json
import math
import random
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import openai


class MalformedResponseError(Exception):
    """The server answered 2xx but the body is not a usable chat completion.

    Raised by `openai_call` (e.g. no `choices`); retryable, since a truncated or garbled body is
    almost always a transient proxy/gateway fault rather than a property of the prompt.
    """


@dataclass(frozen=True)
class Failure:
    """What went wrong with one attempt, in a form the engine can act on and record."""

    retryable: bool
    kind: str  # e.g. "rate_limited", "server_error", "connection", "bad_request"
    message: str  # short, redacted: safe to write to the output file and to logs
    status: int | None = None  # HTTP status, when the server answered
    retry_after_s: float | None = None  # the server's Retry-After / retry-after-ms, in seconds

    def describe(self) -> str:
        """One line for `OutputRow.error`: `kind (HTTP status): message`."""
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.kind}{status}: {self.message}"


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per item (per run) and exponential backoff with full jitter.

    `max_retry_after_s` is the longest server-requested wait we will sit out: a 429 that says
    "come back in an hour" is recorded as a final failure instead of stalling the whole batch
    (a later run of the asset retries it, since failed items are re-run on resume).
    """

    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 60.0
    max_retry_after_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("base_delay_s and max_delay_s must be >= 0")

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based) before the next one.

        Without Retry-After: "full jitter" backoff, uniform in [0, min(max_delay_s, base * 2**(attempt-1))];
        full jitter (not equal jitter) because it spreads a burst of simultaneous failures best.

        With Retry-After: never less than the server asked for, and *not* capped by max_delay_s —
        the server knows when its window reopens, and coming back sooner only buys another 429.
        Up to 10 % extra jitter is added on top so that the N requests told "1 s" at the same moment
        do not all return in the same millisecond; if the backoff draw is larger still, it wins.
        """
        ceiling = min(self.max_delay_s, self.base_delay_s * math.pow(2.0, min(max(attempt, 1) - 1, 60)))
        jittered = rng.uniform(0.0, ceiling)
        if retry_after_s is None:
            return jittered
        floor = max(0.0, retry_after_s)
        return max(floor + rng.uniform(0.0, 0.1 * floor), jittered)

    def should_retry(self, failure: Failure, attempts_this_run: int) -> bool:
        """Whether to send another attempt after `attempts_this_run` attempts have failed."""
        if not failure.retryable or attempts_this_run >= self.max_attempts:
            return False
        return failure.retry_after_s is None or failure.retry_after_s <= self.max_retry_after_s


# --- classification -----------------------------------------------------------------------------

_MAX_MESSAGE_CHARS = 500

# Things that look like credentials. OpenAI masks keys in its 401 message, but "OpenAI-compatible"
# gateways may echo headers or keys verbatim, and error rows end up in files people share.
_SECRET_PATTERNS = (
    re.compile(r"\b(?:sk|pk|rk|ak)-[A-Za-z0-9_\-*.]{6,}"),
    re.compile(r"(?i)\bbearer\s+[^\s\"',}]+"),
    re.compile(r"(?i)(api[_-]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
)


# What providers put before a key's secret part. Gateways and proxies echo keys in many shapes — the
# whole key, the key without its prefix, a "key id" cut from the middle — so the secret part is what
# gets scrubbed, along with any run of it at least MIN_SECRET_FRAGMENT characters long.
KEY_PREFIXES = (
    "sk-proj-", "sk-svcacct-", "sk-admin-", "sk-ant-api03-", "sk-ant-", "sk-or-v1-", "sk-", "pk-", "rk-", "ak-"
)  # fmt: skip
MIN_SECRET_FRAGMENT = 8


def secret_part(secret: str) -> str:
    """`secret` without a known provider prefix (`sk-proj-abc…` -> `abc…`); unchanged without one."""
    for prefix in KEY_PREFIXES:  # longest first where one prefix starts another
        if secret.startswith(prefix) and len(secret) > len(prefix):
            return secret[len(prefix) :]
    return secret


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with known secrets and key-shaped tokens replaced by `***`.

    For each secret: the whole secret, its secret part (`secret_part`), and every run of at least
    `MIN_SECRET_FRAGMENT` characters of the secret part. Secrets shorter than 4 characters are ignored
    (they would blank out ordinary words).
    """
    for secret in secrets:
        if not secret or len(secret) < 4:
            continue
        text = text.replace(secret, "***")
        body = secret_part(secret)
        if len(body) >= 4:
            text = text.replace(body, "***")
        if len(body) >= MIN_SECRET_FRAGMENT:
            text = _redact_fragments(text, body)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.re.groups else "") + "***", text)
    return text


def _redact_fragments(text: str, body: str) -> str:
    """Replace every maximal run of `text` that is a substring of `body` and is long enough.

    Linear in `len(text)`: each position costs one set lookup of a window of MIN_SECRET_FRAGMENT
    characters; a hit is extended as far as it stays a substring of `body` (keys are short).
    """
    size = MIN_SECRET_FRAGMENT
    windows = {body[i : i + size] for i in range(len(body) - size + 1)}
    out: list[str] = []
    start = i = 0
    while i <= len(text) - size:
        if text[i : i + size] not in windows:
            i += 1
            continue
        end = i + size
        while end < len(text) and text[i : end + 1] in body:
            end += 1
        out.append(text[start:i])
        out.append("***")
        start = i = end
    out.append(text[start:])
    return "".join(out)


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait per `retry-after-ms` (preferred: finer) or `Retry-After` (seconds or HTTP-date).

    Returns None when absent or unparsable; negative and past dates become 0. `now` (epoch seconds)
    is only for tests of the HTTP-date form.
    """
    if headers is None:
        return None
    ms = _header(headers, "retry-after-ms")
    if ms is not None:
        value = _finite_float(ms)
        if value is not None:
            return max(0.0, value / 1000.0)
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    value = _finite_float(raw)
    if value is not None:
        return max(0.0, value)
    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as such
        parsed = parsed.replace(tzinfo=dt.UTC)
    return max(0.0, parsed.timestamp() - (time.time() if now is None else now))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # httpx2.Headers is case-insensitive already; plain dicts in tests may not be.
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                return candidate
    return value


def _finite_float(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


_STATUS_KINDS = {
    400: "bad_request",
    401: "auth_error",
    403: "auth_error",
    404: "not_found",
    408: "timeout",
    409: "conflict",
    413: "bad_request",
    422: "bad_request",
    429: "rate_limited",
}


def classify(exc: BaseException, *, secrets: Iterable[str] = ()) -> Failure:
    """Decide whether the exception from one attempt is worth retrying.

    Retryable: HTTP 429, 408, 409, 5xx; timeouts; connection errors (including a server that hangs
    up without answering); 2xx bodies that are not valid JSON or not a chat completion. Any other
    4xx is final: the same request will fail the same way. So is a 429 whose body says
    `insufficient_quota` (billing, not pacing), and anything unrecognised (most likely a bug).
    A server's explicit `x-should-retry: true|false` header overrides the status rule, as in the SDK.
    `secrets` (e.g. the API key) are scrubbed from the message in addition to key-shaped tokens.
    """
    secrets = tuple(secrets)

    def msg(text: str) -> str:
        return short_message(text, secrets)

    if isinstance(exc, openai.APIResponseValidationError):
        return Failure(True, "malformed_response", msg(exc.message), exc.status_code)
    if isinstance(exc, openai.APIStatusError):
        headers = exc.response.headers if exc.response is not None else None
        failure = failure_for_status(exc.status_code, msg(exc.message), _error_code(exc))
        override = (headers.get("x-should-retry") if headers is not None else None) or ""
        if override.lower() in ("true", "false"):
            failure = dataclasses.replace(failure, retryable=override.lower() == "true")
        return dataclasses.replace(failure, retry_after_s=parse_retry_after(headers))
    # APITimeoutError subclasses APIConnectionError, so it must be tested first.
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return Failure(True, "timeout", msg(str(exc) or "request timed out"))
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f"{exc.message} ({type(cause).__name__}: {cause})" if cause is not None else exc.message
        return Failure(True, "connection", msg(detail))
    if isinstance(exc, ConnectionError):
        return Failure(True, "connection", msg(f"{type(exc).__name__}: {exc}"))
    # A 200 whose body is not JSON surfaces from the SDK as a bare JSONDecodeError (a ValueError);
    # one that is JSON but not a completion surfaces from openai_call as MalformedResponseError.
    if isinstance(exc, MalformedResponseError | json.JSONDecodeError | UnicodeDecodeError):
        return Failure(True, "malformed_response", msg(f"{type(exc).__name__}: {exc}"))
    return Failure(False, "error", msg(f"{type(exc).__name__}: {exc}"))


def failure_for_status(status: int, message: str, code: str | None = None) -> Failure:
    """The `Failure` of an HTTP error answer: also how a Batch API error line (status, body) is judged.
    `message` must already be short and redacted."""
    kind = _STATUS_KINDS.get(status, "server_error" if status >= 500 else "client_error")
    retryable = status in (408, 409, 429) or status >= 500
    if status == 429 and code == "insufficient_quota":
        kind, retryable = "insufficient_quota", False
    return Failure(retryable, kind, message, status)


def short_message(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` on one line, key-shaped tokens and `secrets` scrubbed, cut to the length an output row keeps."""
    text = redact(" ".join(str(text).split()), tuple(secrets))
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 1] + "…"


def _error_code(exc: openai.APIStatusError) -> str | None:
    # OpenAI puts {"error": {"code": ...}} in the body; the SDK unwraps "error" before storing it.
    if exc.code:
        return exc.code
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("code"), str):
            return inner["code"]
    return None
