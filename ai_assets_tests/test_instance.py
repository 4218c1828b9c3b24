"""The Dagster instance of dagster.yaml, and what the code location asks of it (issue 7, faults 2 and 9)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.automation_condition_sensor_definition import AutomationConditionSensorDefinition

from ai_assets.run_recovery.executor import recovers_pool_slots
from ai_assets_tests.corpora import REPO_ROOT

DAGSTER = str(Path(sys.executable).parent / "dagster")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "dagster_home"
    folder.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", folder / "dagster.yaml")
    return folder


def test_dagster_yaml_frees_the_slots_of_dead_runs(home: Path) -> None:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # The monitoring daemon runs under `dagster dev` and frees the slots of runs that ended.
        assert instance.run_monitoring_enabled
        assert "MONITORING" in instance.get_required_daemon_types()
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        # The default run launcher cannot resume a run: anything else stops the instance from loading.
        assert instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_retries_enabled and not instance.run_retries_retry_on_asset_or_op_failure
        assert instance.event_log_storage.supports_global_concurrency_limits
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


def test_storage_lands_in_dagster_home_whatever_the_current_folder(home: Path, tmp_path: Path) -> None:
    elsewhere, control = tmp_path / "elsewhere", tmp_path / "control"
    elsewhere.mkdir()
    control.mkdir()
    (control / "release").touch()  # the pool holder returns at once
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "POOL_HOLDER_DIR": str(control),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [DAGSTER, "asset", "materialize", "-m", "ai_assets_tests.pool_holder_defs", "--select", "pool_holder"],
        env=env, cwd=elsewhere, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert list(elsewhere.iterdir()) == [], "the run wrote into the folder it was started from"
    assert (home / "history" / "runs.db").is_file()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert [run.status for run in instance.get_runs()] == [dg.DagsterRunStatus.SUCCESS]


@pytest.fixture(scope="module")
def repository() -> dg.RepositoryDefinition:
    from ai_assets.definitions import defs

    return defs.get_repository_def()


def test_automation_conditions_are_evaluated_out_of_the_box(repository: dg.RepositoryDefinition) -> None:
    sensors = [s for s in repository.sensor_defs if isinstance(s, AutomationConditionSensorDefinition)]
    running = [s for s in sensors if s.default_status == dg.DefaultSensorStatus.RUNNING]
    # Dagster adds a STOPPED `default_automation_condition_sensor` for assets no sensor covers.
    assert sensors == running, [s.name for s in sensors if s not in running]
    covered = set().union(*(s.asset_selection.resolve(repository.asset_graph) for s in running))
    automated = {
        key for key in repository.asset_graph.get_all_asset_keys()
        if repository.asset_graph.get(key).automation_condition is not None
    }  # fmt: skip
    assert dg.AssetKey("rag_quality_metrics") in automated
    assert automated <= covered, sorted(k.to_user_string() for k in automated - covered)


def test_every_job_recovers_the_pool_slots_of_dead_runs(repository: dg.RepositoryDefinition) -> None:
    jobs = repository.get_all_jobs()
    assert {"rag_ingestion", "batch_inference", "rag_evaluation"} <= {job.name for job in jobs}
    assert [job.name for job in jobs if not recovers_pool_slots(job.executor_def)] == []


def test_run_monitoring_can_check_this_code_location_s_workers(home: Path) -> None:
    from dagster._core.launcher.base import WorkerStatus

    from ai_assets.run_recovery.launcher import WorkerCheckingRunLauncher

    with dg.DagsterInstance.from_config(str(home)) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, WorkerCheckingRunLauncher) and launcher.supports_check_run_worker_health
        # Run monitoring fails every run whose worker is not reported RUNNING: a run that has not
        # recorded its worker yet (or ran elsewhere) cannot be judged, and must be left alone.
        run = instance.create_run_for_job(dg.GraphDefinition("nothing").to_job())
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
