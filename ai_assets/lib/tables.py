"""Where intermediate data lives: streamed Parquet tables, kept by an IO manager.

Assets between sources and the vector store can hold 100k+ documents, so nothing here is one pickled
list: an asset streams rows into a staged Parquet file (`TableWriter`), returns the small `ParquetTable`
handle, and `ParquetTableIOManager` (in `resources/io_manager.py`) moves the file into place and hands
downstream assets the same handle, which they read back batch by batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from ai_assets.lib import settings


def resolve_data_dir(configured: str = "") -> Path:
    """The project's data folder (Qdrant files, tables, caches, inference files): `configured` (the
    data-folder resource's `path`, from AI_ASSETS_DATA_DIR) when set; else `.data` inside
    `DAGSTER_HOME` (the instance's folder), else inside the current folder.

    Anchored to DAGSTER_HOME so that a command started from another folder, the code server and the
    run workers of one instance all find the same data, as they find the same run storage. Resolved
    each time it is asked for, in the process that asks (a run worker, a sensor evaluation).
    """
    if configured.strip():
        return Path(settings.parse("AI_ASSETS_DATA_DIR", configured.strip())).expanduser().resolve()
    home = os.environ.get("DAGSTER_HOME", "").strip()  # Dagster's own variable, not a setting of ours
    return (Path(home).expanduser() / ".data").resolve() if home else Path(".data").resolve()


@dataclass(frozen=True)
class ParquetTable:
    """A handle on a Parquet file: what assets pass to each other instead of the rows themselves."""

    path: Path
    num_rows: int
    # Small facts about how the rows were made (settings fingerprints, failed sources), as JSON values.
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def iter_batches(self, columns: Sequence[str] | None = None, batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
        if self.num_rows == 0:
            return
        # No pre-buffering: it reads a whole row group's columns ahead (~100 MB of chunk text at 16,000
        # rows a group), which buys nothing on a local disk and would be most of a step's Arrow memory.
        yield from pq.ParquetFile(self.path, pre_buffer=False).iter_batches(
            batch_size=batch_size, columns=list(columns) if columns else None
        )

    def iter_rows(self, columns: Sequence[str] | None = None, batch_size: int = 8192) -> Iterator[dict[str, Any]]:
        for batch in self.iter_batches(columns, batch_size):
            yield from batch.to_pylist()

    def read_columns(self, columns: Sequence[str]) -> pa.Table:
        """Whole columns at once: only for narrow columns (ids, hashes), never for text."""
        if self.num_rows == 0:
            return pa.table({c: pa.array([], type=pa.string()) for c in columns})
        return pq.read_table(self.path, columns=list(columns))

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "num_rows": self.num_rows, "attrs": dict(self.attrs)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ParquetTable:
        return cls(Path(data["path"]), int(data["num_rows"]), dict(data.get("attrs", {})))


class TableWriter:
    """Streams rows into a Parquet file in row groups, so memory stays bounded by one buffer."""

    def __init__(self, path: Path, schema: pa.Schema, rows_per_group: int = 4096):
        self.path = path
        self.schema = schema
        self.rows_per_group = rows_per_group
        self._buffer: list[dict[str, Any]] = []
        self._num_rows = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(path, schema, compression="zstd")

    def write(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.rows_per_group:
            self._flush()

    def write_many(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            self.write(row)

    def write_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Rows already in Arrow form (e.g. reused from an earlier table), written without a Python
        object per row; buffered rows go first so the order is kept."""
        if batch.num_rows == 0:
            return
        self._flush()
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        self._writer.write_table(table.select(self.schema.names).cast(self.schema))
        self._num_rows += table.num_rows

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
            self._num_rows += len(self._buffer)
            self._buffer = []

    def close(self, attrs: Mapping[str, Any] | None = None) -> ParquetTable:
        self._flush()
        self._writer.close()
        return ParquetTable(self.path, self._num_rows, dict(attrs or {}))

    def abort(self) -> None:
        self._writer.close()
        self.path.unlink(missing_ok=True)


def asset_dir(base_dir: Path, asset_key: dg.AssetKey, partition_key: str | None) -> Path:
    folder = base_dir.joinpath(*asset_key.path)
    return folder / partition_key if partition_key else folder


def latest_table(asset_key: dg.AssetKey, base_dir: Path, partition_key: str | None = None) -> ParquetTable | None:
    """The most recent stored output of an asset under `base_dir` (the tables folder of the data
    folder), or None before its first materialization."""
    pointer = asset_dir(base_dir, asset_key, partition_key) / "latest.json"
    if not pointer.exists():
        return None
    table = ParquetTable.from_json(json.loads(pointer.read_text()))
    return table if table.path.exists() else None
