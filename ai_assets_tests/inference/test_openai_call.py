"""openai_call against real local HTTP servers: what goes on the wire, and the connection warm-up."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from ai_assets.lib.llm.engine import run_batch
from ai_assets.lib.llm.items import InferenceItem
from ai_assets.lib.llm.ledger import ResultLedger
from ai_assets.lib.llm.openai_call import make_openai_call, warm_up_connections
from ai_assets.lib.llm.retry import RetryPolicy

from .openai_server import FakeOpenAIServer

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "served-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


class _Recorder(BaseHTTPRequestHandler):
    """Records every request (method, path, headers, JSON body) and answers one fixed completion."""

    protocol_version = "HTTP/1.1"
    server: _RecordingServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.command, self.path, dict(self.headers), json.loads(body)))
        data = json.dumps(COMPLETION).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str, dict[str, str], Any]]


@pytest.fixture
def recorder() -> Iterator[_RecordingServer]:
    server = _RecordingServer(("127.0.0.1", 0), _Recorder)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


ITEMS = [
    InferenceItem(id="plain", messages=({"role": "user", "content": "hello"},), line=1),
    InferenceItem(
        id="everything",
        messages=(
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "name": "ann",
                "content": [
                    {"type": "text", "text": "Describe"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {"role": "assistant", "content": "A square."},
            {"role": "user", "content": 'Ünïcode ✓ and "quotes"'},
        ),
        line=2,
        model="other-model",
        max_tokens=7,
        temperature=0.0,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
    ),
]


def test_call_sends_exactly_what_chat_completions_create_sends(recorder: _RecordingServer) -> None:
    # The call skips create()'s TypedDict walk of the messages; the request must not change by a byte
    # of meaning: same method, path, headers (auth, organization, project, SDK headers) and body.
    async def go() -> list[Any]:
        base_url = f"http://127.0.0.1:{recorder.server_address[1]}/v1"
        async with openai.AsyncOpenAI(
            base_url=base_url, api_key="sk-test-key", organization="org-1", project="proj-1", max_retries=0
        ) as client:
            call = make_openai_call(client, "default-model")
            results = []
            for entry in ITEMS:
                await client.chat.completions.create(**entry.request_kwargs("default-model"))
                results.append(await call(entry))
            return results

    results = asyncio.run(go())
    assert len(recorder.seen) == 2 * len(ITEMS)
    for index in range(len(ITEMS)):
        by_sdk, by_call = recorder.seen[2 * index], recorder.seen[2 * index + 1]
        assert by_call == by_sdk
        assert by_call[0] == "POST" and by_call[1] == "/v1/chat/completions"
        assert by_call[2]["authorization"] == "Bearer sk-test-key"
        assert by_call[2]["openai-organization"] == "org-1" and by_call[2]["openai-project"] == "proj-1"
        assert by_call[3] == ITEMS[index].request_kwargs("default-model")
    assert results[0].output == "hi" and results[0].model == "served-model"
    assert (results[0].prompt_tokens, results[0].completion_tokens, results[0].finish_reason) == (3, 1, "stop")


def _client(base_url: str, pool: int, stagger_s: float = 0.0) -> openai.AsyncOpenAI:
    """As the resource builds it: a pool of `pool` connections, all kept alive.

    With `stagger_s`, the k-th warm-up request waits k * stagger_s before it takes a connection, as
    when an auth hook fetches a token or the requests are issued from a busy event loop.
    """
    sent = 0

    async def stagger(request: httpx2.Request) -> None:
        nonlocal sent
        if request.url.path.endswith("/models"):
            sent += 1
            await asyncio.sleep((sent - 1) * stagger_s)

    limits = httpx2.Limits(max_connections=pool, max_keepalive_connections=pool)
    http_client = openai.DefaultAsyncHttpxClient(limits=limits, event_hooks={"request": [stagger]} if stagger_s else {})
    return openai.AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0, timeout=10, http_client=http_client)


def test_warm_up_opens_n_connections_before_the_first_request_and_the_batch_reuses_them(tmp_path: Path) -> None:
    # Staggered, the zero-latency server answers each warm-up request before the next one is sent:
    # without holding every connection until all have answered, the pool would reuse the first.
    with FakeOpenAIServer(latency_s=0.0) as server:

        async def go() -> tuple[int, int, int]:
            async with _client(server.base_url, pool=8, stagger_s=0.03) as client:
                held = await warm_up_connections(client, 8)
                connections_after_warm_up = server.stats()["connections"]
                assert server.total_requests == 0  # no completion was spent on it
                items = [
                    InferenceItem(id=f"i{n}", messages=({"role": "user", "content": f"[id:i{n}] hi"},), line=n + 1)
                    for n in range(40)
                ]
                with ResultLedger(tmp_path / "l.jsonl") as ledger:
                    stats = await run_batch(
                        items,
                        make_openai_call(client, "m"),
                        ledger=ledger,
                        max_in_flight=8,
                        retry=RetryPolicy(max_attempts=1),
                        rng=random.Random(0),
                    )
                assert stats.succeeded == 40
                return held, connections_after_warm_up, server.stats()["connections"]

        held, after_warm_up, after_batch = asyncio.run(go())
    assert held == 8
    assert after_warm_up == 8
    assert after_batch == 8  # the batch opened none of its own
    assert server.total_requests == 40


def test_warm_up_is_best_effort_and_never_raises() -> None:
    async def go() -> dict[str, int]:
        counts: dict[str, int] = {}
        with FakeOpenAIServer(latency_s=0.0) as server:
            base_url = server.base_url
            # More than the pool allows: the pool's 3 are held, the rest give up at the timeout.
            async with _client(server.base_url, pool=3) as client:
                counts["over_pool"] = await warm_up_connections(client, 5, timeout_s=0.5)
            counts["over_pool_connections"] = server.stats()["connections"]
            # A server without /models answers 404: nothing is held, nothing raised.
            async with _client(server.base_url.replace("/v1", "/no-such-api"), pool=4) as client:
                counts["not_found"] = await warm_up_connections(client, 4)
        # Nothing listens on the port any more: connection refused.
        async with _client(base_url, pool=4) as client:
            counts["refused"] = await warm_up_connections(client, 4, timeout_s=2)
        return counts

    counts = asyncio.run(go())
    assert counts == {"over_pool": 3, "over_pool_connections": 3, "not_found": 0, "refused": 0}


def test_warm_up_rejects_a_count_below_one() -> None:
    async def go() -> None:
        async with _client("http://127.0.0.1:9/v1", pool=1) as client:
            await warm_up_connections(client, 0)

    with pytest.raises(ValueError, match=r"n \(connections to open\) must be >= 1, got 0"):
        asyncio.run(go())
