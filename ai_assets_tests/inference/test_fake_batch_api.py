"""The fake server's Files and Batch APIs, through the real `openai.OpenAI` client.

These pin down what the batch client is tested against: if the fake drifted from what the SDK parses,
or from the scripted behaviour the client's tests rely on, they would test nothing.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from openai.types import Batch, FileDeleted, FileObject

from .openai_server import FakeOpenAIServer

ENDPOINT = "/v1/chat/completions"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
def client(server: FakeOpenAIServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as sdk:
        yield sdk


def _request(custom_id: str, text: str) -> dict[str, Any]:
    body = {"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}


def _jsonl(lines: list[Any]) -> bytes:
    dumped = (line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) for line in lines)
    return "".join(line + "\n" for line in dumped).encode()


def _submit(client: openai.OpenAI, lines: list[Any], **metadata: str) -> Batch:
    uploaded = client.files.create(file=("requests.jsonl", _jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h", metadata=metadata or None
    )


def _lines(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """A result file's lines by custom_id (in file order)."""
    assert file_id is not None
    lines = [json.loads(line) for line in client.files.content(file_id).text.splitlines()]
    return {line["custom_id"]: line for line in lines}


def _counts(batch: Batch) -> tuple[int, int, int]:
    assert batch.request_counts is not None
    return batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed


def test_instant_mode_completes_on_the_first_retrieve_with_one_output_line_per_request(
    server: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    data = _jsonl([_request("a", "[id:one] first"), _request("b", "[id:two] second\u2028one")])
    uploaded = client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert isinstance(uploaded, FileObject)
    assert (uploaded.object, uploaded.bytes, uploaded.filename, uploaded.purpose) == (
        "file",
        len(data),
        "requests.jsonl",
        "batch",
    )
    assert uploaded.id.startswith("file-") and uploaded.status == "processed"
    assert client.files.content(uploaded.id).content == data
    assert client.files.retrieve(uploaded.id).bytes == len(data)

    created = client.batches.create(
        input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h", metadata={"run": "r1"}
    )
    assert created.id.startswith("batch_") and created.status == "validating"
    assert (created.input_file_id, created.endpoint, created.completion_window) == (uploaded.id, ENDPOINT, "24h")
    assert created.metadata == {"run": "r1"} and created.expires_at == created.created_at + 86400
    assert created.output_file_id is None and created.in_progress_at is None and _counts(created) == (0, 0, 0)
    assert server.requests_for("one") == 0  # nothing runs before a client looks

    done = client.batches.retrieve(created.id)
    assert done.status == "completed" and done.errors is None
    assert done.in_progress_at is not None and done.finalizing_at is not None and done.completed_at is not None
    assert _counts(done) == (2, 2, 0) and done.error_file_id is None and done.model == "m"
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (9, 7)
    output = _lines(client, done.output_file_id)
    assert list(output) == ["a", "b"]
    assert output["a"]["id"].startswith("batch_req_") and output["a"]["error"] is None
    assert output["a"]["response"]["status_code"] == 200
    assert output["a"]["response"]["request_id"].startswith("req_")
    assert output["a"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: [id:one] first"
    assert output["b"]["response"]["body"]["id"] == "chatcmpl-two-1"
    assert output["b"]["response"]["body"]["choices"][0]["message"]["content"] == "echo: [id:two] second\u2028one"
    assert server.files[done.output_file_id].purpose == "batch_output"  # type: ignore[index]

    assert (server.uploads, server.batches_created, server.total_requests) == (1, 1, 2)
    assert (server.batch_requests_for("a"), server.batch_requests_for("b"), server.batch_requests_for("c")) == (1, 1, 0)
    assert [r.outcome for r in server.records_for("one")] == ["ok"]
    assert server.batches[created.id].custom_ids == ["a", "b"]
    assert server.batches[created.id].metadata == {"run": "r1"}
    assert client.batches.retrieve(created.id).output_file_id == done.output_file_id  # processed once
    assert server.total_requests == 2

    deleted = client.files.delete(uploaded.id)
    assert isinstance(deleted, FileDeleted) and (deleted.id, deleted.deleted) == (uploaded.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.content(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(uploaded.id)


def test_scripted_http_faults_land_in_the_error_file_and_count_as_attempts(
    server: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    lines = [
        _request("ok", "[id:ok] fine"),
        _request("flaky", "[id:flaky] [fail:500:1] once"),
        _request("bad", "[id:bad] [fail:400] always"),
        _request("dropped", "[id:dropped] [drop:1] gone"),
    ]
    first = client.batches.retrieve(_submit(client, lines).id)
    assert first.status == "completed" and _counts(first) == (4, 1, 3)
    assert list(_lines(client, first.output_file_id)) == ["ok"]
    errors = _lines(client, first.error_file_id)
    assert list(errors) == ["flaky", "bad", "dropped"]
    assert errors["flaky"]["error"] is None
    assert errors["flaky"]["response"]["status_code"] == 500
    assert errors["flaky"]["response"]["body"] == {
        "error": {"message": "scripted 500 for flaky", "type": "server_error", "param": None, "code": None}
    }
    assert errors["bad"]["response"]["status_code"] == 400
    assert errors["bad"]["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert errors["dropped"]["response"]["status_code"] == 500
    assert [r.outcome for r in server.records_for("flaky")] == ["500"]

    # Resubmitted, the attempt counts carry on: the 500 was for the first attempt only.
    second = client.batches.retrieve(_submit(client, lines[1:3]).id)
    assert _counts(second) == (2, 1, 1)
    assert list(_lines(client, second.output_file_id)) == ["flaky"]
    assert list(_lines(client, second.error_file_id)) == ["bad"]
    assert (server.requests_for("flaky"), server.requests_for("bad"), server.requests_for("ok")) == (2, 2, 1)
    assert (server.batch_requests_for("flaky"), server.batch_requests_for("ok")) == (2, 1)
    assert server.total_requests == 6


def test_manual_mode_expiry_answers_the_first_requests_and_expires_the_rest(
    server: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    server.batch_mode = "manual"
    batch = _submit(client, [_request(f"c{i}", f"[id:i{i}] request {i}") for i in range(4)])
    running = client.batches.retrieve(batch.id)
    assert running.status == "in_progress" and running.in_progress_at is not None and _counts(running) == (4, 0, 0)
    assert client.batches.retrieve(batch.id).status == "in_progress"
    assert server.total_requests == 0

    server.expire_batch(batch.id, answered=2)
    expired = client.batches.retrieve(batch.id)
    assert expired.status == "expired" and expired.expired_at is not None and expired.completed_at is None
    assert _counts(expired) == (4, 2, 2)
    assert list(_lines(client, expired.output_file_id)) == ["c0", "c1"]
    errors = _lines(client, expired.error_file_id)
    assert list(errors) == ["c2", "c3"]
    assert errors["c2"]["id"].startswith("batch_req_")
    assert {key: value for key, value in errors["c2"].items() if key != "id"} == {
        "custom_id": "c2",
        "response": None,
        "error": {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        },
    }
    assert [server.requests_for(f"i{i}") for i in range(4)] == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="expired"):
        server.finish_batch(batch.id)

    other = _submit(client, [_request("x", "[id:x] later")])
    server.finish_batch(other.id)  # validates it first, then answers everything
    assert _counts(client.batches.retrieve(other.id)) == (1, 1, 0)


def test_cancel_keeps_the_answered_requests_and_cancels_the_others(
    server: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    server.batch_mode = "manual"
    batch = _submit(client, [_request(f"c{i}", f"[id:i{i}] request {i}") for i in range(3)])
    assert client.batches.retrieve(batch.id).status == "in_progress"
    server.answer_requests(batch.id, 1)
    assert _counts(client.batches.retrieve(batch.id)) == (3, 1, 0)

    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    assert cancelling.cancelled_at is None

    cancelled = client.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert _counts(cancelled) == (3, 1, 2)
    assert list(_lines(client, cancelled.output_file_id)) == ["c0"]
    errors = _lines(client, cancelled.error_file_id)
    assert list(errors) == ["c1", "c2"]
    assert errors["c1"]["response"] is None and errors["c1"]["error"]["code"] == "batch_cancelled"
    assert [server.requests_for(f"i{i}") for i in range(3)] == [1, 0, 0]
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_a_malformed_input_file_fails_validation_with_its_line_numbers(
    server: FakeOpenAIServer, client: openai.OpenAI
) -> None:
    lines = [
        _request("a", "fine"),
        "{not json",
        {**_request("b", "x"), "url": "/v1/embeddings"},
        _request("a", "duplicate"),
        {"method": "POST", "url": ENDPOINT, "body": {}},
    ]
    failed = client.batches.retrieve(_submit(client, lines).id)
    assert failed.status == "failed" and failed.failed_at is not None
    assert failed.output_file_id is None and failed.error_file_id is None and _counts(failed) == (5, 0, 0)
    assert failed.errors is not None and failed.errors.object == "list"
    assert [(e.code, e.line, e.param) for e in failed.errors.data or []] == [
        ("invalid_request", 2, None),
        ("invalid_request", 3, "url"),
        ("invalid_request", 4, "custom_id"),
        ("invalid_request", 5, "custom_id"),
    ]
    assert server.total_requests == 0


def test_a_scripted_validation_failure_fails_one_batch(server: FakeOpenAIServer, client: openai.OpenAI) -> None:
    server.validation_failures = ["token_limit_exceeded"]
    lines = [_request("a", "[id:a] fine")]
    failed = client.batches.retrieve(_submit(client, lines).id)
    assert failed.status == "failed" and failed.errors is not None
    assert [e.model_dump() for e in failed.errors.data or []] == [
        {"code": "token_limit_exceeded", "message": "scripted validation failure", "param": None, "line": None}
    ]
    assert server.validation_failures == [] and server.requests_for("a") == 0
    assert client.batches.retrieve(_submit(client, lines).id).status == "completed"
    assert server.batch_requests_for("a") == 2 and server.requests_for("a") == 1


def test_scripted_upload_failures_raise_and_store_nothing(server: FakeOpenAIServer, client: openai.OpenAI) -> None:
    server.upload_failures = [400, 503]
    data = _jsonl([_request("a", "x")])
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert bad.value.status_code == 400 and "scripted 400 on upload" in bad.value.message
    assert bad.value.body == {"message": "scripted 400 on upload", "type": "invalid_request_error"} | {
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.InternalServerError):
        client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert (server.uploads, server.files) == (0, {})
    assert client.files.create(file=("requests.jsonl", data), purpose="batch").bytes == len(data)
    assert server.uploads == 1 and server.upload_failures == []


def test_a_wrong_purpose_or_batch_parameters_are_rejected(server: FakeOpenAIServer, client: openai.OpenAI) -> None:
    data = _jsonl([_request("a", "x")])
    with pytest.raises(openai.BadRequestError) as wrong_purpose:
        client.files.create(file=("requests.jsonl", data), purpose="fine-tune")
    assert isinstance(wrong_purpose.value.body, dict) and wrong_purpose.value.body["param"] == "purpose"
    assert (server.uploads, server.files) == (0, {})

    file_id = client.files.create(file=("requests.jsonl", data), purpose="batch").id
    for bad_args, param in [
        ({"input_file_id": "file-unknown", "endpoint": ENDPOINT, "completion_window": "24h"}, "input_file_id"),
        ({"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}, "endpoint"),
        ({"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "48h"}, "completion_window"),
    ]:
        with pytest.raises(openai.BadRequestError) as rejected:
            client.batches.create(**bad_args)  # type: ignore[arg-type]
        assert isinstance(rejected.value.body, dict) and rejected.value.body["param"] == param
    assert server.batches_created == 0 and server.batches == {}
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_unknown")


def test_list_pages_newest_first_with_after(server: FakeOpenAIServer, client: openai.OpenAI) -> None:
    file_id = client.files.create(file=("requests.jsonl", _jsonl([_request("a", "x")])), purpose="batch").id
    created = [
        client.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h").id for _ in range(25)
    ]
    newest_first = created[::-1]

    first = client.batches.with_raw_response.list(limit=10).http_response.json()
    assert [b["id"] for b in first["data"]] == newest_first[:10]
    assert (first["object"], first["first_id"], first["last_id"], first["has_more"]) == (
        "list",
        newest_first[0],
        newest_first[9],
        True,
    )
    second = client.batches.list(limit=10, after=first["last_id"])
    assert [b.id for b in second.data] == newest_first[10:20] and second.has_more is True
    third = client.batches.list(limit=10, after=second.data[-1].id)
    assert [b.id for b in third.data] == newest_first[20:] and third.has_more is False
    assert {b.status for b in third.data} == {"completed"}  # a list advances the batches, as a GET does

    assert [b.id for b in client.batches.list(limit=7)] == newest_first  # auto-pagination
    assert len(client.batches.list().data) == 20  # the default limit
    assert client.batches.list(after=created[0]).data == []
    assert server.batch_requests_for("a") == 25 and server.total_requests == 25


def test_create_delay_records_the_batch_before_answering(server: FakeOpenAIServer, client: openai.OpenAI) -> None:
    file_id = client.files.create(file=("requests.jsonl", _jsonl([_request("a", "[id:a] x")])), purpose="batch").id
    server.create_delay_s = 0.5
    with pytest.raises(openai.APITimeoutError):
        client.batches.create(
            input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h", metadata={"k": "v"}, timeout=0.1
        )
    server.create_delay_s = 0.0
    (orphan,) = client.batches.list().data  # the client never learnt its id, but the server has it
    assert orphan.metadata == {"k": "v"} and orphan.status == "completed" and server.batches_created == 1


def test_a_chunked_multipart_upload_is_read_byte_for_byte(server: FakeOpenAIServer) -> None:
    content = b"line one\r\nline two\n\r\n"
    body = (
        b'--bnd\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--bnd\r\nContent-Disposition: form-data; name="file"; filename="my file.jsonl"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n--bnd--\r\n"
    )
    address = urlsplit(server.base_url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port)
    headers = {"Content-Type": "multipart/form-data; boundary=bnd"}
    connection.request("POST", "/v1/files", body=iter([body[:40], body[40:]]), headers=headers, encode_chunked=True)
    answer = json.loads(connection.getresponse().read())
    connection.close()
    assert (answer["filename"], answer["bytes"]) == ("my file.jsonl", len(content))
    assert server.files[answer["id"]].data == content
