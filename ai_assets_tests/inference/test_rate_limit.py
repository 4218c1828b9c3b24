"""RateLimiter on a fake clock: the sleeps it asks for are exactly the ones it needs."""

from __future__ import annotations

import asyncio

import pytest

from ai_assets.lib.llm.items import InferenceItem
from ai_assets.lib.llm.rate_limit import RateLimiter, estimate_tokens


class FakeClock:
    """`sleep` advances `now` instead of waiting, and records each request."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # still yield, so other tasks interleave as they would for real


def limiter(clock: FakeClock, rpm: float | None, tpm: float | None, burst_s: float = 1.0) -> RateLimiter:
    return RateLimiter(rpm, tpm, burst_s=burst_s, clock=clock, sleep=clock.sleep)


def test_unlimited_never_waits() -> None:
    clock = FakeClock()

    async def go() -> None:
        lim = limiter(clock, None, None)
        for _ in range(1000):
            await lim.acquire(10_000)

    asyncio.run(go())
    assert clock.sleeps == [] and clock.now == 1000.0


def test_requests_per_minute_paces_after_the_initial_burst() -> None:
    clock = FakeClock()

    async def go() -> list[float]:
        lim = limiter(clock, rpm=600, tpm=None)  # 10/s, burst of 1 s = 10 requests
        times = []
        for _ in range(40):
            await lim.acquire()
            times.append(clock.now - 1000.0)
        return times

    times = asyncio.run(go())
    assert times[:10] == [0.0] * 10  # the burst goes at once
    assert times[-1] == pytest.approx(3.0)  # the other 30 at 10/s
    gaps = [b - a for a, b in zip(times[10:], times[11:], strict=False)]
    assert all(g == pytest.approx(0.1) for g in gaps)


def test_tokens_per_minute_and_oversized_requests_go_into_debt() -> None:
    clock = FakeClock()

    async def go() -> list[float]:
        lim = limiter(clock, rpm=None, tpm=600)  # 10 tokens/s, bucket of 10
        stamps = []
        for tokens in (10, 10, 35, 5):
            await lim.acquire(tokens)
            stamps.append(clock.now - 1000.0)
        return stamps

    # 10 at once; 10 more after 1 s; 35 (> bucket) waits for a full bucket (1 s) and leaves
    # 25 tokens of debt; 5 then waits for -25 -> +5 = 3 s.
    assert asyncio.run(go()) == pytest.approx([0.0, 1.0, 2.0, 5.0])


def test_both_limits_bind_whichever_is_tighter() -> None:
    clock = FakeClock()

    async def go() -> float:
        lim = limiter(clock, rpm=6000, tpm=6000)  # 100 req/s, but only 100 tokens/s
        for _ in range(21):
            await lim.acquire(50)
        return clock.now - 1000.0

    # bucket holds 100 tokens = 2 requests; the other 19 need 950 tokens at 100/s.
    assert asyncio.run(go()) == pytest.approx(9.5)


def test_refunds_after_real_usage_shorten_the_wait() -> None:
    clock = FakeClock()

    async def go(refund: bool) -> float:
        clock.now = 1000.0
        lim = limiter(clock, rpm=None, tpm=600)
        await lim.acquire(10)
        if refund:
            lim.adjust_tokens(+8)  # estimated 10, used 2
        await lim.acquire(10)
        return clock.now - 1000.0

    assert asyncio.run(go(refund=False)) == pytest.approx(1.0)
    assert asyncio.run(go(refund=True)) == pytest.approx(0.2)


def test_waiters_are_served_in_arrival_order() -> None:
    clock = FakeClock()
    order: list[int] = []

    async def go() -> None:
        lim = limiter(clock, rpm=60, tpm=None)  # 1/s, bucket of 1

        async def one(i: int) -> None:
            await lim.acquire()
            order.append(i)

        await asyncio.gather(*(one(i) for i in range(6)))

    asyncio.run(go())
    assert order == list(range(6))
    assert clock.now - 1000.0 == pytest.approx(5.0)


def test_invalid_limits_are_rejected() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, None)
    with pytest.raises(ValueError):
        RateLimiter(None, -5)
    with pytest.raises(ValueError):
        RateLimiter(60, None, burst_s=0)


def test_estimate_counts_prompt_and_max_tokens() -> None:
    short = InferenceItem(id="a", messages=({"role": "user", "content": "hi"},), line=1, max_tokens=100)
    long = InferenceItem(id="b", messages=({"role": "user", "content": "word " * 400},), line=2, max_tokens=100)
    assert 100 < estimate_tokens(short) < 120
    assert estimate_tokens(long) > estimate_tokens(short) + 400
    unset = InferenceItem(id="c", messages=({"role": "user", "content": "hi"},), line=3)
    assert estimate_tokens(unset, default_completion_tokens=256) > 256
