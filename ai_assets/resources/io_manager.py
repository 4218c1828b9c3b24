"""The IO manager of the intermediate tables: each output is a Parquet file moved into place, with an
atomically replaced `latest.json` pointer; downstream assets get the same small handle back.
"""

from __future__ import annotations

import json
import os
import shutil
import typing
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from ai_assets.lib.metadata import table_metadata
from ai_assets.lib.tables import ParquetTable, asset_dir, latest_table
from ai_assets.resources.data_folder import DataFolderResource


def staging_path(data_folder: DataFolderResource, context: dg.AssetExecutionContext, name: str) -> Path:
    """A private file for this run's output; the IO manager moves it to its final place."""
    return data_folder.staging_file(context.run.run_id, name)


class ParquetTableIOManager(dg.ConfigurableIOManager):
    """Stores `ParquetTable` outputs under `base_dir/<asset key>[/<partition>]/<run id>.parquet`.

    A `latest.json` pointer names the current file; it is replaced atomically, so a reader never sees a
    half-written table. The previous `keep` files stay for runs still reading them, then are pruned.

    Every stored table is described with the metadata the UI understands: `dagster/row_count` (and
    `dagster/partition_row_count` for a partition) and `dagster/column_schema` from the Parquet footer.

    An input typed `ParquetTable | None` gets None before the upstream's first materialization (for an
    asset that reads the table only in some configurations); any other input fails with the asset named.
    """

    # The data folder (AI_ASSETS_DATA_DIR): tables go to its `tables` folder unless `base_dir` is set.
    data_folder: DataFolderResource
    base_dir: str = ""
    keep: int = 2

    def _base(self) -> Path:
        return Path(self.base_dir).resolve() if self.base_dir else self.data_folder.tables_dir

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
                # Each partition is stored as its own file: its rows are the partition's rows. The schema
                # comes from the footer only, so it costs the same for ten rows or ten million.
                **table_metadata(stored.num_rows, partitioned=partition is not None, schema=pq.read_schema(final)),
                "rows": dg.MetadataValue.int(stored.num_rows),
                "path": dg.MetadataValue.path(str(final)),
                "size_bytes": dg.MetadataValue.int(final.stat().st_size),
            }
        )

    def _prune(self, folder: Path, keep: Path) -> None:
        files = sorted(folder.glob("*.parquet"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in [f for f in files if f != keep][max(self.keep - 1, 0) :]:
            old.unlink(missing_ok=True)

    def load_input(self, context: dg.InputContext) -> ParquetTable | None:
        # Only the small handle is loaded (the `latest.json` pointer): rows are read when, and if, the
        # asset iterates them.
        upstream = context.upstream_output
        assert upstream is not None and upstream.asset_key is not None
        partition = context.asset_partition_key if context.has_asset_partitions else None
        table = latest_table(upstream.asset_key, self._base(), partition)
        if table is None:
            if _accepts_none(context):
                context.log.info(
                    f"{upstream.asset_key.to_user_string()} has no stored table under {self._base()} yet: "
                    f"input {context.name!r} gets None"
                )
                return None
            raise FileNotFoundError(
                f"No stored table for {upstream.asset_key.to_user_string()} under {self._base()}: materialize it first"
            )
        return table


def _accepts_none(context: dg.InputContext) -> bool:
    """Whether the input is declared optional (`ParquetTable | None`)."""
    return type(None) in typing.get_args(context.dagster_type.typing_type)


def _remove_empty_parents(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
