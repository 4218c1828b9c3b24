"""A stand-in for `python -m llama_cpp.server` that dies on cue, for the supervision tests.

Run as `LLMResource(embedded_command=[python, this file, options...])`: it accepts the options the
resource appends (--model, --model_alias, --host, --port, --n_ctx, --n_threads), answers `GET /v1/models`
and `POST /v1/chat/completions` like an OpenAI-compatible server (the answer is `answer: <last user
message>`), and its own options script the death:

    --events FILE      append one JSON line per event: {"pid", "event", "content"}, where event is
                       "models", "received" (a completion request was read) or "answered" (its
                       response was written and the connection closed)
    --die-after N      on receiving completion number N + 1 (the resource's one-token readiness probe
                       counts), kill itself instead of answering; -1 = never
    --signal NAME      the signal it kills itself with (default ILL, as llama.cpp built for the wrong CPU)
    --once FILE        die only if FILE does not exist, and create it first: the restarted server lives

It serves one request at a time over HTTP/1.0 (one connection per request), so "received" events
are totally ordered, every "answered" response reached the client before the next request was read,
and requests still queued when it dies were never read: it received exactly N + 1 completions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any


def _options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--die-after", type=int, default=-1)
    parser.add_argument("--signal", default="ILL")
    parser.add_argument("--once", type=Path)
    # What the resource appends, as llama_cpp.server spells it.
    parser.add_argument("--model", required=True)
    parser.add_argument("--model_alias", required=True)
    parser.add_argument("--lora_path")  # a deployed fine-tune: accepted, not applied
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n_ctx", type=int)
    parser.add_argument("--n_threads", type=int)
    return parser.parse_args(argv)


def _last_user_text(payload: dict[str, Any]) -> str:
    for message in reversed(payload.get("messages") or []):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    options: argparse.Namespace
    completions = 0

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        sys.stderr.write(f"fake llama server: {format % args}\n")

    def _record(self, event: str, content: str = "") -> None:
        with self.options.events.open("a") as events:
            events.write(json.dumps({"pid": os.getpid(), "event": event, "content": content}) + "\n")

    def _send_json(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        if self.path.rstrip("/") != "/v1/models":
            self.send_error(404)
            return
        self._record("models")
        self._send_json(
            {"object": "list", "data": [{"id": self.options.model_alias, "object": "model", "owned_by": "me"}]}
        )

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        if self.path.rstrip("/") != "/v1/chat/completions":
            self.send_error(404)
            return
        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        content = _last_user_text(payload)
        self._record("received", content)
        type(self).completions += 1
        if self.options.die_after >= 0 and self.completions > self.options.die_after and self._may_die():
            self._die()
        answer = f"answer: {content}"
        self._send_json(
            {
                "id": f"chatcmpl-{self.completions}",
                "object": "chat.completion",
                "created": 0,
                "model": self.options.model_alias,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": len(content.split()),
                    "completion_tokens": len(answer.split()),
                    "total_tokens": 0,
                },
            }
        )
        self._answered = content

    def _may_die(self) -> bool:
        once = self.options.once
        if once is None:
            return True
        if once.exists():
            return False
        once.touch()
        return True

    def _die(self) -> None:
        number = signal.Signals[f"SIG{self.options.signal.upper()}"]
        print(
            f"fake llama server: completion {self.completions} received, killing itself with {number.name}",
            file=sys.stderr,
            flush=True,
        )
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file left behind
        os.kill(os.getpid(), number)

    def handle(self) -> None:
        self._answered: str | None = None
        super().handle()
        # HTTP/1.0: the response is complete and the connection closed once `handle` returns.
        if self._answered is not None:
            self._record("answered", self._answered)


def main(argv: list[str]) -> None:
    _Handler.options = _options(argv)
    server = HTTPServer((_Handler.options.host, _Handler.options.port), _Handler)
    print(
        f"fake llama server: pid {os.getpid()} serving {_Handler.options.model_alias} on port {server.server_port}",
        file=sys.stderr,
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
