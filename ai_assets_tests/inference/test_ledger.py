"""ResultLedger: last row wins, torn tails from crashes, fsync throttling, survival of SIGKILL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ai_assets.lib.llm.items import OutputRow
from ai_assets.lib.llm.ledger import LedgerCorruptError, ResultLedger

REPO = Path(__file__).resolve().parents[2]


def test_round_trip_and_last_row_per_id_wins(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.jsonl"
    assert ResultLedger(path).load() == {}
    with ResultLedger(path) as ledger:
        ledger.append(OutputRow(id="a", error="server_error (HTTP 500): boom", attempts=6))
        ledger.append(OutputRow(id="b", output="B", prompt_tokens=3, metadata={"k": [1, "é"]}))
        ledger.append(OutputRow(id="a", output="A", attempts=8, latency_s=0.25))
    rows = ResultLedger(path).load()
    assert set(rows) == {"a", "b"}
    assert rows["a"] == OutputRow(id="a", output="A", attempts=8, latency_s=0.25)
    assert rows["a"].succeeded
    assert rows["b"].metadata == {"k": [1, "é"]}
    assert len(path.read_text(encoding="utf-8").splitlines()) == 3  # append-only


def test_torn_last_line_is_ignored_and_repaired_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with ResultLedger(path) as ledger:
        ledger.append(OutputRow(id="a", output="A"))
        ledger.append(OutputRow(id="b", output="B"))
    with open(path, "ab") as fh:  # a crash mid-write of row "c"
        fh.write(b'{"id": "c", "output": "C", "err')
    assert set(ResultLedger(path).load()) == {"a", "b"}
    with ResultLedger(path) as ledger:  # reopening drops the fragment, so "d" gets its own line
        ledger.append(OutputRow(id="d", output="D"))
    assert set(ResultLedger(path).load()) == {"a", "b", "d"}
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_complete_last_row_missing_only_its_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text('{"id": "a", "output": "A"}\n{"id": "b", "output": "B"}')
    assert set(ResultLedger(path).load()) == {"a", "b"}
    with ResultLedger(path) as ledger:
        ledger.append(OutputRow(id="c", output="C"))
    assert set(ResultLedger(path).load()) == {"a", "b", "c"}


def test_corruption_before_the_last_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text('{"id": "a", "output": "A"}\nnot json\n{"id": "b", "output": "B"}\n')
    with pytest.raises(LedgerCorruptError, match=":2:"):
        ResultLedger(path).load()


def test_unknown_fields_from_a_newer_writer_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text('{"id": "a", "output": "A", "cost_usd": 0.01}\n')
    assert ResultLedger(path).load()["a"].output == "A"


def test_fsync_at_most_once_per_interval_and_on_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    now = [0.0]
    path = tmp_path / "ledger.jsonl"
    ledger = ResultLedger(path, fsync_interval_s=1.0, clock=lambda: now[0])
    with ledger:
        for i in range(100):  # 100 rows within 0.99 s: no fsync yet
            now[0] = i * 0.0099
            ledger.append(OutputRow(id=str(i), output="x"))
        assert synced == []
        assert len(path.read_bytes().splitlines()) == 100  # but every row is already in the file
        now[0] = 1.0
        ledger.append(OutputRow(id="late", output="x"))
        assert len(synced) == 1
        ledger.append(OutputRow(id="last", output="x"))  # within the interval: held back
        assert len(synced) == 1
    assert len(synced) == 2  # close syncs it


def test_rows_written_before_sigkill_survive(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from ai_assets.lib.llm.items import OutputRow
        from ai_assets.lib.llm.ledger import ResultLedger
        ledger = ResultLedger({str(path)!r}, fsync_interval_s=3600).open()
        for i in range(500):
            ledger.append(OutputRow(id=f"item-{{i}}", output="x" * 100))
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no fsync, no interpreter shutdown
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert proc.returncode == -9, proc.stderr.decode()
    rows = ResultLedger(path).load()
    assert len(rows) == 500 and rows["item-499"].output == "x" * 100


def test_append_requires_open(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        ResultLedger(tmp_path / "l.jsonl").append(OutputRow(id="a"))
