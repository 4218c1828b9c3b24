"""Run many chat completions with bounded concurrency, pacing, retries and a resumable ledger.

Scheduling model (the decisions that matter for throughput and for provider limits):

* Exactly `max_in_flight` worker tasks pull items from one queue. A worker starts its next request
  the moment its previous one returns, so the pipe stays full — unlike fixed batches awaited with
  `gather`, where every batch waits for its slowest member.
* A worker holds a "slot" only while a request is actually on the wire (plus while waiting on the
  rate limiter just before sending). Hence at most `max_in_flight` requests are ever in flight,
  retries included.
* A failed attempt that will be retried does NOT keep its slot during the backoff: the item is put
  back on the queue by a timer when its delay expires, and the worker immediately takes other
  work. One item stuck behind a 60 s Retry-After therefore does not idle 1/max_in_flight of the
  capacity. Retries jump the queue (priority 0) so that started items finish first.
* Each finished item — success, or final failure after the policy gives up — is written to the
  ledger at once. Items already successful in the ledger are skipped; previously failed ones are
  re-run with their earlier `attempts` carried forward; the policy's `max_attempts` applies afresh
  per run.
* The workers start one loop turn apart, so the first requests go out one after another instead
  of all waiting until every one has been built.
* While the workers run, the objects that predate the batch are frozen out of the cyclic GC
  (`old_objects_frozen`): a full collection of them stalled the event loop for 120-220 ms.
* Cancellation: cancelling `run_batch` cancels the workers; requests in flight are not recorded
  (they will simply be sent again on resume). Rows already recorded stay recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ai_assets.lib.llm.items import CallResult, InferenceItem, OutputRow
from ai_assets.lib.llm.ledger import ResultLedger
from ai_assets.lib.llm.rate_limit import RateLimiter, estimate_tokens
from ai_assets.lib.llm.retry import RetryPolicy, classify, redact


class AbortBatch(Exception):
    """Raised by a `call` to stop the whole batch at once (e.g. the server behind it died).

    Unlike every other exception it is not classified, retried or recorded: rows already in the
    ledger stay, requests in flight are resent on resume, and it propagates out of `run_batch`.
    """


@dataclass(frozen=True)
class BatchProgress:
    """A progress snapshot for logs/UI. `done` includes items skipped as already finished."""

    done: int
    total: int
    succeeded: int  # this run
    failed: int  # this run
    skipped: int
    retries: int
    in_flight: int
    elapsed_s: float
    rate_items_per_s: float  # items finished this run per second of this run
    eta_s: float | None  # None until there is a rate to extrapolate from

    def __str__(self) -> str:
        eta = f"{self.eta_s:.0f}s" if self.eta_s is not None else "?"
        return (
            f"{self.done}/{self.total} done ({self.succeeded} ok, {self.failed} failed, {self.skipped} skipped), "
            f"{self.retries} retries, {self.in_flight} in flight, {self.rate_items_per_s:.2f} items/s, ETA {eta}"
        )


@dataclass
class BatchStats:
    """What one `run_batch` call did. Counts refer to this run; `skipped` were done before it."""

    items: int = 0
    skipped: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0  # attempts beyond the first, over all items
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies_s: list[float] = field(default_factory=list)  # successful attempts only
    wall_s: float = 0.0
    max_in_flight_observed: int = 0


@dataclass(order=True)
class _Job:
    priority: int  # 0 = retry (finish started items first), 1 = fresh
    seq: int
    item: InferenceItem = field(compare=False)
    attempts_before: int = field(compare=False)  # from earlier runs, per the ledger
    attempts: int = field(default=0, compare=False)  # this run


async def run_batch(
    items: Sequence[InferenceItem],
    call: Callable[[InferenceItem], Awaitable[CallResult]],
    *,
    ledger: ResultLedger,
    max_in_flight: int,
    retry: RetryPolicy,
    limiter: RateLimiter | None = None,
    on_progress: Callable[[BatchProgress], None] | None = None,
    progress_every_s: float = 10.0,
    rng: random.Random | None = None,
    secrets: Sequence[str] = (),
    final: Collection[str] = (),
) -> BatchStats:
    """Complete every item not already successful in `ledger`, recording one row per finished item.

    `ledger` must be open (the caller owns its lifetime, so it can `load()` and assemble outputs
    afterwards). `secrets` (e.g. the API key) are scrubbed from recorded error messages.
    `on_progress` is called every `progress_every_s` and once at the end. Raises ValueError on
    duplicate ids; exceptions from `call` never escape (they become retries or error rows) except
    `AbortBatch`, which stops the batch and propagates; a failing ledger write or progress callback
    aborts the batch too.
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    _check_unique_ids(items)
    rng = rng if rng is not None else random.Random()
    started = time.perf_counter()
    stats = BatchStats(items=len(items))

    previous = ledger.load()
    jobs: list[_Job] = []
    for item in items:
        row = previous.get(item.id)
        # `final`: ids whose failed row is already this step's last word (they spent their attempts in
        # an earlier pass of the same step, before a server restart): not sent again.
        if row is not None and (row.succeeded or item.id in final):
            stats.skipped += 1
        else:
            jobs.append(_Job(1, len(jobs), item, row.attempts if row is not None else 0))

    state = _State(stats=stats, remaining=len(jobs))
    if not jobs:
        stats.wall_s = time.perf_counter() - started
        if on_progress is not None:
            on_progress(state.snapshot(started))
        return stats

    queue: asyncio.PriorityQueue[_Job] = asyncio.PriorityQueue()
    for job in jobs:
        queue.put_nowait(job)
    seq = itertools.count(len(jobs))
    timers: set[asyncio.TimerHandle] = set()
    loop = asyncio.get_running_loop()
    all_done = asyncio.Event()

    def finish(row: OutputRow) -> None:
        ledger.append(row)
        state.remaining -= 1
        if state.remaining == 0:
            all_done.set()

    def requeue_later(job: _Job, delay_s: float) -> None:
        def put() -> None:
            timers.discard(handle)
            job.priority, job.seq = 0, next(seq)
            queue.put_nowait(job)

        handle = loop.call_later(delay_s, put)
        timers.add(handle)

    async def worker() -> None:
        while True:
            job = await queue.get()
            await _attempt(job)

    async def _attempt(job: _Job) -> None:
        item = job.item
        estimate = estimate_tokens(item) if limiter is not None else 0
        if limiter is not None:
            await limiter.acquire(estimate)
        job.attempts += 1
        if job.attempts > 1:
            stats.retries += 1
        state.in_flight += 1
        stats.max_in_flight_observed = max(stats.max_in_flight_observed, state.in_flight)
        t0 = time.perf_counter()
        try:
            result = await call(item)
        except AbortBatch:
            state.in_flight -= 1
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is classified, none is lost
            latency = time.perf_counter() - t0
            state.in_flight -= 1
            failure = classify(exc, secrets=secrets)
            if retry.should_retry(failure, job.attempts):
                requeue_later(job, retry.delay(job.attempts, failure.retry_after_s, rng))
                return
            stats.failed += 1
            finish(
                OutputRow(
                    id=item.id,
                    error=failure.describe(),
                    model=item.model,
                    latency_s=latency,  # of the last attempt
                    attempts=job.attempts_before + job.attempts,
                    metadata=item.metadata,
                ),
            )
            return
        except BaseException:
            state.in_flight -= 1  # cancelled mid-request: not recorded, resent on resume
            raise
        latency = time.perf_counter() - t0
        state.in_flight -= 1
        if limiter is not None:
            limiter.adjust_tokens(estimate - (result.prompt_tokens + result.completion_tokens))
        stats.succeeded += 1
        stats.prompt_tokens += result.prompt_tokens
        stats.completion_tokens += result.completion_tokens
        stats.latencies_s.append(latency)
        finish(
            OutputRow(
                id=item.id,
                # A model (or a proxy) can echo the key back in an answer: it never reaches the outputs.
                output=redact(result.output, secrets) if secrets else result.output,
                model=result.model,
                finish_reason=result.finish_reason,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                latency_s=latency,
                attempts=job.attempts_before + job.attempts,
                metadata=item.metadata,
                request_id=result.request_id,
            ),
        )

    async def ticker() -> None:
        assert on_progress is not None
        while True:
            await asyncio.sleep(progress_every_s)
            on_progress(state.snapshot(started))

    tasks: list[asyncio.Task[None]] = []
    if on_progress is not None:
        tasks.append(asyncio.create_task(ticker(), name="inference-progress"))
    waiter = asyncio.create_task(all_done.wait())
    with old_objects_frozen():
        try:
            for i in range(max_in_flight):
                if waiter.done() or any(task.done() for task in tasks):
                    break  # all finished already, or a worker raised: no point starting more
                tasks.append(asyncio.create_task(worker(), name=f"inference-worker-{i}"))
                # One loop turn before the next worker: this one builds its request and starts sending
                # it while the next builds its own. Started all at once, each spends its CPU time
                # (1-2 ms in the SDK) before any request reaches the socket, so every one of the first
                # `max_in_flight` requests left only after all of them had been built.
                await asyncio.sleep(0)
            finished, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                if task is not waiter:
                    # Workers and the ticker loop forever; one that ended has raised.
                    task.result()
                    raise RuntimeError(f"{task.get_name()} stopped unexpectedly")
        finally:
            for handle in timers:
                handle.cancel()
            for task in (waiter, *tasks):
                task.cancel()
            await asyncio.gather(waiter, *tasks, return_exceptions=True)
            ledger.sync()
    stats.wall_s = time.perf_counter() - started
    if on_progress is not None:
        on_progress(state.snapshot(started))
    return stats


@contextlib.contextmanager
def old_objects_frozen() -> Iterator[None]:
    """Exempt the objects that exist now from the cyclic GC's full collections, for the duration.

    A full (generation 2) collection walks every tracked object in the process — 170,000 after
    importing the OpenAI SDK, 250,000 with Dagster — and took 120-220 ms on 2 busy cores, all on the
    event loop: every response that arrives meanwhile waits, and no request is sent. A 300-item
    batch triggered one (about 5 % of its wall time). Frozen (`gc.freeze`), the old objects are
    skipped, and a full collection only walks what the batch itself allocated. Cyclic garbage
    that predates the batch is collected after it, once `gc.unfreeze` hands those objects back.

    Does nothing when the GC is disabled or a caller has already frozen objects (e.g. before a
    fork): their freeze is theirs to undo.
    """
    if not gc.isenabled() or gc.get_freeze_count() > 0:
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@dataclass
class _State:
    stats: BatchStats
    remaining: int
    in_flight: int = 0

    def snapshot(self, started: float) -> BatchProgress:
        s = self.stats
        elapsed = time.perf_counter() - started
        finished = s.succeeded + s.failed
        done = s.skipped + finished
        rate = finished / elapsed if elapsed > 0 else 0.0
        eta = (s.items - done) / rate if rate > 0 else (0.0 if done == s.items else None)
        return BatchProgress(
            done=done,
            total=s.items,
            succeeded=s.succeeded,
            failed=s.failed,
            skipped=s.skipped,
            retries=s.retries,
            in_flight=self.in_flight,
            elapsed_s=elapsed,
            rate_items_per_s=rate,
            eta_s=eta,
        )


def _check_unique_ids(items: Sequence[InferenceItem]) -> None:
    seen: set[str] = set()
    duplicates: list[str] = []
    for item in items:
        if item.id in seen:
            duplicates.append(item.id)
        seen.add(item.id)
    if duplicates:
        raise ValueError(f"duplicate item ids (each id must be unique): {sorted(set(duplicates))[:10]}")


def assemble_outputs(items: Sequence[InferenceItem], rows: Mapping[str, OutputRow]) -> list[OutputRow]:
    """Exactly one row per input item, in input order. Raises KeyError naming ids with no row."""
    missing = [item.id for item in items if item.id not in rows]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise KeyError(f"{len(missing)} item(s) have no result row: {shown}")
    return [rows[item.id] for item in items]


def failed_since(before: Mapping[str, OutputRow], now: Mapping[str, OutputRow]) -> set[str]:
    """Ids whose row in `now` failed and was written after `before` was read (it differs from it)."""
    return {item_id for item_id, row in now.items() if not row.succeeded and before.get(item_id) != row}


def counts_since(
    before: Mapping[str, OutputRow], now: Mapping[str, OutputRow], ids: Sequence[str]
) -> tuple[int, int, int]:
    """(succeeded, failed, retries) of the rows of `ids` written after `before` was read: the work of a
    step over all its passes, even when a pass was aborted and returned no stats."""
    succeeded = failed = retries = 0
    for item_id in ids:
        row, earlier = now.get(item_id), before.get(item_id)
        if row is None or row == earlier:
            continue
        succeeded += row.succeeded
        failed += not row.succeeded
        retries += max(row.attempts - (earlier.attempts if earlier else 0) - 1, 0)
    return succeeded, failed, retries
