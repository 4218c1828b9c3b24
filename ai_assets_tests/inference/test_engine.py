"""run_batch end to end: the real AsyncOpenAI client against a real local server with scripted faults."""

from __future__ import annotations

import asyncio
import gc
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from ai_assets.lib.llm.engine import AbortBatch, BatchProgress, BatchStats, assemble_outputs, run_batch
from ai_assets.lib.llm.items import CallResult, InferenceItem, OutputRow
from ai_assets.lib.llm.ledger import ResultLedger
from ai_assets.lib.llm.openai_call import make_openai_call
from ai_assets.lib.llm.rate_limit import RateLimiter
from ai_assets.lib.llm.retry import RetryPolicy

from .openai_server import FakeOpenAIServer

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05)
API_KEY = "sk-test-Secret0123456789"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency_s=0.01, retry_after="1") as srv:
        yield srv


def item(item_id: str, directives: str = "", **kwargs: Any) -> InferenceItem:
    text = f"[id:{item_id}] {directives} say hello".replace("  ", " ")
    return InferenceItem(id=item_id, messages=({"role": "user", "content": text},), line=1, **kwargs)


def run(
    server: FakeOpenAIServer,
    items: list[InferenceItem],
    ledger_path: Path,
    *,
    max_in_flight: int = 4,
    retry: RetryPolicy = FAST,
    **kwargs: Any,
) -> tuple[BatchStats, dict[str, OutputRow]]:
    async def go() -> BatchStats:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=10) as client:
            with ResultLedger(ledger_path) as ledger:
                return await run_batch(
                    items,
                    make_openai_call(client, "test-model"),
                    ledger=ledger,
                    max_in_flight=max_in_flight,
                    retry=retry,
                    rng=random.Random(0),
                    **kwargs,
                )

    stats = asyncio.run(go())
    return stats, ResultLedger(ledger_path).load()


def ledger_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_every_item_gets_exactly_one_row_in_input_order(server: FakeOpenAIServer, tmp_path: Path) -> None:
    items = [item(f"i{n}", metadata={"n": n}) for n in range(30)]
    items.append(item("custom", model="other-model", max_tokens=5, temperature=0.0))
    stats, rows = run(server, items, tmp_path / "l.jsonl")
    out = assemble_outputs(items, rows)
    assert [r.id for r in out] == [i.id for i in items]
    assert len(ledger_lines(tmp_path / "l.jsonl")) == len(items)  # one row each, no duplicates
    assert all(r.succeeded and r.attempts == 1 for r in out)
    assert out[3].output == "echo: [id:i3] say hello" and out[3].metadata == {"n": 3}
    assert out[3].model == "test-model" and out[-1].model == "other-model"
    assert out[3].finish_reason == "stop" and out[3].prompt_tokens == 3 and out[3].completion_tokens == 4
    assert (stats.items, stats.succeeded, stats.failed, stats.skipped, stats.retries) == (31, 31, 0, 0, 0)
    assert stats.prompt_tokens == sum(r.prompt_tokens for r in out) > 0
    assert len(stats.latencies_s) == 31 and all(0.01 <= s < 2 for s in stats.latencies_s)
    assert server.total_requests == 31
    with pytest.raises(KeyError, match="missing"):
        assemble_outputs([*items, item("missing")], rows)


def test_retry_after_is_honoured(server: FakeOpenAIServer, tmp_path: Path) -> None:
    # Without Retry-After this policy would come back within 10 ms.
    items = [item("limited", "[fail:429:1]"), item("plain")]
    stats, rows = run(server, items, tmp_path / "l.jsonl")
    first, second = server.records_for("limited")
    assert (first.outcome, second.outcome) == ("429", "ok")
    assert second.arrived - first.finished >= 1.0
    assert rows["limited"].succeeded and rows["limited"].attempts == 2
    assert stats.retries == 1


def test_in_flight_cap_is_never_exceeded_even_with_retries(tmp_path: Path) -> None:
    with FakeOpenAIServer(latency_s=(0.02, 0.06), seed=3) as server:
        items = [item(f"i{n}", "[fail:500:1]" if n % 3 == 0 else "") for n in range(60)]
        stats, rows = run(server, items, tmp_path / "l.jsonl", max_in_flight=5)
        assert server.max_in_flight <= 5
        assert server.max_in_flight == 5  # and the cap is actually used
        assert stats.max_in_flight_observed == 5
        assert stats.retries == 20 and server.total_requests == 80
        assert all(r.succeeded for r in rows.values()) and len(rows) == 60


def test_a_slow_item_does_not_hold_up_the_others(tmp_path: Path) -> None:
    # Fixed batches of 2 would let one other request run beside the slow one; a queue runs ~all.
    with FakeOpenAIServer(latency_s=0.02) as server:
        items = [item("slow", "[sleep:1.0]")] + [item(f"f{n}") for n in range(20)]
        run(server, items, tmp_path / "l.jsonl", max_in_flight=2)
        (slow,) = server.records_for("slow")
        during = [r for r in server.records if r.item_id != "slow" and slow.arrived < r.arrived < slow.finished]
        assert len(during) >= 8  # fixed batches: at most 1


def test_a_request_in_backoff_does_not_hold_a_slot(server: FakeOpenAIServer, tmp_path: Path) -> None:
    items = [item("limited", "[fail:429:1]")] + [item(f"f{n}") for n in range(8)]
    stats, rows = run(server, items, tmp_path / "l.jsonl", max_in_flight=1)
    retry_arrival = server.records_for("limited")[1].arrived
    others = [server.records_for(f"f{n}")[0] for n in range(8)]
    assert all(r.finished < retry_arrival for r in others)  # all served while "limited" waited 1 s
    assert stats.max_in_flight_observed == 1 and server.max_in_flight == 1
    assert all(r.succeeded for r in rows.values())


def test_client_errors_are_not_retried_and_are_recorded(server: FakeOpenAIServer, tmp_path: Path) -> None:
    items = [item("bad", "[fail:400]"), item("denied", "[fail:401]"), item("ok")]
    stats, rows = run(server, items, tmp_path / "l.jsonl")
    assert server.requests_for("bad") == 1 and server.requests_for("denied") == 1
    assert rows["bad"].error is not None and rows["bad"].error.startswith("bad_request (HTTP 400)")
    assert rows["bad"].output is None and rows["bad"].attempts == 1
    assert rows["ok"].succeeded
    assert (stats.succeeded, stats.failed, stats.retries) == (1, 2, 0)
    # The server echoed the key in its 401 message; it must not reach the output file.
    assert "Incorrect API key" in (rows["denied"].error or "")
    assert API_KEY not in (tmp_path / "l.jsonl").read_text()


def test_dropped_connections_garbage_and_5xx_are_retried(server: FakeOpenAIServer, tmp_path: Path) -> None:
    items = [
        item("dropped", "[drop:1]"),
        item("garbage", "[garbage:2]"),
        item("mixed", "[fail:503:1][drop:1][garbage:1]"),
    ]
    stats, rows = run(server, items, tmp_path / "l.jsonl")
    assert [r.outcome for r in server.records_for("dropped")] == ["drop", "ok"]
    assert [r.outcome for r in server.records_for("garbage")] == ["garbage", "garbage", "ok"]
    assert [r.outcome for r in server.records_for("mixed")] == ["503", "drop", "garbage", "ok"]
    assert all(r.succeeded for r in rows.values())
    assert rows["mixed"].attempts == 4 and stats.retries == 1 + 2 + 3


def test_final_failure_after_max_attempts(server: FakeOpenAIServer, tmp_path: Path) -> None:
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)
    stats, rows = run(server, [item("down", "[fail:503:99]")], tmp_path / "l.jsonl", retry=policy)
    assert server.requests_for("down") == 3
    assert rows["down"].error is not None and rows["down"].error.startswith("server_error (HTTP 503)")
    assert rows["down"].attempts == 3 and (stats.failed, stats.retries) == (1, 2)


def test_resume_skips_successes_and_retries_failures(server: FakeOpenAIServer, tmp_path: Path) -> None:
    ledger = tmp_path / "l.jsonl"
    items = [item("a"), item("b"), item("flaky", "[fail:500:3]"), item("bad", "[fail:400]")]
    stingy = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02)
    first, rows = run(server, items, ledger, retry=stingy)
    assert (first.succeeded, first.failed) == (2, 2)
    assert not rows["flaky"].succeeded and rows["flaky"].attempts == 2

    second, rows = run(server, items, ledger)
    assert (second.skipped, second.succeeded, second.failed) == (2, 1, 1)
    assert server.requests_for("a") == 1 and server.requests_for("b") == 1  # not requested again
    assert server.requests_for("flaky") == 4 and rows["flaky"].succeeded
    assert rows["flaky"].attempts == 4  # carried forward across runs
    assert server.requests_for("bad") == 2 and rows["bad"].attempts == 2

    third, _ = run(server, items[:3], ledger)  # everything that can succeed has: no requests
    assert third.skipped == 3 and server.total_requests == 2 + 4 + 2
    assert [r.id for r in assemble_outputs(items, rows)] == ["a", "b", "flaky", "bad"]


def test_cancellation_records_only_finished_items_and_resume_completes(tmp_path: Path) -> None:
    ledger_path = tmp_path / "l.jsonl"
    with FakeOpenAIServer(latency_s=0.01) as server:
        items = [item(f"fast{n}") for n in range(6)] + [item(f"slow{n}", "[sleep:1.5]") for n in range(2)]

        async def cancelled_run() -> None:
            async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0) as client:
                with ResultLedger(ledger_path) as ledger:
                    task = asyncio.create_task(
                        run_batch(items, make_openai_call(client, "m"), ledger=ledger, max_in_flight=8, retry=FAST)
                    )
                    await asyncio.sleep(0.5)
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task

        asyncio.run(cancelled_run())
        assert set(ResultLedger(ledger_path).load()) == {f"fast{n}" for n in range(6)}
        stats, rows = run(server, items, ledger_path)
        assert stats.skipped == 6 and stats.succeeded == 2
        assert all(server.requests_for(f"fast{n}") == 1 for n in range(6))
        assert len(assemble_outputs(items, rows)) == 8 and len(ledger_lines(ledger_path)) == 8


def test_progress_is_reported_periodically_and_at_the_end(tmp_path: Path) -> None:
    seen: list[BatchProgress] = []
    with FakeOpenAIServer(latency_s=0.05) as server:
        items = [item(f"i{n}") for n in range(20)]
        run(server, items, tmp_path / "l.jsonl", max_in_flight=2, on_progress=seen.append, progress_every_s=0.1)
    assert len(seen) >= 4
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    middle = seen[len(seen) // 2]
    assert 0 < middle.done < 20 and middle.rate_items_per_s > 0 and middle.eta_s is not None
    assert seen[-1].done == seen[-1].total == 20 and seen[-1].eta_s == 0.0
    assert "20/20 done" in str(seen[-1])


def test_rate_limiter_paces_requests(server: FakeOpenAIServer, tmp_path: Path) -> None:
    limiter = RateLimiter(requests_per_minute=1200, tokens_per_minute=None, burst_s=0.25)  # 20/s, burst 5
    items = [item(f"i{n}") for n in range(15)]
    stats, _ = run(server, items, tmp_path / "l.jsonl", max_in_flight=8, limiter=limiter)
    arrivals = sorted(r.arrived for r in server.records)
    assert arrivals[-1] - arrivals[0] >= 0.45  # 10 requests beyond the burst at 20/s
    assert stats.succeeded == 15


def test_duplicate_ids_and_bad_cap_are_rejected(server: FakeOpenAIServer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        run(server, [item("a"), item("a")], tmp_path / "l.jsonl")
    with pytest.raises(ValueError, match="max_in_flight"):
        run(server, [item("a")], tmp_path / "l.jsonl", max_in_flight=0)
    assert server.total_requests == 0


def test_objects_older_than_the_batch_are_frozen_only_while_it_runs(tmp_path: Path) -> None:
    # A full GC collection walks every object in the process on the event loop (120-220 ms with the
    # SDK imported); frozen, the objects that predate the batch are skipped.
    def batch(name: str) -> list[int]:
        counts: list[int] = []

        async def call(entry: InferenceItem) -> CallResult:
            counts.append(gc.get_freeze_count())
            await asyncio.sleep(0)
            return CallResult(output="x", model="m", finish_reason="stop", prompt_tokens=1, completion_tokens=1)

        async def go() -> None:
            with ResultLedger(tmp_path / f"{name}.jsonl") as ledger:
                await run_batch([item(f"i{n}") for n in range(6)], call, ledger=ledger, max_in_flight=3, retry=FAST)

        asyncio.run(go())
        return counts

    assert gc.get_freeze_count() == 0
    during = batch("plain")
    assert len(during) == 6 and min(during) > 0  # frozen for every request
    assert gc.get_freeze_count() == 0  # and handed back afterwards

    gc.freeze()  # a caller's own freeze (e.g. before a fork) is theirs: kept as it is
    try:
        frozen_by_caller = gc.get_freeze_count()
        counts = batch("caller_froze")
        # Frozen objects that die leave the frozen set, so the count may only shrink a little: never grow
        # (the batch froze again, taking its own objects) nor drop to nothing (the batch unfroze).
        assert len(counts) == 6 and frozen_by_caller * 0.99 < min(counts) <= max(counts) <= frozen_by_caller
        assert frozen_by_caller * 0.99 < gc.get_freeze_count() <= frozen_by_caller
    finally:
        gc.unfreeze()

    gc.disable()  # a caller who turned the GC off gets no freeze either
    try:
        assert batch("gc_disabled") == [0] * 6
    finally:
        gc.enable()


def test_the_first_requests_go_out_one_after_another(tmp_path: Path) -> None:
    # A call that needs a few loop turns to get its request on the wire, as the SDK's does. Workers
    # started all at once would all build their request before the first one is sent.
    events: list[str] = []

    async def call(entry: InferenceItem) -> CallResult:
        events.append(f"build {entry.id}")
        for _ in range(3):  # headers, body, flush: each a loop turn
            await asyncio.sleep(0)
        events.append(f"sent {entry.id}")
        await asyncio.sleep(0.01)
        return CallResult(output="x", model="m", finish_reason="stop", prompt_tokens=1, completion_tokens=1)

    async def go() -> BatchStats:
        with ResultLedger(tmp_path / "l.jsonl") as ledger:
            return await run_batch([item(f"i{n}") for n in range(16)], call, ledger=ledger, max_in_flight=8, retry=FAST)

    stats = asyncio.run(go())
    assert stats.succeeded == 16 and stats.max_in_flight_observed == 8
    first_eight = [f"i{n}" for n in range(8)]
    # Each of the first requests is on the wire at most 3 workers' builds later, not 8.
    for n, item_id in enumerate(first_eight[:-3]):
        assert events.index(f"sent {item_id}") < events.index(f"build {first_eight[n + 3]}"), events[:24]


def test_no_more_workers_start_once_one_has_aborted_the_batch(tmp_path: Path) -> None:
    calls: list[str] = []

    async def call(entry: InferenceItem) -> CallResult:
        calls.append(entry.id)
        raise AbortBatch("the server behind this call died")

    async def go() -> None:
        with ResultLedger(tmp_path / "l.jsonl") as ledger:
            await run_batch([item(f"i{n}") for n in range(20)], call, ledger=ledger, max_in_flight=8, retry=FAST)

    with pytest.raises(AbortBatch, match="died"):
        asyncio.run(go())
    assert calls == ["i0"]  # not one request per worker still to be started
    assert ResultLedger(tmp_path / "l.jsonl").load() == {}


def test_an_answer_echoing_the_key_is_recorded_redacted(tmp_path: Path) -> None:
    key = "sk-proj-Zq8hT3kP0wYb7uVn2LmR5sXcJ4dE"

    async def echo(item: InferenceItem) -> CallResult:
        return CallResult(f"your key is {key.removeprefix('sk-proj-')} ({item.id})", "m", "stop", 1, 1)

    with ResultLedger(tmp_path / "ledger.jsonl") as ledger:
        items = [InferenceItem(id="a", messages=({"role": "user", "content": "key?"},), line=1)]
        asyncio.run(run_batch(items, echo, ledger=ledger, max_in_flight=1, retry=RetryPolicy(), secrets=[key]))
        (row,) = ledger.load().values()
    assert row.output == "your key is *** (a)"
    assert "Zq8hT3kP" not in (tmp_path / "ledger.jsonl").read_text()
