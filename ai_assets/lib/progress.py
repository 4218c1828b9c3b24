"""Progress lines for long work: done/total, rate and ETA, at most every `every_s` seconds."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """Call `advance(n)` as work completes; it logs when `every_s` has passed since the last line.

    The clock is injectable so the cadence is testable without sleeping.
    """

    def __init__(
        self,
        label: str,
        total: int,
        log: Callable[[str], None],
        every_s: float = 10.0,
        unit: str = "items",
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.total, self.log, self.every_s, self.unit = label, total, log, every_s, unit
        self.clock = clock
        self.done = 0
        self.started = clock()
        self._last_log = self.started

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self._last_log >= self.every_s:
            self._last_log = now
            self.log(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now if now is not None else self.clock()) - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            pct = 100.0 * self.done / self.total
            remaining = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta = f"ETA {remaining:.0f} s" if remaining != float("inf") else "ETA unknown"
            return f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.1f}%), {rate:.1f} {self.unit}/s, {eta}"
        return f"{self.label}: {self.done} {self.unit}, {rate:.1f} {self.unit}/s"

    def finish(self) -> None:
        self.log(self.line() + " - done")

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.started
