"""Streamed Parquet tables and their IO manager, through real Dagster runs."""

import re
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from ai_assets.lib.tables import ParquetTable, TableWriter, latest_table
from ai_assets.resources.data_folder import DataFolderResource
from ai_assets.resources.io_manager import ParquetTableIOManager, staging_path

SCHEMA = pa.schema([("n", pa.int64()), ("text", pa.string())])


class RowsConfig(dg.Config):
    rows: int


@dg.asset(io_manager_key="table_io_manager")
def numbers(context: dg.AssetExecutionContext, config: RowsConfig, data_folder: DataFolderResource) -> ParquetTable:
    writer = TableWriter(staging_path(data_folder, context, "numbers"), SCHEMA, rows_per_group=100)
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


def run(rows: int, instance: dg.DagsterInstance, data_dir: Path) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [numbers, total],
        instance=instance,
        resources=table_resources(data_dir, keep=2),
        run_config={"ops": {"numbers": {"config": {"rows": rows}}}},
    )


def test_tables_stream_between_assets_and_old_versions_are_pruned(data_dir: Path, instance: dg.DagsterInstance) -> None:
    results = [run(rows, instance, data_dir) for rows in (1000, 10, 500)]
    last = results[-1]
    events = {e.asset_key.to_user_string(): e.materialization.metadata for e in last.get_asset_materialization_events()}
    assert events["total"]["sum"].value == sum(range(500))
    assert events["total"]["batches"].value == 8  # 500 rows in batches of 64
    assert events["numbers"]["rows"].value == 500
    # The standard keys the UI shows for a table: its row count and its Parquet columns.
    assert events["numbers"]["dagster/row_count"].value == 500
    assert "dagster/partition_row_count" not in events["numbers"]
    schema = events["numbers"]["dagster/column_schema"].value
    assert [(c.name, c.type, c.constraints.nullable) for c in schema.columns] == [
        ("n", "int64", True),
        ("text", "string", True),
    ]

    table = latest_table(dg.AssetKey("numbers"), data_dir / "tables")
    assert table is not None and table.num_rows == 500 and table.attrs == {"rows_requested": 500}
    assert table.path.name == f"{last.run_id}.parquet"
    # keep=2: the newest file and the one before it; the first run's file is gone.
    stored = sorted(p.name for p in (data_dir / "tables" / "numbers").glob("*.parquet"))
    assert stored == sorted(f"{r.run_id}.parquet" for r in results[1:])
    assert not (data_dir / "staging" / last.run_id).exists()  # staged files were moved, not copied


def test_data_dir_follows_dagster_home_whatever_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    # Unset AI_ASSETS_DATA_DIR reaches the resource as "" (see `settings.apply_defaults`).
    assert DataFolderResource(path="").root == home / ".data"
    monkeypatch.delenv("DAGSTER_HOME")
    assert DataFolderResource(path="").root == elsewhere / ".data"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    # An explicit setting wins, relative to the current folder.
    assert DataFolderResource(path="mine").root == elsewhere / "mine"
    # The field is read from AI_ASSETS_DATA_DIR when the run starts, not when the resource is built.
    monkeypatch.setenv("AI_ASSETS_DATA_DIR", "first")
    resource = DataFolderResource(path=dg.EnvVar("AI_ASSETS_DATA_DIR"))
    monkeypatch.setenv("AI_ASSETS_DATA_DIR", str(tmp_path / "second"))
    with resource.process_config_and_initialize_cm() as resolved:
        assert resolved.root == tmp_path / "second"
        assert resolved.tables_dir == tmp_path / "second" / "tables"
        assert resolved.staging_file("r1", "t") == tmp_path / "second" / "staging" / "r1" / "t.parquet"
    # A file where the folder should be is refused, naming the variable and the value.
    (tmp_path / "a_file").write_text("")
    refused = f"AI_ASSETS_DATA_DIR={str(tmp_path / 'a_file')!r}: exists and is not a folder"
    with pytest.raises(ValueError, match=re.escape(refused)):
        DataFolderResource(path=str(tmp_path / "a_file")).root  # noqa: B018 - resolving it is the check


def table_resources(data_dir: Path, keep: int = 2) -> dict[str, dg.ConfigurableResource | dg.ConfigurableIOManager]:
    data_folder = DataFolderResource(path=str(data_dir))
    return {"data_folder": data_folder, "table_io_manager": ParquetTableIOManager(data_folder=data_folder, keep=keep)}


@dg.asset
def optional_reader(numbers: ParquetTable | None) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows_seen": -1 if numbers is None else numbers.num_rows})


@dg.asset
def required_reader(numbers: ParquetTable) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows_seen": numbers.num_rows})


def rows_seen(result: dg.ExecuteInProcessResult) -> int:
    (event,) = result.get_asset_materialization_events()
    return event.materialization.metadata["rows_seen"].value


def test_an_input_from_outside_the_run_is_loaded_from_storage_and_may_be_optional(
    data_dir: Path, instance: dg.DagsterInstance
) -> None:
    def read(reader: dg.AssetsDefinition) -> dg.ExecuteInProcessResult:
        # Only the reader runs: `numbers` is loaded from what an earlier run stored, as when one group's
        # job reads another group's table.
        return dg.materialize(
            [numbers, reader],
            selection=[reader],
            instance=instance,
            resources=table_resources(data_dir),
            raise_on_error=False,
        )

    # Before the first materialization: an optional input gets None, a required one fails naming the asset.
    assert rows_seen(read(optional_reader)) == -1
    missing = read(required_reader)
    assert not missing.success
    (failure,) = [e for e in missing.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.to_string()
    assert "FileNotFoundError" in message and "No stored table for numbers" in message

    run(10, instance, data_dir)
    assert rows_seen(read(optional_reader)) == 10
    assert rows_seen(read(required_reader)) == 10


letters = dg.StaticPartitionsDefinition(["a", "b"])


@dg.asset(io_manager_key="table_io_manager", partitions_def=letters)
def lettered(context: dg.AssetExecutionContext, data_folder: DataFolderResource) -> ParquetTable:
    writer = TableWriter(staging_path(data_folder, context, "lettered"), SCHEMA)
    rows = 3 if context.partition_key == "a" else 7
    writer.write_many([{"n": i, "text": context.partition_key} for i in range(rows)])
    return writer.close()


def test_a_partition_reports_its_own_row_count(data_dir: Path, instance: dg.DagsterInstance) -> None:
    for key, expected in (("a", 3), ("b", 7)):
        result = dg.materialize([lettered], partition_key=key, instance=instance, resources=table_resources(data_dir))
        (event,) = result.get_asset_materialization_events()
        meta = event.materialization.metadata
        # Each partition is its own file: its row count is the partition's.
        assert meta["dagster/partition_row_count"].value == meta["dagster/row_count"].value == expected
        assert [c.name for c in meta["dagster/column_schema"].value.columns] == ["n", "text"]
