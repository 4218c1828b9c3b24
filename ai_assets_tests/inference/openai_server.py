"""A real OpenAI-compatible chat-completions server on 127.0.0.1, with scripted faults.

Tests and `bench/inference.py` point the real `openai.AsyncOpenAI` client at it, so everything
between the engine and the socket (httpx2, connection pooling, the SDK's parsing and exception
mapping) is exercised for real.

Behaviour is steered from the prompt itself, by directives in the LAST user message:

    [id:abc]         the item id the server counts attempts under (default: the whole message)
    [fail:429:2]     the first 2 attempts get HTTP 429 (with `Retry-After`, default "1")
    [fail:500:1]     the first attempt gets HTTP 500
    [fail:400]       every attempt gets HTTP 400 (no count = always)
    [drop:1]         the first attempt: the socket is closed without any response
    [garbage:1]      the first attempt: 200 with a truncated, invalid JSON body
    [sleep:0.8]      this item's latency, overriding the server-wide one

A 401's error message echoes the request's Authorization header (a careless gateway), so tests can
check that credentials are redacted before they reach an output file. With `[echo-key:bare]` it echoes
the key without `Bearer ` and without its `sk-`/`sk-proj-` prefix; with `[echo-key:part]`, 16
characters from the middle of that (as a "key id").

Fault directives apply in order: `[fail:429:1][drop:1]` is 429, then drop, then success.
Successful answers echo the message (`echo: ...`) and report `usage` (word counts).

The server records, per item id, every request's arrival/finish time (time.monotonic) and outcome,
and the maximum number of requests it was handling at once.

Files and Batch APIs (enough of them for the real `openai.OpenAI` client's `files` and `batches`):

    POST   /v1/files                  multipart `purpose` ("batch", else 400) + `file` -> a FileObject
    GET    /v1/files/{id}             the FileObject;  GET /v1/files/{id}/content: the raw bytes
    DELETE /v1/files/{id}             {"id", "object": "file", "deleted": true}
    POST   /v1/batches                {input_file_id, endpoint, completion_window, metadata} -> a Batch,
                                      "validating"; 400 for an unknown file, an endpoint other than
                                      "/v1/chat/completions" or a window other than "24h"
    GET    /v1/batches/{id}           the Batch, after advancing it (below)
    GET    /v1/batches?limit&after    a cursor page, newest first (all batches are advanced first)
    POST   /v1/batches/{id}/cancel    "cancelling" (409 once the batch is finished); the next GET shows
                                      it "cancelled": answered requests stay in the output file, every
                                      other one gets an error-file line with code "batch_cancelled"

A batch is validated when it is first advanced (a GET of it, a list, or one of the manual-mode
methods): every input line must be a JSON object with a unique string `custom_id`, `method` "POST",
`url` "/v1/chat/completions" and an object `body`; otherwise it is "failed" with one `errors` entry
(code "invalid_request", with the 1-based `line`) per bad line. Then, per `server.batch_mode`:

    "instant" (default)   every request is processed at once: "completed"
    "manual"              "in_progress" until the test calls `finish_batch(id)` (-> "completed"),
                          `expire_batch(id, answered=k)` (the first k requests answered, the rest
                          "batch_expired" error lines -> "expired") or the client cancels;
                          `answer_requests(id, k)` answers the next k requests meanwhile

Each request goes through the same scripted faults and attempt counting as a real
/v1/chat/completions call (`requests_for`, `records_for` and `total_requests` count it), without any
latency or `[sleep:...]`. A success is an output-file line whose `response.body` is the completion; a
scripted HTTP status is an error-file line with that `response.status_code` and an OpenAI error body
(`drop` and `garbage` count as 500). Output and error files (purpose "batch_output") are stored like
uploads; `output_file_id` / `error_file_id` stay None where that file would be empty.

Fault knobs (plain attributes, set them between requests):

    upload_failures: list[int]        each upload pops a status and is answered with that error
                                      (0: this upload goes through)
    validation_failures: list[str]    each batch validated pops a code and fails with it
                                      (e.g. "token_limit_exceeded")
    create_delay_s: float             POST /v1/batches records the batch, then waits this long before
                                      answering (a client killed meanwhile never learns the id)

Observations: `files` (id -> StoredFile), `batches` (id -> FakeBatch), `uploads`, `batches_created`
and `batch_requests_for(custom_id)` (in how many created batches a custom_id was).
"""

from __future__ import annotations

import email
import json
import random
import re
import socket
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

_ID = re.compile(r"\[id:([^\]]+)\]")
_SLEEP = re.compile(r"\[sleep:([0-9.]+)\]")
_ECHO_KEY = re.compile(r"\[echo-key:(bare|part)\]")
_FAULT = re.compile(r"\[(fail:(\d{3})|drop|garbage)(?::(\d+))?\]")


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it."""

    item_id: str
    attempt: int  # 1-based, per item id
    arrived: float  # time.monotonic() when the request body had been read
    finished: float  # time.monotonic() when the response was written (or the socket dropped)
    outcome: str  # "ok", "drop", "garbage", or the HTTP status as text ("429")


@dataclass
class StoredFile:
    """A file as the Files API keeps it (uploads, and the batches' output and error files)."""

    data: bytes
    filename: str
    purpose: str  # "batch" for uploads, "batch_output" for what batches write
    created_at: int

    def file_object(self, file_id: str) -> dict[str, Any]:
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class FakeBatch:
    """One batch as the server keeps it; `obj` is the Batch object served, updated as it advances."""

    obj: dict[str, Any]
    custom_ids: list[str]  # the input's custom_ids in file order (of the lines that have one)
    metadata: dict[str, str] | None
    requests: list[dict[str, Any]] = field(default_factory=list)  # the input lines, once validated
    answered: int = 0  # how many requests (in file order) have been processed
    output_lines: list[dict[str, Any]] = field(default_factory=list)
    error_lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.obj["id"])

    @property
    def status(self) -> str:
        return str(self.obj["status"])


_CHAT_ENDPOINT = "/v1/chat/completions"
_FILE_ROUTE = re.compile(r"^/v1/files/([^/]+)$")
_FILE_CONTENT_ROUTE = re.compile(r"^/v1/files/([^/]+)/content$")
_BATCH_ROUTE = re.compile(r"^/v1/batches/([^/]+)$")
_BATCH_CANCEL_ROUTE = re.compile(r"^/v1/batches/([^/]+)/cancel$")
_UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")
_EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
_CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."


def _hex_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def _error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    error_type = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _jsonl_lines(data: bytes) -> list[str] | None:
    """The lines of a JSONL file (a final newline ends the last line); None if it is not UTF-8.

    Split on newline characters only: JSON written with ensure_ascii=False may hold U+2028 in strings.
    """
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return None
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _input_problem(line: str, seen: set[str]) -> tuple[str, str | None] | None:
    """What is wrong with one input line of a batch, as (message, param); None if nothing."""
    try:
        request = json.loads(line)
    except ValueError:
        return "This line is not valid JSON.", None
    if not isinstance(request, dict):
        return "Each line must be a JSON object.", None
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str):
        return "Each request must have a string custom_id.", "custom_id"
    if custom_id in seen:
        return f"The custom_id {custom_id!r} is not unique in the file.", "custom_id"
    seen.add(custom_id)
    if request.get("method") != "POST":
        return "The method must be POST.", "method"
    if request.get("url") != _CHAT_ENDPOINT:
        return f"The url must be {_CHAT_ENDPOINT}, the batch's endpoint.", "url"
    if not isinstance(request.get("body"), dict):
        return "The body must be a JSON object.", "body"
    return None


def _multipart_fields(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename or None, value)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.lower().startswith("multipart/form-data") or match is None:
        return {}
    delimiter = b"\r\n--" + match.group(1).encode("latin-1")
    fields: dict[str, tuple[str | None, bytes]] = {}
    # Each part follows CRLF--boundary (the first one has no CRLF before it); the last delimiter ends "--".
    for part in (b"\r\n" + body).split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, separator, value = part.partition(b"\r\n\r\n")
        if not separator:
            continue
        headers = email.message_from_bytes(head.lstrip(b" \t").removeprefix(b"\r\n") + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields[name] = (headers.get_filename(), value)
    return fields


def _fault_for(text: str, attempt: int) -> str | None:
    """The fault scripted for `attempt` of a message, e.g. "429", "drop", "garbage"; None = success."""
    remaining = attempt
    for match in _FAULT.finditer(text):
        kind = match.group(2) or match.group(1)
        count = match.group(3)
        if count is None or remaining <= int(count):
            return kind
        remaining -= int(count)
    return None


def _echoed_key(text: str, authorization: str) -> str:
    """The credential as a 401 echoes it: the whole header, or per `[echo-key:bare|part]` its secret part."""
    mode = _ECHO_KEY.search(text)
    if mode is None:
        return authorization
    bare = re.sub(r"^Bearer\s+(sk-(?:proj-)?)?", "", authorization)
    return bare if mode.group(1) == "bare" else f"key id ...{bare[4:20]}..."


def _last_user_text(payload: dict[str, Any]) -> str:
    for message in reversed(payload.get("messages") or []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
            return str(content or "")
    return ""


class FakeOpenAIServer:
    """Context manager running the server in a daemon thread; see the module docstring."""

    def __init__(
        self,
        *,
        latency_s: float | tuple[float, float] = 0.0,
        seed: int = 0,
        retry_after: str | None = "1",
        batch_mode: str = "instant",
    ) -> None:
        self.latency_s = latency_s
        self.retry_after = retry_after  # the Retry-After header value sent with 429s (None: omit)
        self._seed = seed
        # Reentrant: batch processing holds it while it counts each request with _begin/_end.
        self._lock = threading.RLock()
        # Files and batches (not cleared by reset_stats: a scenario's state outlives a stats reset).
        self.batch_mode = batch_mode  # "instant" or "manual"; see the module docstring
        self.upload_failures: list[int] = []
        self.validation_failures: list[str] = []
        self.create_delay_s = 0.0
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, FakeBatch] = {}
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset_stats()

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # --- observations ---------------------------------------------------------------------------

    def reset_stats(self) -> None:
        with self._lock:
            self.records: list[RequestRecord] = []
            self.attempts: dict[str, int] = defaultdict(int)
            self.in_flight = 0
            self.max_in_flight = 0
            self.connections = 0  # TCP connections accepted (a kept-alive one serves many requests)
            self.uploads = 0  # files stored by POST /v1/files (scripted failures not counted)
            self.batches_created = 0
            self._batch_requests: dict[str, int] = defaultdict(int)

    def requests_for(self, item_id: str) -> int:
        with self._lock:
            return self.attempts.get(item_id, 0)

    def batch_requests_for(self, custom_id: str) -> int:
        """In how many created batches an input line had this custom_id (since the last reset_stats)."""
        with self._lock:
            return self._batch_requests.get(custom_id, 0)

    def records_for(self, item_id: str) -> list[RequestRecord]:
        with self._lock:
            return sorted((r for r in self.records if r.item_id == item_id), key=lambda r: r.attempt)

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self.attempts.values())

    def mean_service_s(self) -> float:
        """Mean arrival-to-response time of successful requests: the latency the client cannot beat."""
        with self._lock:
            times = [r.finished - r.arrived for r in self.records if r.outcome == "ok"]
        return sum(times) / len(times) if times else 0.0

    def stats(self) -> dict[str, Any]:
        """A JSON-able summary, also served at GET /_stats."""
        with self._lock:
            outcomes: dict[str, int] = defaultdict(int)
            for record in self.records:
                outcomes[record.outcome] += 1
            total = sum(self.attempts.values())
            max_in_flight = self.max_in_flight
            connections = self.connections
            uploads, batches_created = self.uploads, self.batches_created
        return {
            "total_requests": total,
            "max_in_flight": max_in_flight,
            "connections": connections,
            "mean_service_s": self.mean_service_s(),
            "outcomes": dict(outcomes),
            "uploads": uploads,
            "batches_created": batches_created,
        }

    # --- batches: what a test does to a batch in "manual" mode --------------------------------------

    def answer_requests(self, batch_id: str, k: int) -> None:
        """Process the next `k` unanswered requests of an in-progress batch; it stays in progress."""
        with self._lock:
            batch = self._in_progress(batch_id)
            self._answer_up_to(batch, batch.answered + k)

    def finish_batch(self, batch_id: str) -> None:
        """Process every request not yet answered: the batch is "completed"."""
        with self._lock:
            batch = self._in_progress(batch_id)
            self._answer_up_to(batch, len(batch.requests))
            self._finalize(batch, "completed")

    def expire_batch(self, batch_id: str, answered: int = 0) -> None:
        """The completion window ends: the first `answered` requests (in file order) are answered, the
        rest get "batch_expired" error lines; the batch is "expired"."""
        with self._lock:
            batch = self._in_progress(batch_id)
            self._answer_up_to(batch, answered)
            self._fail_unanswered(batch, "batch_expired", _EXPIRED_MESSAGE)
            self._finalize(batch, "expired")

    # --- batches: the state machine (all with self._lock held) ------------------------------------

    def _in_progress(self, batch_id: str) -> FakeBatch:
        batch = self.batches[batch_id]
        if batch.status == "validating":
            self._validate(batch)
        if batch.status != "in_progress":
            raise ValueError(f"batch {batch_id} is {batch.status}, not in_progress")
        return batch

    def _advance(self, batch: FakeBatch) -> None:
        """What happens to a batch by the time a client looks at it."""
        if batch.status == "validating":
            self._validate(batch)
        if batch.status == "in_progress" and self.batch_mode == "instant":
            self._answer_up_to(batch, len(batch.requests))
            self._finalize(batch, "completed")
        elif batch.status == "cancelling":
            self._fail_unanswered(batch, "batch_cancelled", _CANCELLED_MESSAGE)
            self._finalize(batch, "cancelled")

    def _validate(self, batch: FakeBatch) -> None:
        obj = batch.obj
        stored = self.files.get(obj["input_file_id"])
        lines = _jsonl_lines(stored.data) if stored is not None else None
        errors: list[dict[str, Any]] = []
        if self.validation_failures:
            code = self.validation_failures.pop(0)
            errors.append({"code": code, "message": "scripted validation failure", "param": None, "line": None})
        elif stored is None:
            message = f"The input file {obj['input_file_id']} no longer exists."
            errors.append({"code": "invalid_request", "message": message, "param": "input_file_id", "line": None})
        elif lines is None or not lines:
            message = "The input file is empty." if lines is not None else "The input file is not UTF-8."
            errors.append({"code": "invalid_request", "message": message, "param": None, "line": None})
        else:
            seen: set[str] = set()
            for number, line in enumerate(lines, start=1):
                problem = _input_problem(line, seen)
                if problem is not None:
                    message, param = problem
                    errors.append({"code": "invalid_request", "message": message, "param": param, "line": number})
        now = int(time.time())
        if errors:
            obj.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
            obj["request_counts"] = {"total": len(lines or []), "completed": 0, "failed": 0}
            return
        assert lines is not None
        batch.requests = [json.loads(line) for line in lines]
        model = batch.requests[0]["body"].get("model")
        obj.update(status="in_progress", in_progress_at=now, model=model if isinstance(model, str) else None)
        obj["request_counts"] = {"total": len(batch.requests), "completed": 0, "failed": 0}

    def _answer_up_to(self, batch: FakeBatch, k: int) -> None:
        """Process requests in file order until the first `k` have been answered."""
        counts = batch.obj["request_counts"]
        while batch.answered < min(k, len(batch.requests)):
            line, usage = self._process(batch.requests[batch.answered])
            batch.answered += 1
            if usage is not None:
                batch.output_lines.append(line)
                counts["completed"] += 1
                self._add_usage(batch, usage)
            else:
                batch.error_lines.append(line)
                counts["failed"] += 1

    def _process(self, request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int] | None]:
        """One batch request, as POST /v1/chat/completions would answer it: (its output or error line,
        the completion's usage, None for a failure)."""
        body = request["body"]
        try:
            text = _last_user_text(body)
        except (AttributeError, TypeError):  # messages that are not a list of objects
            text = None
        id_match = _ID.search(text) if text is not None else None
        item_id = id_match.group(1) if id_match else text if text is not None else request["custom_id"]
        arrived = time.monotonic()
        attempt = self._begin(item_id)
        status = 200
        response_body: dict[str, Any]
        try:
            fault = _fault_for(text, attempt) if text is not None else "400"
            if fault is None:
                assert text is not None
                response_body = _completion(body, text, item_id, attempt)
            else:
                status = 500 if fault in ("drop", "garbage") else int(fault)
                message = f"scripted {status} for {item_id}" if text is not None else "messages must be objects"
                response_body = _error_body(status, message)
        finally:
            self._end(
                RequestRecord(item_id, attempt, arrived, time.monotonic(), "ok" if status == 200 else str(status))
            )
        line = {
            "id": _hex_id("batch_req_"),
            "custom_id": request["custom_id"],
            "response": {"status_code": status, "request_id": _hex_id("req_"), "body": response_body},
            "error": None,
        }
        return line, response_body["usage"] if status == 200 else None

    @staticmethod
    def _add_usage(batch: FakeBatch, usage: dict[str, int]) -> None:
        total = batch.obj.get("usage") or {
            "input_tokens": 0,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 0,
        }
        total["input_tokens"] += usage["prompt_tokens"]
        total["output_tokens"] += usage["completion_tokens"]
        total["total_tokens"] += usage["total_tokens"]
        batch.obj["usage"] = total

    def _fail_unanswered(self, batch: FakeBatch, code: str, message: str) -> None:
        """An error line with `code` for every request not answered (from the input when never validated)."""
        custom_ids = [r["custom_id"] for r in batch.requests] if batch.requests else batch.custom_ids
        for custom_id in custom_ids[batch.answered :]:
            line = {"id": _hex_id("batch_req_"), "custom_id": custom_id, "response": None}
            batch.error_lines.append({**line, "error": {"code": code, "message": message}})
        counts = batch.obj["request_counts"]
        counts["total"] = len(custom_ids)
        counts["failed"] = len(custom_ids) - counts["completed"]
        batch.answered = len(custom_ids)

    def _finalize(self, batch: FakeBatch, status: str) -> None:
        """Write the output and error files (none where empty) and end the batch in `status`."""
        obj = batch.obj
        for lines, key, suffix in (
            (batch.output_lines, "output_file_id", "output"),
            (batch.error_lines, "error_file_id", "error"),
        ):
            if lines:
                data = "".join(json.dumps(line) + "\n" for line in lines).encode()
                obj[key] = self._store_file(data, f"{batch.id}_{suffix}.jsonl", "batch_output")
        now = int(time.time())
        if status == "completed":
            obj["finalizing_at"] = now
        obj.update({"status": status, f"{status}_at": now})

    def _store_file(self, data: bytes, filename: str, purpose: str) -> str:
        file_id = _hex_id("file-")
        self.files[file_id] = StoredFile(data, filename, purpose, int(time.time()))
        return file_id

    # --- batches: the routes' logic (called from handler threads) ---------------------------------

    def _upload(self, fields: dict[str, tuple[str | None, bytes]]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            status = self.upload_failures.pop(0) if self.upload_failures else 0
            if status:
                error = {"message": f"scripted {status} on upload", "type": "invalid_request_error"}
                return status, {"error": {**error, "param": None, "code": None}}
            purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
            if purpose != "batch":
                return 400, _error_body(400, f"Invalid purpose {purpose!r}: this server stores 'batch'.", "purpose")
            if "file" not in fields:
                return 400, _error_body(400, "Missing the file.", "file")
            filename, data = fields["file"]
            file_id = self._store_file(data, filename or "file", purpose)
            self.uploads += 1
            return 200, self.files[file_id].file_object(file_id)

    def _create_batch(self, payload: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(payload, dict):
            return 400, _error_body(400, "The body must be a JSON object.")
        input_file_id = payload.get("input_file_id")
        metadata = payload.get("metadata")
        with self._lock:
            stored = self.files.get(input_file_id) if isinstance(input_file_id, str) else None
            if stored is None or stored.purpose != "batch":
                return 400, _error_body(400, f"Unknown input file {input_file_id!r}.", "input_file_id")
            if payload.get("endpoint") != _CHAT_ENDPOINT:
                return 400, _error_body(400, f"Unsupported endpoint {payload.get('endpoint')!r}.", "endpoint")
            if payload.get("completion_window") != "24h":
                window = payload.get("completion_window")
                return 400, _error_body(400, f"Unsupported completion_window {window!r}.", "completion_window")
            if metadata is not None and not (
                isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
            ):
                return 400, _error_body(400, "metadata must map strings to strings.", "metadata")
            custom_ids = []
            for line in _jsonl_lines(stored.data) or []:
                try:
                    request = json.loads(line)
                except ValueError:
                    continue
                if isinstance(request, dict) and isinstance(request.get("custom_id"), str):
                    custom_ids.append(request["custom_id"])
            now = int(time.time())
            obj: dict[str, Any] = {
                "id": _hex_id("batch_"),
                "object": "batch",
                "endpoint": _CHAT_ENDPOINT,
                "model": None,
                "errors": None,
                "input_file_id": input_file_id,
                "completion_window": "24h",
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": now,
                "in_progress_at": None,
                "expires_at": now + 86400,
                "finalizing_at": None,
                "completed_at": None,
                "failed_at": None,
                "expired_at": None,
                "cancelling_at": None,
                "cancelled_at": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "usage": None,
                "metadata": dict(metadata) if metadata is not None else None,
            }
            batch = FakeBatch(obj, custom_ids, obj["metadata"])
            self.batches[batch.id] = batch
            self.batches_created += 1
            for custom_id in custom_ids:
                self._batch_requests[custom_id] += 1
            return 200, json.loads(json.dumps(obj))

    def _get_batch(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, _error_body(404, f"No batch found with id '{batch_id}'.")
            self._advance(batch)
            return 200, json.loads(json.dumps(batch.obj))

    def _list_batches(self, query: str) -> tuple[int, dict[str, Any]]:
        params = parse_qs(query)
        try:
            limit = int(params.get("limit", ["20"])[0])
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return 400, _error_body(400, "limit must be an integer from 1 to 100.", "limit")
        with self._lock:
            newest_first = list(reversed(self.batches.values()))
            start = 0
            if "after" in params:
                ids = [batch.id for batch in newest_first]
                if params["after"][0] not in ids:
                    return 400, _error_body(400, f"Unknown batch {params['after'][0]!r} for after.", "after")
                start = ids.index(params["after"][0]) + 1
            for batch in newest_first:
                self._advance(batch)
            page = [json.loads(json.dumps(batch.obj)) for batch in newest_first[start : start + limit]]
            has_more = start + limit < len(newest_first)
        return 200, {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": has_more,
        }

    def _cancel_batch(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, _error_body(404, f"No batch found with id '{batch_id}'.")
            if batch.status not in _UNFINISHED:
                return 409, _error_body(409, f"Cannot cancel a batch with status '{batch.status}'.")
            if batch.status != "cancelling":
                batch.obj.update(status="cancelling", cancelling_at=int(time.time()))
            return 200, json.loads(json.dumps(batch.obj))

    def _file(self, file_id: str) -> StoredFile | None:
        with self._lock:
            return self.files.get(file_id)

    def _delete_file(self, file_id: str) -> bool:
        with self._lock:
            return self.files.pop(file_id, None) is not None

    # --- request handling (called from handler threads) -----------------------------------------

    def _connected(self) -> None:
        with self._lock:
            self.connections += 1

    def _begin(self, item_id: str) -> int:
        with self._lock:
            self.attempts[item_id] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.attempts[item_id]

    def _end(self, record: RequestRecord) -> None:
        with self._lock:
            self.in_flight -= 1
            self.records.append(record)

    def _latency(self, text: str, item_id: str, attempt: int) -> float:
        override = _SLEEP.search(text)
        if override:
            return float(override.group(1))
        if isinstance(self.latency_s, tuple):
            # Drawn from (seed, item, attempt), not from arrival order: two clients that send the
            # same items in different orders (the benchmark's two patterns) see the same latencies.
            return random.Random(f"{self._seed}:{item_id}:{attempt}").uniform(*self.latency_s)
        return float(self.latency_s)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # The stdlib default backlog is 5: a burst of 32 new connections would overflow it and the
    # kernel's SYN retry would add ~1 s to some requests — an artefact, not a property of the client.
    request_queue_size = 1024
    fake: FakeOpenAIServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real APIs; the client reuses connections
    timeout = 60  # an idle keep-alive connection's thread exits eventually
    # http.server sends the headers and the body in two writes; with Nagle on, the body waits for
    # the client's delayed ACK of the headers (~40 ms on Linux) — a test-server artefact that
    # would dwarf everything the benchmark measures.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass

    def setup(self) -> None:
        super().setup()
        self.server.fake._connected()

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        # Observations for a client in another process (the benchmark runs the server in its own
        # process so that its threads do not compete with the client for one GIL).
        if self.path == "/_stats":
            self._send_json(200, self.server.fake.stats())
        elif self.path.split("?")[0].rstrip("/") == "/v1/models":  # as every OpenAI-compatible server
            model = {"id": "test-model", "object": "model", "created": 0, "owned_by": "test"}
            self._send_json(200, {"object": "list", "data": [model]})
        elif self._files_and_batches_get():
            pass
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    def do_DELETE(self) -> None:  # noqa: N802 - the stdlib's name
        self._read_body()
        fake = self.server.fake
        match = _FILE_ROUTE.match(urlsplit(self.path).path.rstrip("/"))
        if match is None:
            self._send_json(404, _error_body(404, f"no route {self.path}"))
        elif fake._delete_file(match.group(1)):
            self._send_json(200, {"id": match.group(1), "object": "file", "deleted": True})
        else:
            self._send_json(404, _error_body(404, f"No such File object: {match.group(1)}", "id"))

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self._read_body()
        if self.path == "/_reset":
            self.server.fake.reset_stats()
            self._send_json(200, {})
            return
        if self._files_and_batches_post(body):
            return
        if self.path.split("?")[0].rstrip("/") != "/v1/chat/completions":
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        try:
            payload = json.loads(body)
        except ValueError:
            self._send_json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        fake = self.server.fake
        text = _last_user_text(payload)
        id_match = _ID.search(text)
        item_id = id_match.group(1) if id_match else text
        arrived = time.monotonic()
        attempt = fake._begin(item_id)
        outcome = "ok"
        try:
            delay = fake._latency(text, item_id, attempt)
            if delay > 0:
                time.sleep(delay)
            fault = _fault_for(text, attempt)
            if fault == "drop":
                outcome = "drop"
                self.close_connection = True
                # Hang up without a byte of response: the client sees the connection die mid-request.
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            elif fault == "garbage":
                outcome = "garbage"
                self._send_raw(200, b'{"id": "chatcmpl-garbage", "object": "chat.completion", "choices": [{"ind')
            elif fault is not None:
                status = int(fault)
                outcome = fault
                headers = {"Retry-After": fake.retry_after} if status == 429 and fake.retry_after else {}
                error_type = (
                    "rate_limit_error"
                    if status == 429
                    else "server_error"
                    if status >= 500
                    else "invalid_request_error"
                )
                message = f"scripted {status} for {item_id}"
                if status == 401:
                    # Like a careless gateway: echo the credential, so tests can check it is redacted.
                    message = f"Incorrect API key provided: {_echoed_key(text, self.headers.get('Authorization', ''))}"
                self._send_json(status, {"error": {"message": message, "type": error_type, "code": None}}, headers)
            else:
                self._send_json(200, _completion(payload, text, item_id, attempt))
        finally:
            fake._end(RequestRecord(item_id, attempt, arrived, time.monotonic(), outcome))

    # --- Files and Batch APIs ---------------------------------------------------------------------

    def _read_body(self) -> bytes:
        """The request body, by Content-Length or chunked (httpx streams some multipart uploads)."""
        if "chunked" not in (self.headers.get("Transfer-Encoding") or "").lower():
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _files_and_batches_get(self) -> bool:
        """Answer a GET of the Files or Batch API; False when the path is none of theirs."""
        fake = self.server.fake
        url = urlsplit(self.path)
        path = url.path.rstrip("/")
        if match := _FILE_CONTENT_ROUTE.match(path):
            stored = fake._file(match.group(1))
            if stored is None:
                self._send_json(404, _error_body(404, f"No such File object: {match.group(1)}", "id"))
            else:
                self._send_raw(200, stored.data, content_type="application/octet-stream")
        elif match := _FILE_ROUTE.match(path):
            stored = fake._file(match.group(1))
            if stored is None:
                self._send_json(404, _error_body(404, f"No such File object: {match.group(1)}", "id"))
            else:
                self._send_json(200, stored.file_object(match.group(1)))
        elif match := _BATCH_ROUTE.match(path):
            self._send_json(*fake._get_batch(match.group(1)))
        elif path == "/v1/batches":
            self._send_json(*fake._list_batches(url.query))
        else:
            return False
        return True

    def _files_and_batches_post(self, body: bytes) -> bool:
        """Answer a POST to the Files or Batch API; False when the path is none of theirs."""
        fake = self.server.fake
        path = urlsplit(self.path).path.rstrip("/")
        if path == "/v1/files":
            self._send_json(*fake._upload(_multipart_fields(body, self.headers.get("Content-Type") or "")))
        elif path == "/v1/batches":
            try:
                payload = json.loads(body)
            except ValueError:
                self._send_json(400, _error_body(400, "body is not JSON"))
                return True
            status, answer = fake._create_batch(payload)
            if status == 200 and fake.create_delay_s > 0:
                time.sleep(fake.create_delay_s)  # recorded, not yet answered: a client may die meanwhile
            try:
                self._send_json(status, answer)
            except OSError:  # the client is gone
                self.close_connection = True
        elif match := _BATCH_CANCEL_ROUTE.match(path):
            self._send_json(*fake._cancel_batch(match.group(1)))
        else:
            return False
        return True

    def _send_json(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(obj).encode(), headers)

    def _send_raw(
        self,
        status: int,
        data: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _completion(payload: dict[str, Any], text: str, item_id: str, attempt: int) -> dict[str, Any]:
    output = f"echo: {text}"
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in payload.get("messages") or [])
    return {
        "id": f"chatcmpl-{item_id}-{attempt}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": payload.get("model", "unknown"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": output}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(output.split()),
            "total_tokens": prompt_tokens + len(output.split()),
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground: `python -m ai_assets_tests.inference.openai_server --latency 0.05 0.5`.

    Prints `BASE_URL <url>` once listening, then serves until killed or stdin closes.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="OpenAI-compatible test server with scripted faults")
    parser.add_argument("--latency", type=float, nargs="+", default=[0.0], help="seconds, or a min max range")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retry-after", default="1")
    args = parser.parse_args(argv)
    latency: float | tuple[float, float] = (
        args.latency[0] if len(args.latency) == 1 else (args.latency[0], args.latency[1])
    )
    with FakeOpenAIServer(latency_s=latency, seed=args.seed, retry_after=args.retry_after) as server:
        print(f"BASE_URL {server.base_url}", flush=True)
        sys.stdin.read()  # the parent closing our stdin (or exiting) ends the server


if __name__ == "__main__":
    main()
