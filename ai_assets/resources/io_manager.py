"""The IO manager of the intermediate tables: each output is a Parquet file moved into place, with an
atomically replaced `latest.json` pointer; downstream assets get the same small handle back.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg

from ai_assets.lib.tables import ParquetTable, asset_dir, data_dir, latest_table


def staging_path(context: dg.AssetExecutionContext, name: str) -> Path:
    """A private file for this run's output; the IO manager moves it to its final place."""
    return data_dir() / "staging" / context.run.run_id / f"{name}.parquet"



class ParquetTableIOManager(dg.ConfigurableIOManager):
    """Stores `ParquetTable` outputs under `base_dir/<asset key>[/<partition>]/<run id>.parquet`.

    A `latest.json` pointer names the current file; it is replaced atomically, so a reader never sees a
    half-written table. The previous `keep` files stay for runs still reading them, then are pruned.
    """

    base_dir: str = ""
    keep: int = 2

    def _base(self) -> Path:
        return Path(self.base_dir).resolve() if self.base_dir else data_dir() / "tables"

    def handle_output(self, context: dg.OutputContext, obj: ParquetTable) -> None:
        if not isinstance(obj, ParquetTable):
            raise TypeError(
                f"{context.asset_key.to_user_string()} returned {type(obj).__name__}; "
                "ParquetTableIOManager stores ParquetTable handles"
            )
        partition = context.partition_key if context.has_partition_key else None
        folder = asset_dir(self._base(), context.asset_key, partition)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{context.run_id}.parquet"
        if obj.path.resolve() != final:
            shutil.move(str(obj.path), final)
            _remove_empty_parents(obj.path.parent)
        stored = ParquetTable(final, obj.num_rows, obj.attrs)
        tmp = folder / "latest.json.tmp"
        tmp.write_text(json.dumps(stored.to_json()))
        os.replace(tmp, folder / "latest.json")
        self._prune(folder, keep=final)
        context.add_output_metadata(
            {
                "rows": dg.MetadataValue.int(stored.num_rows),
                "path": dg.MetadataValue.path(str(final)),
                "size_bytes": dg.MetadataValue.int(final.stat().st_size),
            }
        )

    def _prune(self, folder: Path, keep: Path) -> None:
        files = sorted(folder.glob("*.parquet"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in [f for f in files if f != keep][max(self.keep - 1, 0) :]:
            old.unlink(missing_ok=True)

    def load_input(self, context: dg.InputContext) -> ParquetTable:
        upstream = context.upstream_output
        assert upstream is not None and upstream.asset_key is not None
        partition = context.asset_partition_key if context.has_asset_partitions else None
        table = latest_table(upstream.asset_key, self._base(), partition)
        if table is None:
            raise FileNotFoundError(
                f"No stored table for {upstream.asset_key.to_user_string()} under {self._base()}: "
                "materialize it first"
            )
        return table


def _remove_empty_parents(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
