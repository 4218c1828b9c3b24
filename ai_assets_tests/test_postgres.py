"""The production instance config, deploy/dagster.postgres.yaml, against a real PostgreSQL server (issue 12).

One throwaway server on 127.0.0.1 serves the whole session (ai_assets_tests/postgres.py); each test gets a
database of its own. Dagster is driven as a user drives it: its CLI and `dagster-daemon` in subprocesses,
with the config file copied to a private DAGSTER_HOME and the connection settings in the environment.

This module is also the code location of the daemon in the outage test (`defs` below): a sensor whose
every tick requests one run with the run key `tick-<n>`, n counted in its cursor, so that a tick lost,
repeated or run twice shows in the run keys.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.scheduler.instigation import InstigatorTick, InstigatorType, TickStatus

from ai_assets_tests import postgres
from ai_assets_tests.corpora import REPO_ROOT, scifact_records, write_markdown_corpus
from ai_assets_tests.dagster_processes import DagsterProcess, free_port, make_dagster_home, process_env, wait_for

BIN = Path(sys.executable).parent
PRODUCTION_CONFIG = REPO_ROOT / "deploy" / "dagster.postgres.yaml"
STORAGE_KEYS = {"storage", "run_storage", "event_log_storage", "schedule_storage"}
SETTINGS = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")


# --- The daemon's code location in the outage test -------------------------------------------------


@dg.op
def tick_op() -> None:
    """Nothing: the run only has to exist, start and end."""


# One process per run: the runs are many and the machine has two cores.
@dg.job(executor_def=dg.in_process_executor)
def tick_job() -> None:
    tick_op()


@dg.sensor(job=tick_job, minimum_interval_seconds=2, default_status=dg.DefaultSensorStatus.RUNNING)
def tick_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Tick n requests run `tick-<n>` and moves the cursor to n: a tick whose cursor was not saved asks
    again for the same key, which Dagster must not run twice."""
    n = int(context.cursor or 0) + 1
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"tick-{n}")], cursor=str(n))


defs = dg.Definitions(jobs=[tick_job], sensors=[tick_sensor])


# --- Fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def server() -> Iterator[postgres.PostgresServer]:
    """One server for the session. Its folder is a fresh one under /tmp, not pytest's tmp_path: as root
    the server runs as `postgres`, which cannot enter root's private pytest folders."""
    folder = Path(tempfile.mkdtemp(prefix="ai_assets_pg_"))
    pg = postgres.PostgresServer(folder, free_port())
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        if (folder / "data").exists():
            pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class PgHome:
    """A DAGSTER_HOME holding the production config, and the environment of a process that uses it."""

    home: Path
    env: dict[str, str]
    database: str
    server: postgres.PostgresServer

    def instance(self) -> dg.DagsterInstance:
        """A fresh instance each time: one opened before an outage would hold dead connections."""
        return dg.DagsterInstance.from_config(str(self.home))

    def sql(self, query: str) -> list[list[str]]:
        return [line.split("|") for line in self.server.psql(query, self.database).splitlines()]


@pytest.fixture
def pg_home(
    server: postgres.PostgresServer, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> PgHome:
    """A database of its own for each test, and the variables set here too, for `instance()`."""
    database = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:60]
    server.create_database(database)
    home = make_dagster_home(tmp_path / "dagster_home", config=PRODUCTION_CONFIG.read_text())
    settings = server.env(database)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return PgHome(home, process_env(home, **settings), database, server)


def dagster(args: list[str], env: dict[str, str], timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "dagster"), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout_s)  # fmt: skip


# --- The config -------------------------------------------------------------------------------------


def test_production_config_equals_dagster_yaml_apart_from_storage() -> None:
    production = yaml.safe_load(PRODUCTION_CONFIG.read_text())
    local = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    assert {k: v for k, v in production.items() if k not in STORAGE_KEYS} == {
        k: v for k, v in local.items() if k not in STORAGE_KEYS
    }, "deploy/dagster.postgres.yaml and dagster.yaml differ outside storage: change both"
    # Every connection setting comes from the environment: the file holds no host, user or secret.
    db = production["run_storage"]["config"]["postgres_db"]
    assert {db[field]["env"] for field in ("hostname", "port", "username", "password", "db_name")} == set(SETTINGS)
    assert production["event_log_storage"]["config"] == production["schedule_storage"]["config"] == {"postgres_db": db}


def test_missing_server_binaries_fail_with_the_install_command(tmp_path: Path) -> None:
    # An AssertionError, so a test that needs the server fails (never skips) on a machine without it.
    with pytest.raises(AssertionError, match=r"bash \.ci/system-packages"):
        postgres.bin_dir(tmp_path)


def test_instance_on_postgres_shares_pool_slots(pg_home: PgHome) -> None:
    with pg_home.instance() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        storage = instance.event_log_storage
        assert type(storage).__name__ == "PostgresEventLogStorage"
        assert storage.supports_global_concurrency_limits
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_monitoring_enabled and instance.run_retries_enabled

    # A limit set with the CLI, as the README says, is a row in PostgreSQL that another process sees.
    result = dagster(["instance", "concurrency", "set", "qdrant", "2"], pg_home.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert pg_home.sql("select count(*) from concurrency_slots where concurrency_key = 'qdrant'") == [["2"]]
    with pg_home.instance() as instance:
        storage = instance.event_log_storage
        claims = [storage.claim_concurrency_slot("qdrant", run, "step") for run in ("run-a", "run-b", "run-c")]
        assert [c.is_claimed for c in claims] == [True, True, False], "a third step got a slot of a pool of 2"
        storage.free_concurrency_slots_for_run("run-a")
        assert storage.claim_concurrency_slot("qdrant", "run-c", "step").is_claimed
    holders = pg_home.sql("select run_id from concurrency_slots where concurrency_key = 'qdrant' order by run_id")
    assert holders == [["run-b"], ["run-c"]]


# --- A real materialization -------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_materialization_is_recorded_in_postgres(pg_home: PgHome, tmp_path: Path) -> None:
    write_markdown_corpus(tmp_path / "docs", scifact_records(3, offset=500))
    env = {
        **pg_home.env,
        "AI_ASSETS_SOURCES": f"docs={tmp_path / 'docs'}",
        "AI_ASSETS_DATA_DIR": str(tmp_path / "data"),
    }
    result = dagster(["asset", "materialize", "-m", "ai_assets.definitions", "--select", "group:ingestion"], env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    with pg_home.instance() as instance:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        for asset, key, expected in (
            ("raw_documents", "documents", 3),
            ("document_chunks", "documents", 3),
            ("document_embeddings", "documents_added", 3),
        ):
            event = instance.get_latest_materialization_event(dg.AssetKey(asset))
            assert event is not None and event.run_id == run.run_id, f"no materialization of {asset}"
            metadata = event.asset_materialization.metadata
            assert metadata[key].value == expected, f"{asset}: {key} = {metadata.get(key)}"
        evaluations = [
            record.event_log_entry.dagster_event.asset_check_evaluation_data
            for record in instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
            ).records
        ]
    results = {evaluation.check_name: evaluation.passed for evaluation in evaluations}
    expected_checks = {"chunk_ids_unique", "chunks_not_empty", "point_count_matches_chunks", "smoke_retrieval"}
    assert expected_checks <= set(results), f"check results recorded: {sorted(results)}"
    assert all(results.values()), f"failed checks: {[name for name, ok in results.items() if not ok]}"

    # The records are PostgreSQL rows, not a sqlite file that happened to be written under DAGSTER_HOME.
    assert not list(pg_home.home.glob("**/*.db")), "sqlite storage under DAGSTER_HOME"
    assert pg_home.sql("select status from runs") == [["SUCCESS"]]
    [[materializations]] = pg_home.sql(
        "select count(*) from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION'"
    )
    assert int(materializations) >= 3
    statuses = dict(map(tuple, pg_home.sql("select check_name, execution_status from asset_check_executions")))
    assert {name: statuses.get(name) for name in expected_checks} == dict.fromkeys(expected_checks, "SUCCEEDED")
    # The steps of the `qdrant` pool took their slot in PostgreSQL and gave it back.
    assert pg_home.sql("select run_id from concurrency_slots where concurrency_key = 'qdrant'") == [[""]]


# --- Faults -----------------------------------------------------------------------------------------


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[-1] if lines else ""


def test_wrong_password_at_start_names_user_and_password(pg_home: PgHome) -> None:
    env = {**pg_home.env, "DAGSTER_PG_PASSWORD": "not-the-password"}
    result = subprocess.run([str(BIN / "dagster-daemon"), "run", "-m", __name__], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    message = last_line(result)
    assert result.returncode != 0, message
    # The last line is what a user reads: the server tried, the cause, the variables to fix.
    assert "refused the user name or password" in message, (result.stdout + result.stderr)[-3000:]
    assert "DAGSTER_PG_USER" in message and "DAGSTER_PG_PASSWORD" in message, message
    assert f"127.0.0.1:{pg_home.server.port}" in message and "not-the-password" not in message, message


def test_unreachable_server_at_start_names_host_and_port(pg_home: PgHome) -> None:
    env = {**pg_home.env, "DAGSTER_PG_PORT": str(free_port())}  # nothing listens there
    result = subprocess.run([str(BIN / "dagster"), "dev", "-m", __name__, "-p", str(free_port())], env=env,
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)  # fmt: skip
    message = last_line(result)
    assert result.returncode != 0, message
    assert "could not be reached" in message, (result.stdout + result.stderr)[-3000:]
    assert "DAGSTER_PG_HOST" in message and "DAGSTER_PG_PORT" in message, message
    assert "DAGSTER_PG_PASSWORD" not in message, "names a setting that cannot be the cause"


OUTAGE_S = 10
# Dagster retries each statement's connection with a backoff and the daemon restarts its code server:
# measured 30 s from the restart to the first tick, on a loaded 2-core machine.
RECOVERY_LIMIT_S = 120


def sensor_ticks(pg: PgHome) -> list[InstigatorTick]:
    """The tick_sensor's ticks, oldest first; empty while the daemon has not ticked yet."""
    with pg.instance() as instance:
        states = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                  if s.instigator_name == "tick_sensor"]  # fmt: skip
        if not states:
            return []
        return list(reversed(instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id, limit=500)))


@pytest.mark.slow
def test_daemon_keeps_ticking_after_a_database_outage(pg_home: PgHome) -> None:
    log = pg_home.home / "daemon.log"
    daemon = DagsterProcess([str(BIN / "dagster-daemon"), "run", "-m", __name__], pg_home.env, log)

    def describe() -> str:
        return f"{daemon.tail()}\n{pg_home.server.log_tail(1500)}"

    def successes_after(since: float, count: int) -> bool:
        daemon.check_alive()
        ticks = [t for t in sensor_ticks(pg_home) if t.status == TickStatus.SUCCESS and t.timestamp > since]
        return len(ticks) >= count

    try:
        wait_for(lambda: successes_after(0, 3), "three sensor ticks", 180, 1.0, describe)
        stopped_at = time.time()
        pg_home.server.stop()
        try:
            time.sleep(OUTAGE_S)
            daemon.check_alive()
        finally:
            pg_home.server.start()
        restarted_at = time.time()

        def recovered() -> bool:
            if not successes_after(restarted_at, 3):
                return False
            with pg_home.instance() as instance:
                beats = instance.get_daemon_heartbeats()
                required = instance.get_required_daemon_types()
                fresh = all(kind in beats and beats[kind].timestamp > restarted_at for kind in required)
                # The run queue and the launcher are back too, not only the sensor.
                later = instance.get_runs(dg.RunsFilter(
                    job_name="tick_job", statuses=[dg.DagsterRunStatus.SUCCESS],
                    created_after=datetime.fromtimestamp(restarted_at, UTC),
                ))  # fmt: skip
            return fresh and bool(later)

        wait_for(recovered, "ticks, heartbeats and a successful run after the restart", RECOVERY_LIMIT_S, 2.0, describe)
        daemon.check_alive()
    finally:
        daemon.stop()

    ticks = sensor_ticks(pg_home)
    successes = [t for t in ticks if t.status == TickStatus.SUCCESS]
    with pg_home.instance() as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="tick_job"))
    keys = [run.tags["dagster/run_key"] for run in runs]
    # No tick ran twice, none is missing: the keys are tick-1 … tick-n, each once.
    assert len(keys) == len(set(keys)), f"duplicate runs: {sorted(k for k in keys if keys.count(k) > 1)}"
    numbers = sorted(int(key.removeprefix("tick-")) for key in keys)
    assert numbers == list(range(1, len(numbers) + 1)), f"run keys with a gap: {numbers}"
    # Each run comes from a tick that succeeded; only the newest may belong to the tick the stop cut short.
    requested = {key for tick in successes for key in tick.run_keys}
    assert requested <= set(keys), f"a tick's run request has no run: {sorted(requested - set(keys))}"
    assert set(keys) - requested <= {f"tick-{len(numbers)}"}, f"runs of no tick: {sorted(set(keys) - requested)}"
    # Ticks stop only for the outage: a regular cadence before and after it, and a bounded gap across it.
    times = [t.timestamp for t in successes]
    gaps = [(a, b) for a, b in zip(times, times[1:], strict=False)]
    across = [(a, b) for a, b in gaps if a < restarted_at and b > stopped_at]
    assert len(across) == 1 and across[0][1] - restarted_at < RECOVERY_LIMIT_S, across
    regular = [b - a for a, b in gaps if (a, b) not in across]
    # Every 2 s asked; about 5 s measured, 60 s allowed for a machine loaded by other test runs.
    assert max(regular) < 60, f"ticks stalled outside the outage: {regular}"


# --- The documented command for local use -----------------------------------------------------------


def test_dev_command_starts_a_server_the_production_config_uses(tmp_path: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="ai_assets_pg_cli_"))
    command = [sys.executable, "-m", "ai_assets_tests.postgres"]
    port = str(free_port())
    try:
        started = subprocess.run([*command, "start", "--dir", str(folder), "--port", port], cwd=REPO_ROOT,
                                 capture_output=True, text=True, timeout=120)  # fmt: skip
        assert started.returncode == 0, started.stderr
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", started.stdout, re.M))
        assert set(exports) == set(SETTINGS) and exports["DAGSTER_PG_PORT"] == port, started.stdout
        home = make_dagster_home(tmp_path / "home", config=PRODUCTION_CONFIG.read_text())
        result = dagster(["instance", "info"], process_env(home, **exports), timeout_s=120)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        assert "PostgresRunStorage" in result.stdout or "postgres_storage" in result.stdout, result.stdout[-2000:]
    finally:
        subprocess.run([*command, "stop", "--dir", str(folder)], cwd=REPO_ROOT, capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
    assert not os.path.exists(folder)
