"""Client-side pacing: requests-per-minute and tokens-per-minute token buckets.

Staying under the provider's limits is cheaper than bouncing off them: every 429 costs a round trip
and a backoff. The buckets refill continuously and hold at most `burst_s` seconds' worth of budget,
because providers enforce per-minute limits over short windows (60 RPM is often 1 request/s), so a
full minute's burst at start-up would be rejected.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

from ai_assets.lib.llm.items import InferenceItem


class _Bucket:
    """One continuously refilling bucket. The level may go negative ("debt") — see `wait_for`."""

    def __init__(self, per_minute: float, burst_s: float, now: float) -> None:
        if not per_minute > 0:
            raise ValueError(f"a per-minute limit must be > 0 (or None for unlimited), got {per_minute}")
        self.rate_per_s = per_minute / 60.0
        self.capacity = self.rate_per_s * burst_s
        self.level = self.capacity  # start full: the first burst goes out at once
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate_per_s)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` may be taken.

        A request larger than the bucket (a 3,000-token prompt under a 1-second burst of 1,000
        tokens) only waits for a full bucket and then drives the level negative; later requests wait
        out that debt. That keeps the long-run rate exact without deadlocking on big items.
        """
        need = min(amount, self.capacity)
        # The slack absorbs float rounding: after sleeping exactly the computed wait, the refilled
        # level can land a hair short of `need`, and a 1e-16 s sleep would not advance the clock.
        return 0.0 if self.level + 1e-9 >= need else (need - self.level) / self.rate_per_s


class RateLimiter:
    """Async limiter over requests/minute and tokens/minute; None means that dimension is unlimited.

    Waiters are served first-come first-served (asyncio.Lock is FIFO), so a large item cannot be
    starved by a stream of small ones. `clock` and `sleep` are injectable so tests need not wait.
    """

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        burst_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not burst_s > 0:
            raise ValueError(f"burst_s must be > 0, got {burst_s}")
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self._requests = _Bucket(requests_per_minute, burst_s, now) if requests_per_minute is not None else None
        self._tokens = _Bucket(tokens_per_minute, burst_s, now) if tokens_per_minute is not None else None
        self._lock = asyncio.Lock()
        self.waited_s = 0.0  # total time callers spent waiting here: shows whether limits bind

    @property
    def unlimited(self) -> bool:
        return self._requests is None and self._tokens is None

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request carrying about `tokens` tokens may be sent, then take the budget."""
        if self.unlimited:
            return
        async with self._lock:
            while True:
                now = self._clock()
                wait = 0.0
                for bucket, amount in ((self._requests, 1.0), (self._tokens, float(tokens))):
                    if bucket is not None:
                        bucket.refill(now)
                        wait = max(wait, bucket.wait_for(amount))
                if wait <= 0.0:
                    if self._requests is not None:
                        self._requests.level -= 1.0
                    if self._tokens is not None:
                        self._tokens.level -= tokens
                    return
                # Sleeping while holding the lock is deliberate: it keeps the queue FIFO.
                await self._sleep(wait)
                self.waited_s += wait

    def adjust_tokens(self, delta: int) -> None:
        """Correct the token bucket once real usage is known: +delta refunds, -delta charges more."""
        if self._tokens is not None:
            self._tokens.refill(self._clock())
            self._tokens.level = min(self._tokens.capacity, self._tokens.level + delta)


def estimate_tokens(item: InferenceItem, default_completion_tokens: int = 256) -> int:
    """A cheap upper-ish estimate of the tokens one request will be charged, before sending it.

    ~4 characters per token over the serialised messages (no tokenizer dependency; models differ
    anyway), plus `max_tokens` — which is what OpenAI itself charges against TPM up front — or
    `default_completion_tokens` when the item sets none. The engine refunds the difference from the
    response's `usage` afterwards, so the estimate only shapes short-term pacing.
    """
    prompt_chars = len(json.dumps(item.messages, ensure_ascii=False, default=str))
    completion = item.max_tokens if item.max_tokens is not None else default_completion_tokens
    return prompt_chars // 4 + 1 + completion
