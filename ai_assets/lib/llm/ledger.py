"""The crash-safe record of finished items: an append-only JSONL file of `OutputRow`s.

It is what makes a batch resumable: a rerun loads it, skips ids whose last row succeeded, and
retries the rest. Durability model:

* every row is handed to the kernel with one `write()` on an unbuffered file as soon as the item
  finishes, so a SIGKILLed or OOM-killed process loses nothing it had recorded (page cache survives
  process death);
* `os.fsync` — the expensive part, only needed against power loss or a kernel crash — runs at most
  about once per `fsync_interval_s`, plus on `sync()` and on close. A machine crash can therefore
  lose up to about the last second of rows; those items are simply requested again.

A crash in the middle of a write can leave a torn final line. `load()` ignores a final line that
is not valid JSON, and opening for append truncates it, so the next row starts on a line of its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from ai_assets.lib.llm.items import OutputRow

_ROW_FIELDS = frozenset(f.name for f in dataclasses.fields(OutputRow))


class LedgerCorruptError(ValueError):
    """A line other than the last is not a valid row: not a torn write, so don't guess."""


class ResultLedger:
    """Append-only JSONL ledger of `OutputRow`s; use as a context manager around appends."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.fsync_interval_s = fsync_interval_s
        self._clock = clock
        self._file: BinaryIO | None = None
        self._last_fsync = 0.0
        self._unsynced = False
        self.rows_written = 0

    # --- reading --------------------------------------------------------------------------------

    def load(self) -> dict[str, OutputRow]:
        """Every id's last row (a later row for an id supersedes earlier ones). Missing file: empty."""
        rows: dict[str, OutputRow] = {}
        for row in self._read_rows():
            rows[row.id] = row
        return rows

    def _read_rows(self) -> list[OutputRow]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        # A file ending in "\n" splits into [..., b""]; anything else in the last slot is a line
        # that may have been torn by a crash mid-write.
        rows: list[OutputRow] = []
        last = len(lines) - 1
        for number, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                rows.append(_row_from_json(json.loads(raw)))
            except (ValueError, TypeError, KeyError) as exc:
                if number == last:
                    break  # torn tail from a crash: that item was never durably finished
                raise LedgerCorruptError(f"{self.path}:{number + 1}: not a valid result row ({exc})") from exc
        return rows

    # --- writing --------------------------------------------------------------------------------

    def open(self) -> ResultLedger:
        """Open for appending (idempotent), first repairing a torn final line if there is one."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._repair_tail()
            # buffering=0: each write() is one syscall straight to the kernel, nothing lingers in
            # a user-space buffer that a kill would lose.
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
            self._last_fsync = self._clock()
        return self

    def _repair_tail(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            _row_from_json(json.loads(data[cut:]))
        except (ValueError, TypeError, KeyError):
            with open(self.path, "r+b") as fh:  # torn: drop the fragment
                fh.truncate(cut)
                os.fsync(fh.fileno())
        else:
            with open(self.path, "ab") as fh:  # complete row, only its newline was lost
                fh.write(b"\n")
                os.fsync(fh.fileno())

    def append(self, row: OutputRow) -> None:
        """Record one finished item. Synchronous and short: safe to call from the event loop."""
        if self._file is None:
            raise RuntimeError("ResultLedger is not open; use it as a context manager or call open()")
        line = (json.dumps(dataclasses.asdict(row), ensure_ascii=False, default=str) + "\n").encode("utf-8")
        view = memoryview(line)
        while view:  # a raw write may in principle be partial; finish the line
            written = self._file.write(view)
            view = view[written or 0 :]
        self._file.flush()  # a no-op when unbuffered; kept so a buffered file would still be safe
        self.rows_written += 1
        self._unsynced = True
        if self._clock() - self._last_fsync >= self.fsync_interval_s:
            self.sync()

    def sync(self) -> None:
        """fsync now if anything was written since the last one."""
        if self._file is not None and self._unsynced:
            os.fsync(self._file.fileno())
            self._unsynced = False
        self._last_fsync = self._clock()

    def close(self) -> None:
        if self._file is not None:
            try:
                self.sync()
            finally:
                self._file.close()
                self._file = None

    def __enter__(self) -> ResultLedger:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _row_from_json(obj: Any) -> OutputRow:
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
        raise ValueError("expected a JSON object with a string 'id'")
    # Unknown keys (a newer writer) are dropped rather than failing the resume.
    return OutputRow(**{k: v for k, v in obj.items() if k in _ROW_FIELDS})
