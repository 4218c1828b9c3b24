"""Streamed Parquet tables and their IO manager, through real Dagster runs."""


from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from ai_assets.lib.tables import ParquetTable, TableWriter, latest_table
from ai_assets.resources.io_manager import ParquetTableIOManager, staging_path

SCHEMA = pa.schema([("n", pa.int64()), ("text", pa.string())])


class RowsConfig(dg.Config):
    rows: int


@dg.asset(io_manager_key="table_io_manager")
def numbers(context: dg.AssetExecutionContext, config: RowsConfig) -> ParquetTable:
    writer = TableWriter(staging_path(context, "numbers"), SCHEMA, rows_per_group=100)
    for i in range(config.rows):
        writer.write({"n": i, "text": f"row {i}"})
    return writer.close(attrs={"rows_requested": config.rows})


@dg.asset(io_manager_key="table_io_manager")
def total(numbers: ParquetTable) -> dg.MaterializeResult:
    # Read back in small batches: a downstream asset never needs the whole table in memory.
    batches = list(numbers.iter_batches(columns=["n"], batch_size=64))
    return dg.MaterializeResult(
        metadata={"sum": sum(sum(b.column("n").to_pylist()) for b in batches), "batches": len(batches)}
    )


def run(rows: int, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [numbers, total],
        instance=instance,
        resources={"table_io_manager": ParquetTableIOManager(keep=2)},
        run_config={"ops": {"numbers": {"config": {"rows": rows}}}},
    )


def test_tables_stream_between_assets_and_old_versions_are_pruned(
    data_dir: Path, instance: dg.DagsterInstance
) -> None:
    results = [run(rows, instance) for rows in (1000, 10, 500)]
    last = results[-1]
    events = {e.asset_key.to_user_string(): e.materialization.metadata for e in last.get_asset_materialization_events()}
    assert events["total"]["sum"].value == sum(range(500))
    assert events["total"]["batches"].value == 8  # 500 rows in batches of 64
    assert events["numbers"]["rows"].value == 500

    table = latest_table(dg.AssetKey("numbers"))
    assert table is not None and table.num_rows == 500 and table.attrs == {"rows_requested": 500}
    assert table.path.name == f"{last.run_id}.parquet"
    # keep=2: the newest file and the one before it; the first run's file is gone.
    stored = sorted(p.name for p in (data_dir / "tables" / "numbers").glob("*.parquet"))
    assert stored == sorted(f"{r.run_id}.parquet" for r in results[1:])
    assert not (data_dir / "staging" / last.run_id).exists()  # staged files were moved, not copied


def test_data_dir_follows_dagster_home_whatever_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ai_assets.lib.tables import data_dir

    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("AI_ASSETS_DATA_DIR", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert data_dir() == home / ".data"
    monkeypatch.delenv("DAGSTER_HOME")
    assert data_dir() == elsewhere / ".data"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("AI_ASSETS_DATA_DIR", "mine")
    assert data_dir() == elsewhere / "mine"  # an explicit setting wins, relative to the current folder
