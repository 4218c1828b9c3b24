from ai_assets.lib.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_logs_at_most_every_interval_with_rate_and_eta() -> None:
    clock, lines = FakeClock(), []
    progress = Progress("embedding", 1000, lines.append, every_s=10, unit="chunks", clock=clock)
    clock.now += 5
    progress.advance(100)
    assert lines == []  # 5 s in: too early for a line
    clock.now += 5
    progress.advance(100)
    assert lines == ["embedding: 200/1000 chunks (20.0%), 20.0 chunks/s, ETA 40 s"]
    clock.now += 3
    progress.advance(10)
    assert len(lines) == 1
    progress.finish()
    assert lines[-1].startswith("embedding: 210/1000 chunks (21.0%)") and lines[-1].endswith("- done")


def test_unknown_total_reports_count_and_rate() -> None:
    clock, lines = FakeClock(), []
    progress = Progress("reading", 0, lines.append, every_s=1, clock=clock)
    clock.now += 2
    progress.advance(7)
    assert lines == ["reading: 7 items, 3.5 items/s"]
