"""Batch-inference benchmark: the engine vs. the naive fixed-batch pattern, side by side, one process.

    python bench/inference.py --quick    # 300 items
    python bench/inference.py            # 1,000 items

Everything runs against the local OpenAI-compatible test server (ai_assets_tests/inference/
openai_server.py, in a child process unless --in-process) through the real `openai.AsyncOpenAI`
client. Latency per request is uniform in
50–500 ms, drawn per (item, attempt) from a seed, so both patterns see exactly the same latencies.

Before each timed part the client's pool is opened with `warm_up_connections` (as the asset does),
so no pattern pays for connection set-up or the process's cold start.

Figures, printed as `key: value` lines:
  mean_latency_s              mean service time measured at the server (arrival -> response)
  throughput_vs_ideal         measured items/s ÷ (cap ÷ mean_latency_s): 1.0 = the pipe never idles
  drain_bound_vs_ideal        the same ratio for a client with zero overhead, by simulation of these
                              latencies on `cap` slots in input order: what the final drain (slots
                              idle once the queue is empty, waiting for the slowest requests) costs
                              any scheduler that does not know latencies in advance
  warm_connections            connections the warm-up held open at once (= cap when it worked)
  ours_new_connections        connections the server accepted during `ours` (0: the pool was warm)
  ours_gc_full_collections    full (generation 2) GC collections during `ours`
  ours_gc_pause_ms            time spent in all GC collections during `ours` (the event loop stalls)
  fixed_batches_s, ours_s     batches of `cap` awaited with asyncio.gather vs. run_batch
  client_overhead_ms_per_item zero injected latency: our engine's wall ms per item (client + server)
  server_only_ms_per_item     zero latency, a minimal raw-socket HTTP client: the server's own share
  engine_only_ms_per_item     run_batch with a no-op call (queue, bookkeeping, ledger writes only)

Batch API mode (`batch_pass`, the fake Batch API in this process, completing batches at once):
  batch_api_overhead_s        from the first pass to the ledger holding every item: upload, create,
                              status, download, one ledger row per item (no failures)
  batch_api_ms_per_item       the same per item
  batch_api_vs_sync_overhead  batch_api_overhead_s ÷ the sync engine's zero-latency wall time, same run
  failed_in_first_round       items scripted to fail once with a 500 (every 20th)
  resubmitted_items           items the second round sent again: must equal failed_in_first_round
  batch_rounds                rounds it took (2: the failures went again once)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LATENCY_S = (0.05, 0.5)  # per request, uniform, drawn per (seed, item, attempt) by the server


def emit(key: str, value: object) -> None:
    if isinstance(value, float):
        value = f"{value:.4f}"
    print(f"{key}: {value}", flush=True)


def make_items(n: int, prefix: str) -> list:
    from ai_assets.lib.llm.items import InferenceItem

    return [
        InferenceItem(
            id=f"{prefix}-{i:05d}",
            messages=(
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": f"[id:{prefix}-{i:05d}] Summarise document {i} in one sentence."},
            ),
            line=i + 1,
            max_tokens=64,
        )
        for i in range(n)
    ]


def drain_bound(latencies: list[float], cap: int) -> float:
    """items/s ÷ (cap ÷ mean) for greedy list scheduling of `latencies` (in order) on `cap` slots."""
    import heapq

    free_at = [0.0] * cap
    end = 0.0
    for latency in latencies:
        done = heapq.heappop(free_at) + latency
        end = max(end, done)
        heapq.heappush(free_at, done)
    mean = sum(latencies) / len(latencies)
    return (len(latencies) / end) / (cap / mean)


class GcPauses:
    """Counts full (generation 2) collections and the time spent in every collection, while active."""

    def __init__(self) -> None:
        self.full = 0
        self.pause_s = 0.0
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pause_s += time.perf_counter() - self._t0
            self.full += info["generation"] == 2

    def __enter__(self) -> GcPauses:
        import gc

        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        import gc

        gc.callbacks.remove(self._callback)


def make_client(base_url: str, cap: int):
    import httpx2
    import openai

    # The SDK's default pool (openai 3.57: max_connections=1000, max_keepalive=100) already allows
    # `cap` connections for cap <= 100; set it explicitly so the figure never depends on a default,
    # and keep-alive >= cap so connections are reused instead of re-opened under load.
    limits = httpx2.Limits(max_connections=max(cap, 100), max_keepalive_connections=max(cap, 100))
    http_client = openai.DefaultAsyncHttpxClient(limits=limits)
    return openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=60, http_client=http_client)


class ServerProcess:
    """The test server in a child process (default), observed over GET /_stats.

    In-process, the server's 32 handler threads and the client's event loop share one GIL; every
    hand-off waits up to the 5 ms switch interval, which inflates client-side latency by tens of
    ms and charges the server's CPU to the client. A real API never shares our GIL.
    """

    def __init__(self, *latency: float, seed: int = 0) -> None:
        self.argv = [sys.executable, "-m", "ai_assets_tests.inference.openai_server", "--seed", str(seed), "--latency"]
        self.argv += [str(x) for x in latency]

    def __enter__(self) -> ServerProcess:
        import subprocess

        self.proc = subprocess.Popen(self.argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("BASE_URL "):
            self.proc.kill()
            raise RuntimeError(f"test server did not start: {line!r}")
        self.base_url = line.split()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.stdin.close()  # the server exits when its stdin closes
        try:
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()

    def _request(self, method: str, path: str) -> dict:
        import urllib.request

        root = self.base_url.rsplit("/v1", 1)[0]
        with urllib.request.urlopen(
            urllib.request.Request(root + path, method=method, data=b"" if method == "POST" else None)
        ) as r:
            return json.loads(r.read())

    def reset_stats(self) -> None:
        self._request("POST", "/_reset")

    def stats(self) -> dict:
        stats = self._request("GET", "/_stats")
        stats["connections"] -= 1  # the one this request came on (urllib does not keep it alive)
        return stats


class InProcessServer:
    """The same server on a thread of this process (--in-process), for comparison."""

    def __init__(self, *latency: float, seed: int = 0) -> None:
        from ai_assets_tests.inference.openai_server import FakeOpenAIServer

        self.server = FakeOpenAIServer(
            latency_s=latency[0] if len(latency) == 1 else (latency[0], latency[1]), seed=seed
        )

    def __enter__(self) -> InProcessServer:
        self.server.start()
        self.base_url = self.server.base_url
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def reset_stats(self) -> None:
        self.server.reset_stats()

    def stats(self) -> dict:
        return self.server.stats()


def server_latencies(items: list, seed: int) -> list[float]:
    """The latency the test server draws for each item's first attempt (what `ours` was served)."""
    from ai_assets_tests.inference.openai_server import FakeOpenAIServer, _last_user_text

    server = FakeOpenAIServer(latency_s=LATENCY_S, seed=seed)  # never started: only its draw
    return [server._latency(_last_user_text({"messages": list(item.messages)}), item.id, 1) for item in items]


async def run_ours(items, call, cap: int, work: Path, name: str):
    from ai_assets.lib.llm.engine import run_batch
    from ai_assets.lib.llm.ledger import ResultLedger
    from ai_assets.lib.llm.retry import RetryPolicy

    with ResultLedger(work / f"{name}.jsonl") as ledger:
        started = time.perf_counter()
        stats = await run_batch(
            items, call, ledger=ledger, max_in_flight=cap, retry=RetryPolicy(), rng=random.Random(0)
        )
        elapsed = time.perf_counter() - started
    assert stats.succeeded == len(items), stats
    return elapsed, stats


async def run_fixed_batches(items, call, cap: int) -> float:
    """The naive pattern: `cap` requests at a time, each batch waits for its slowest member."""
    started = time.perf_counter()
    for start in range(0, len(items), cap):
        await asyncio.gather(*(call(item) for item in items[start : start + cap]))
    return time.perf_counter() - started


async def raw_client(host: str, port: int, items, cap: int) -> float:
    """Minimal keep-alive HTTP/1.1 client on asyncio streams: what the server alone costs per item."""
    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def conn() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while not queue.empty():
                item = queue.get_nowait()
                body = json.dumps({"model": "m", "messages": list(item.messages), "max_tokens": 64}).encode()
                writer.write(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(conn() for _ in range(cap)))
    return time.perf_counter() - started


async def bench(args: argparse.Namespace, work: Path) -> None:
    from ai_assets.lib.llm.items import CallResult
    from ai_assets.lib.llm.openai_call import make_openai_call, warm_up_connections
    from ai_assets.lib.llm.report import percentile

    Server = InProcessServer if args.in_process else ServerProcess
    n, cap = args.items, args.cap
    emit("items", n)
    emit("max_in_flight", cap)

    # --- throughput under realistic latency: ours vs fixed batches, same server/items/client ------
    emit("server", "in-process thread" if args.in_process else "separate process")
    with Server(*LATENCY_S, seed=args.seed) as server:
        async with make_client(server.base_url, cap) as client:
            call = make_openai_call(client, "bench-model")
            warm = await warm_up_connections(client, cap)
            items = make_items(n, "item")
            order = ["ours", "fixed"] if not args.fixed_first else ["fixed", "ours"]
            results: dict[str, float] = {}
            for pattern in order:
                server.reset_stats()
                if pattern == "ours":
                    with GcPauses() as gc_pauses:
                        results["ours"], stats = await run_ours(items, call, cap, work, "ours")
                    server_stats = server.stats()
                    mean_latency = server_stats["mean_service_s"]
                    ours_server_max = server_stats["max_in_flight"]
                    ours_connections = server_stats["connections"]
                    assert server_stats["total_requests"] == n, server_stats
                else:
                    results["fixed"] = await run_fixed_batches(items, call, cap)
                    fixed_mean_latency = server.stats()["mean_service_s"]
    throughput = n / results["ours"]
    ideal = cap / mean_latency
    emit("mean_latency_s", mean_latency)
    emit("fixed_batches_mean_latency_s", fixed_mean_latency)
    emit("throughput_items_per_s", throughput)
    emit("ideal_items_per_s", ideal)
    emit("throughput_vs_ideal", throughput / ideal)
    emit("drain_bound_vs_ideal", drain_bound(server_latencies(items, args.seed), cap))
    emit("warm_connections", warm)
    emit("ours_new_connections", ours_connections)
    emit("ours_gc_full_collections", gc_pauses.full)
    emit("ours_gc_pause_ms", round(1000 * gc_pauses.pause_s, 1))
    emit("server_max_in_flight", ours_server_max)
    emit("client_latency_p50_s", round(percentile(stats.latencies_s, 50), 4))
    emit("client_latency_p95_s", round(percentile(stats.latencies_s, 95), 4))
    emit("fixed_batches_s", results["fixed"])
    emit("ours_s", results["ours"])
    emit("speedup_vs_fixed_batches", results["fixed"] / results["ours"])

    # --- overhead: zero injected latency ---------------------------------------------------------
    with Server(0.0) as server:
        async with make_client(server.base_url, cap) as client:
            call = make_openai_call(client, "bench-model")
            await warm_up_connections(client, cap)
            items = make_items(n, "zero")
            elapsed, _ = await run_ours(items, call, cap, work, "zero")
            sync_zero_s = elapsed
        emit("client_overhead_ms_per_item", 1000 * elapsed / n)
        host, port = server.base_url.split("//")[1].split("/")[0].split(":")
        raw_s = await raw_client(host, int(port), make_items(n, "raw"), cap)
        emit("server_only_ms_per_item", 1000 * raw_s / n)

    async def noop(item) -> CallResult:
        await asyncio.sleep(0)
        return CallResult(output="x", model="m", finish_reason="stop", prompt_tokens=1, completion_tokens=1)

    elapsed, _ = await run_ours(make_items(n, "noop"), noop, cap, work, "noop")
    emit("engine_only_ms_per_item", 1000 * elapsed / n)

    bench_batch_api(n, work, sync_zero_s)


def bench_batch_api(n: int, work: Path, sync_zero_s: float) -> None:
    """batch_api mode end to end against the fake Batch API (instant completion), then a partial failure."""
    import dataclasses

    import openai

    from ai_assets.lib.llm.batch_api import BatchJournal, BatchOptions, batch_pass
    from ai_assets.lib.llm.ledger import ResultLedger
    from ai_assets_tests.inference.openai_server import FakeOpenAIServer

    def passes(client: openai.OpenAI, items: list, name: str) -> tuple[float, int, int, int]:
        ledger_path = work / f"{name}.ledger.jsonl"
        journal = BatchJournal.beside(ledger_path)
        options = BatchOptions(partition=f"{name}.jsonl", input_digest="0" * 64, default_model="bench-model")
        resubmitted = rounds = 0
        started = time.perf_counter()
        with ResultLedger(ledger_path) as ledger:
            while True:
                result = batch_pass(client, items, ledger, journal, options)
                resubmitted += result.resubmitted_items
                rounds = result.rounds
                if result.finished:
                    break
            elapsed = time.perf_counter() - started
            rows = ledger.load()
        assert len(rows) == len(items) and all(rows[i.id].succeeded for i in items), "batch_api lost an item"
        failed_first = sum(1 for row in rows.values() if row.attempts == 2)
        return elapsed, resubmitted, rounds, failed_first

    with FakeOpenAIServer() as server, openai.OpenAI(base_url=server.base_url, api_key="bench") as client:
        elapsed, _, _, _ = passes(client, make_items(n, "batch"), "clean")
        emit("batch_api_overhead_s", elapsed)
        emit("batch_api_ms_per_item", 1000 * elapsed / n)
        emit("batch_api_vs_sync_overhead", elapsed / sync_zero_s)
        items = make_items(n, "partial")
        # Every 20th item's first attempt fails with a 500: round 2 must send exactly those again.
        items = [
            dataclasses.replace(
                item,
                messages=(
                    item.messages[0],
                    {**item.messages[1], "content": item.messages[1]["content"] + " [fail:500:1]"},
                ),
            )
            if i % 20 == 0
            else item
            for i, item in enumerate(items)
        ]
        _, resubmitted, rounds, failed_first = passes(client, items, "partial")
        emit("failed_in_first_round", failed_first)
        emit("resubmitted_items", resubmitted)
        emit("resubmitted_equals_failed", resubmitted == failed_first == len(range(0, n, 20)))
        emit("batch_rounds", rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300 items instead of --items")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--cap", type=int, default=32, help="max requests in flight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fixed-first", action="store_true", help="run the fixed-batch pattern first")
    parser.add_argument("--in-process", action="store_true", help="server on a thread of this process")
    args = parser.parse_args()
    if args.quick:
        args.items = 300
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
