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
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

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
    ) -> None:
        self.latency_s = latency_s
        self.retry_after = retry_after  # the Retry-After header value sent with 429s (None: omit)
        self._seed = seed
        self._lock = threading.Lock()
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

    def requests_for(self, item_id: str) -> int:
        with self._lock:
            return self.attempts.get(item_id, 0)

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
        return {
            "total_requests": total,
            "max_in_flight": max_in_flight,
            "connections": connections,
            "mean_service_s": self.mean_service_s(),
            "outcomes": dict(outcomes),
        }

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
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/_reset":
            self.server.fake.reset_stats()
            self._send_json(200, {})
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

    def _send_json(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send_raw(status, json.dumps(obj).encode(), headers)

    def _send_raw(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
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
