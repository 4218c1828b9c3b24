"""The automation as deployed: a real `dagster-daemon` (and `dagster-webserver`) on this project's
dagster.yaml in a temporary DAGSTER_HOME, doing what the README promises (issue 12, part 2).

One deployment is shared by the module (starting it costs two code-location loads): the production code
location plus a test-only one (`daemon_defs`: steps that hold a production pool for as long as a test
says). Every test observes only the instance, as the UI does: runs, ticks, materializations, pool slots.
Each test sets up what it needs itself, so any one of them passes alone (`-k`). Every wait polls and
fails with the daemon's and the webserver's log tails.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import dagster as dg
import pytest
import yaml
from dagster._core.scheduler.instigation import InstigatorTick, InstigatorType, ScheduleInstigatorData, TickStatus

from ai_assets.run_recovery.slots import pool_entries
from ai_assets_tests import daemon_defs
from ai_assets_tests.corpora import REPO_ROOT
from ai_assets_tests.dagster_processes import (
    WORKSPACE,
    DagsterProcess,
    graphql,
    make_dagster_home,
    process_env,
    start_daemon,
    start_webserver,
    wait_for,
)
from ai_assets_tests.inference.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.slow

T = TypeVar("T")
PRODUCTION = "ai_assets"
HOLDERS = "daemon_test_holders"
SAMPLE_CORPUS = REPO_ROOT / "ai_assets" / "data" / "sample_corpus"

LAUNCH = """
mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message }
  ... on RunConfigValidationInvalid { errors { message } }
} }
"""
RUN_STATUS = "query Run($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"


def _group_pids(pgid: int) -> list[int]:
    """Every live process of process group `pgid` (the daemon's: its code servers and run workers)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@dataclass
class Deployment:
    """The daemon and webserver of one DAGSTER_HOME, with the folders their code locations read."""

    home: Path
    env: dict[str, str]
    workspace: Path
    control: Path
    sources: Path
    inbox: Path
    outputs: Path
    daemon: DagsterProcess | None = None
    webserver: DagsterProcess | None = None
    port: int = 0
    instances: list[dg.DagsterInstance] = field(default_factory=list)
    crashed: list[DagsterProcess] = field(default_factory=list)

    # --- processes -----------------------------------------------------------------------------

    def start(self, *, webserver: bool = True) -> None:
        """The daemon, and the webserver loading at the same time (each spawns its own code servers)."""
        if not webserver:
            self.daemon = start_daemon(self.home, self.env, workspace=self.workspace)
            return
        with ThreadPoolExecutor(1) as pool:
            web = pool.submit(start_webserver, self.home, self.env, with_daemon=False, workspace=self.workspace)
            self.daemon = start_daemon(self.home, self.env, workspace=self.workspace)
            self.webserver, self.port = web.result()

    def crash(self, spare: tuple[int, ...] = (), *, webserver: bool = True) -> None:
        """SIGKILL the daemon (and the webserver) with their code servers, as a host restart of those
        services would; run workers in `spare` keep running, as they do where workers are not children
        of the daemon's service (systemd `KillMode=process`, a container per run)."""
        for process in (self.daemon, *([self.webserver] if webserver else [])):
            assert process is not None
            for pid in _group_pids(process.proc.pid):
                if pid not in spare:
                    os.kill(pid, signal.SIGKILL)
            process.proc.wait(30)
            # Its group (and log file) is closed in stop(), once the spared workers are done.
            self.crashed.append(process)

    def stop(self) -> None:
        for process in (self.daemon, self.webserver, *self.crashed):
            if process is not None:
                process.stop()
        for instance in self.instances:
            instance.dispose()

    def tail(self) -> str:
        return "\n".join(p.tail(3000) for p in (self.daemon, self.webserver) if p is not None)

    def wait(self, condition: Callable[[], T], what: str, timeout_s: float = 120) -> T:
        """Poll `condition`; on timeout, fail with both services' log tails."""

        def checked() -> T:
            for process in (self.daemon, self.webserver):
                assert process is not None
                process.check_alive()
            return condition()

        return wait_for(checked, what, timeout_s, 1.0, self.tail)

    # --- what the instance records -------------------------------------------------------------

    @property
    def instance(self) -> dg.DagsterInstance:
        """The instance as the UI reads it (a fresh handle per test would only reload the same sqlite)."""
        if not self.instances:
            self.instances.append(dg.DagsterInstance.from_config(str(self.home)))
        return self.instances[0]

    def ticks(self, name: str, kind: InstigatorType) -> list[InstigatorTick]:
        """The ticks of one sensor or schedule, newest first ([] before the daemon first evaluates it)."""
        for state in self.instance.all_instigator_state(instigator_type=kind):
            if state.instigator_name == name:
                return list(self.instance.get_ticks(state.instigator_origin_id, state.selector_id))
        return []

    def run(self, run_id: str) -> dg.DagsterRun:
        return self.instance.get_run_by_id(run_id)

    def runs(self, job: str, **tags: str) -> list[dg.DagsterRun]:
        return list(self.instance.get_runs(filters=dg.RunsFilter(job_name=job, tags=tags)))

    def finished(self, run_id: str, timeout_s: float = 180) -> dg.DagsterRun:
        """Wait for a run to end and return it; fails on anything but SUCCESS, with the run's errors."""
        run = self.wait(lambda: (r := self.run(run_id)) and r.is_finished and r, f"run {run_id} to end", timeout_s)
        if run.status != dg.DagsterRunStatus.SUCCESS:
            errors = [
                e.message for e in self.instance.all_logs(run_id) if e.is_dagster_event and e.dagster_event.is_failure
            ]
            pytest.fail(f"run {run_id} of {run.job_name} ended {run.status}: {errors}\n{self.tail()}")
        return run

    def settle(self) -> None:
        """Wait until no run is queued or in flight, so that a crash kills only the runs a test started
        (an earlier test's ingestion may still be re-scored by the automation sensor)."""
        statuses = [
            dg.DagsterRunStatus.QUEUED,
            dg.DagsterRunStatus.NOT_STARTED,
            dg.DagsterRunStatus.STARTING,
            dg.DagsterRunStatus.STARTED,
        ]
        self.wait(lambda: not self.instance.get_runs(filters=dg.RunsFilter(statuses=statuses)), "runs to end", 300)

    def launch(self, job: str, location: str = HOLDERS) -> str:
        """Launch a job as the UI's Launch button does: queued, then started by the daemon."""
        params = {"selector": {"repositoryLocationName": location, "repositoryName": "__repository__", "jobName": job}}
        result = graphql(self.port, LAUNCH, {"params": params})["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    # --- the pool holders ----------------------------------------------------------------------

    def holding(self, run_id: str) -> int | None:
        """The pid of the run worker whose step holds its pool slot, once it does."""
        path = self.control / f"holding-{run_id}"
        return int(path.read_text()) if path.exists() and path.read_text() else None

    def release(self, run_id: str) -> None:
        (self.control / f"release-{run_id}").touch()


def _workspace(folder: Path) -> Path:
    """The production workspace.yaml (its code location exactly), plus the pool-holder location."""
    production = yaml.safe_load(WORKSPACE.read_text())
    for entry in production["load_from"]:
        entry["python_module"]["working_directory"] = str(REPO_ROOT)
    production["load_from"].append(
        {
            "python_module": {
                "module_name": daemon_defs.__name__,
                "location_name": HOLDERS,
                "working_directory": str(REPO_ROOT),
            }
        }
    )
    path = folder / "workspace.yaml"
    path.write_text(yaml.safe_dump(production))
    return path


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, openai_server: FakeOpenAIServer) -> Iterator[Deployment]:
    """This project's dagster.yaml unchanged, the bundled sample corpus as the one local source (its
    golden set then scores above the quality thresholds), the LLM on the local fake OpenAI server."""
    root = tmp_path_factory.mktemp("daemon")
    sources = root / "sources" / "sample_corpus"
    shutil.copytree(SAMPLE_CORPUS, sources)
    folders = {name: root / name for name in ("control", "inbox", "data")}
    for folder in folders.values():
        folder.mkdir()
    home = make_dagster_home(root / "dagster_home")
    env = process_env(
        home,
        AI_ASSETS_DATA_DIR=str(folders["data"]),
        AI_ASSETS_SOURCES=f"sample_corpus={sources}",
        AI_ASSETS_INFERENCE_INBOX=str(folders["inbox"]),
        OPENAI_BASE_URL=openai_server.base_url,
        OPENAI_API_KEY="sk-daemon-test",
        OPENAI_MODEL="fake-model",
        # Retrieval metrics only: answer metrics need minutes of LLM answers and prove nothing here.
        RAG_EVAL_MAX_ANSWERED="0",
        DAEMON_TEST_CONTROL=str(folders["control"]),
        # Whatever the developer's shell says: the schedule test computes 01:00 in UTC, and the index
        # must be the embedded one in AI_ASSETS_DATA_DIR, not a server.
        AI_ASSETS_TIMEZONE="UTC",
        QDRANT_URL="",
        QDRANT_PATH="",
    )
    deployment = Deployment(
        home=home,
        env=env,
        workspace=_workspace(root),
        control=folders["control"],
        sources=sources,
        inbox=folders["inbox"],
        outputs=folders["data"] / "inference" / "outputs",
    )
    try:
        # Create the sqlite storage before two processes race to create (and migrate) it at once.
        assert not deployment.instance.get_runs()
        deployment.start()
        yield deployment
    finally:
        (deployment.control / "release-all").touch()  # no holder outlives the module
        deployment.stop()


# --- the deployment is the production one ---------------------------------------------------------


def test_the_deployment_runs_the_production_instance_config(deployment: Deployment) -> None:
    """Nothing below relies on a test-only instance setting, and the pools the holders take are the
    ones production steps declare."""
    assert (deployment.home / "dagster.yaml").read_text() == (REPO_ROOT / "dagster.yaml").read_text()
    instance = deployment.instance
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    pools = instance.get_concurrency_config().pool_config
    assert (pools.default_pool_limit, pools.pool_granularity.value) == (1, "op")
    assert (instance.run_retries_enabled, instance.run_retries_max_retries) == (True, 2)

    from ai_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    declared = {pool for key in graph.get_all_asset_keys() for pool in (graph.get(key).pools or ())}
    assert declared == set(daemon_defs.POOLS)


# --- pools ---------------------------------------------------------------------------------------


def test_each_pool_admits_one_step_at_a_time(deployment: Deployment) -> None:
    """Three runs hold the three pools at once (each pool has its own slot). Meanwhile the queued run
    coordinator keeps in the queue a run whose first step needs a full pool (as batch_inference), and
    a run whose pooled step comes after an unpooled one (as rag_ingestion) starts, its pooled step
    waiting in the worker. Each gets the slot only once its holder lets go, one after the other."""
    pools = daemon_defs.POOLS
    first = {pool: deployment.launch(daemon_defs.job_name(pool)) for pool in pools}
    for pool, run_id in first.items():
        deployment.wait(lambda run_id=run_id: deployment.holding(run_id), f"the first {pool} run to hold the slot")
    queued = {pool: deployment.launch(daemon_defs.job_name(pool)) for pool in pools}
    # One such run, not three: with the three holders it makes dagster.yaml's max_concurrent_runs (4).
    stepping = deployment.launch(daemon_defs.job_name("qdrant", warm_up=True))

    def step_waits() -> bool:
        waiting = pool_entries(deployment.instance).get(stepping, {}).get("qdrant")
        return bool(waiting and waiting.unassigned)

    deployment.wait(step_waits, "the warm-up run's qdrant step waiting for the slot")
    assert deployment.run(stepping).status == dg.DagsterRunStatus.STARTED
    for pool in pools:
        # The daemon dequeued `stepping`, launched after these, and left these in the queue.
        assert deployment.run(queued[pool]).status == dg.DagsterRunStatus.QUEUED, pool
        holders = deployment.instance.event_log_storage.get_concurrency_info(pool).claimed_slots
        assert [slot.run_id for slot in holders] == [first[pool]], pool

    waiting = {pool: [queued[pool]] for pool in pools}
    waiting["qdrant"].append(stepping)
    for pool in pools:
        deployment.release(first[pool])
    # Each waiting run takes its pool's freed slot, in either order, never two together.
    for pool in pools:
        while waiting[pool]:
            now = deployment.wait(
                lambda pool=pool: [r for r in waiting[pool] if deployment.holding(r)],
                f"a waiting {pool} run to take the freed slot",
            )
            assert len(now) == 1, f"two runs held the {pool} slot at once: {now}"
            deployment.release(now[0])
            waiting[pool].remove(now[0])

    for pool in pools:
        steps = []
        for run_id in (first[pool], queued[pool], *([stepping] if pool == "qdrant" else [])):
            deployment.finished(run_id)
            times = {
                e.dagster_event_type: e.timestamp
                for e in deployment.instance.all_logs(run_id)
                if e.is_dagster_event and e.step_key == daemon_defs.holder_name(pool)
            }
            steps.append((times[dg.DagsterEventType.STEP_START], times[dg.DagsterEventType.STEP_SUCCESS]))
        # From the event log: the pooled steps ran one after another, never overlapping.
        steps.sort()
        assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(steps)), (pool, steps)


# --- sensors -------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """Appear at once: the sensor must never see half a file."""
    partial = path.with_suffix(".partial")
    partial.write_text("".join(json.dumps(row) + "\n" for row in rows))
    partial.rename(path)


def test_inbox_sensor_launches_one_run_per_new_file(deployment: Deployment) -> None:
    sensor = "inference_inbox_sensor"
    names = [f"daemon-{os.getpid()}-{letter}.jsonl" for letter in "ab"]
    for name in names:
        _write_jsonl(deployment.inbox / name, [{"id": f"{name}-{i}", "prompt": f"Say {i}"} for i in range(3)])
    written = time.time()

    def requesting_tick() -> InstigatorTick | None:
        ticks = [t for t in deployment.ticks(sensor, InstigatorType.SENSOR) if t.timestamp > written]
        return next((t for t in ticks if t.run_ids), None)

    tick = deployment.wait(requesting_tick, f"a {sensor} tick after the files appeared", 90)
    assert len(tick.run_ids) == 2
    runs = [deployment.finished(run_id) for run_id in tick.run_ids]
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(names)
    for name in names:
        answers = (deployment.outputs / f"{name}.outputs.jsonl").read_text().splitlines()
        assert [json.loads(line)["id"] for line in answers] == [f"{name}-{i}" for i in range(3)]

    # The next evaluation sees the same files: it skips, and no third run appears.
    later = deployment.wait(
        lambda: next(
            (
                t
                for t in deployment.ticks(sensor, InstigatorType.SENSOR)
                if t.timestamp > tick.timestamp and t.status != TickStatus.STARTED
            ),
            None,
        ),
        f"the {sensor} tick after the one that requested runs",
        90,
    )
    assert later.status == TickStatus.SKIPPED and not later.run_ids, later
    for name in names:
        assert len(deployment.runs("batch_inference", **{"dagster/partition": name})) == 1


def materializations(deployment: Deployment, partition: str) -> list:
    records = deployment.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("inference_outputs"), asset_partitions=[partition]), limit=10
    ).records
    return list(records)


def test_a_batch_api_file_is_submitted_then_collected_by_the_batch_sensor(
    deployment: Deployment, openai_server: FakeOpenAIServer
) -> None:
    name = f"daemon-{os.getpid()}-cheap.jsonl"
    ids = [f"{name}-{i}" for i in range(4)]
    (deployment.inbox / f"{name}.mode").write_text("batch_api\n")  # the file's own choice, before the file
    _write_jsonl(deployment.inbox / name, [{"id": i, "prompt": f"[id:{i}] Say it"} for i in ids])

    # inference_inbox_sensor's run uploads the file as a batch and ends without materializing.
    (first,) = deployment.wait(
        lambda: deployment.runs("batch_inference", **{"dagster/partition": name}), "the inbox sensor's run", 90
    )
    deployment.finished(first.run_id)
    (batch,) = [b for b in openai_server.batches.values() if b.metadata.get("ai_assets_partition") == name]
    assert batch.custom_ids == ids
    assert not materializations(deployment, name)

    # inference_batch_sensor finds the batch done and requests the run that collects it.
    sensor = {"dagster/sensor_name": "inference_batch_sensor", "dagster/partition": name}
    (second,) = deployment.wait(lambda: deployment.runs("batch_inference", **sensor), "the batch sensor's run", 150)
    deployment.finished(second.run_id)
    answers = [json.loads(line) for line in (deployment.outputs / f"{name}.outputs.jsonl").read_text().splitlines()]
    assert [a["id"] for a in answers] == ids and {a["batch_id"] for a in answers} == {batch.id}
    (record,) = materializations(deployment, name)
    assert record.run_id == second.run_id
    metadata = record.asset_materialization.metadata
    assert metadata["mode"].value == "batch_api" and metadata["succeeded"].value == 4
    assert openai_server.batch_requests_for(ids[0]) == 1


def test_source_change_sensor_skips_unchanged_sources_and_runs_on_a_change(deployment: Deployment) -> None:
    sensor = "source_change_sensor"
    # The first evaluation records the sources' state; a later one, with nothing changed, skips.
    skipped = deployment.wait(
        lambda: next(
            (t for t in deployment.ticks(sensor, InstigatorType.SENSOR) if t.skip_reason == "No local source changed"),
            None,
        ),
        f"a {sensor} tick that found nothing changed",
        150,
    )
    assert skipped.status == TickStatus.SKIPPED and not skipped.run_ids
    before = {r.run_id for r in deployment.runs("rag_ingestion", **{"dagster/sensor_name": sensor})}

    page = next(deployment.sources.rglob("*.md"))
    page.write_text(page.read_text() + "\n\nA paragraph added by the daemon test.\n")
    changed = time.time()

    tick = deployment.wait(
        lambda: next(
            (t for t in deployment.ticks(sensor, InstigatorType.SENSOR) if t.timestamp > changed and t.run_ids), None
        ),
        f"a {sensor} tick requesting a run after the change",
        150,
    )
    [run_id] = tick.run_ids
    assert run_id not in before
    run = deployment.finished(run_id, 300)
    assert run.job_name == "rag_ingestion" and run.tags["changed_sources"] == "sample_corpus"


def _latest_materialization(deployment: Deployment, asset: str) -> dg.EventLogRecord | None:
    records = deployment.instance.fetch_materializations(dg.AssetKey(asset), limit=1).records
    return records[0] if records else None


def test_new_embeddings_make_the_automation_sensor_rescore(deployment: Deployment) -> None:
    """After a run materializes document_embeddings, `rag_quality_automation` (on by default) requests
    rag_quality_metrics, and that run scores the new index."""
    embeddings = _latest_materialization(deployment, "document_embeddings")
    if embeddings is None:  # alone (-k): index first, as a user would from the UI
        deployment.finished(deployment.launch("rag_ingestion", PRODUCTION), 300)
        embeddings = _latest_materialization(deployment, "document_embeddings")
    assert embeddings is not None

    def scored_after() -> dg.EventLogRecord | None:
        metrics = _latest_materialization(deployment, "rag_quality_metrics")
        return metrics if metrics and metrics.timestamp > embeddings.timestamp else None

    metrics = deployment.wait(scored_after, "rag_quality_metrics materialized after the new embeddings", 300)
    run = deployment.finished(metrics.run_id)
    assert run.tags.get("dagster/sensor_name") == "rag_quality_automation", run.tags
    assert deployment.instance.get_run_record_by_id(run.run_id).create_timestamp.timestamp() > embeddings.timestamp
    values = metrics.asset_materialization.metadata
    assert values["ndcg_at_10"].value > 0.5, values


# --- schedules and restarts ----------------------------------------------------------------------


def _last_due(cron_hour: int, now: datetime.datetime) -> datetime.datetime:
    """The last HH:00 UTC at or before `now`."""
    due = now.replace(hour=cron_hour, minute=0, second=0, microsecond=0)
    return due if due <= now else due - datetime.timedelta(days=1)


def test_a_nightly_tick_missed_while_the_daemon_was_down_runs_when_it_restarts(deployment: Deployment) -> None:
    """The real `nightly_rag_refresh` (`0 1 * * *`, UTC by default), its real cron and timezone: the
    daemon's memory of when it last looked for due ticks is set back to before the last 01:00, as if
    it had been down since then; on restart it launches exactly that tick, and no other schedule's.

    A schedule cannot be made due on demand: Dagster 1.13 has no "launch a tick now" (the UI's *Test
    schedule* is a dry run, which launches nothing), and a test-only copy with `* * * * *` would test
    Dagster, not this schedule."""
    schedule = "nightly_rag_refresh"
    deployment.wait(
        lambda: any(s.instigator_name == schedule for s in deployment.instance.all_instigator_state()),
        f"the daemon to record {schedule}'s state",
    )
    other_ticks = {
        name: len(deployment.ticks(name, InstigatorType.SCHEDULE))
        for name in ("daily_rag_evaluation", "weekly_fine_tune", "weekly_llm_fine_tune")
    }
    deployment.settle()
    deployment.crash(webserver=False)
    [state] = [s for s in deployment.instance.all_instigator_state() if s.instigator_name == schedule]
    assert state.instigator_data.cron_schedule == "0 1 * * *"
    due = _last_due(1, datetime.datetime.now(datetime.UTC))
    looked = (due - datetime.timedelta(minutes=30)).timestamp()
    deployment.instance.update_instigator_state(
        state.with_data(
            ScheduleInstigatorData(state.instigator_data.cron_schedule, looked, last_iteration_timestamp=looked)
        )
    )
    deployment.start(webserver=False)

    tick = deployment.wait(
        lambda: next((t for t in deployment.ticks(schedule, InstigatorType.SCHEDULE) if t.run_ids), None),
        f"{schedule}'s catch-up tick",
        120,
    )
    assert tick.timestamp == due.timestamp() and tick.status == TickStatus.SUCCESS
    [run_id] = tick.run_ids
    run = deployment.finished(run_id, 300)
    assert run.job_name == "rag_ingestion" and run.tags["dagster/schedule_name"] == schedule
    assert {name: len(deployment.ticks(name, InstigatorType.SCHEDULE)) for name in other_ticks} == other_ticks, (
        "a schedule that was not due ticked"
    )


def test_restarting_the_daemon_and_webserver_mid_run(deployment: Deployment) -> None:
    """Two runs are in flight when the daemon and the webserver go down: one's worker survives the
    restart and its outcome is recorded (SUCCESS); the other's worker dies with them. After the restart
    the monitoring daemon asks dagster.yaml's run launcher (ai_assets.run_recovery.launcher) about the
    STARTED run, which proves its worker dead: the run is marked FAILURE, its gpu slot is freed, and
    run_retries re-launches it, once; the retry takes the slot and succeeds."""
    deployment.settle()
    survivor = deployment.launch(daemon_defs.job_name("openai-api"))
    victim = deployment.launch(daemon_defs.job_name("gpu"))
    survivor_pid = deployment.wait(lambda: deployment.holding(survivor), "the surviving run to hold its slot")
    deployment.wait(lambda: deployment.holding(victim), "the doomed run to hold its slot")

    deployment.crash(spare=(survivor_pid,))
    assert deployment.run(victim).status == dg.DagsterRunStatus.STARTED
    deployment.start()

    deployment.release(survivor)
    deployment.finished(survivor)
    assert graphql(deployment.port, RUN_STATUS, {"id": survivor})["runOrError"]["status"] == "SUCCESS"
    assert not deployment.runs(daemon_defs.job_name("openai-api"), **{"dagster/parent_run_id": survivor})

    deployment.wait(
        lambda: deployment.run(victim).status == dg.DagsterRunStatus.FAILURE,
        "the monitoring daemon to mark the dead worker's run FAILURE",
    )
    assert any(
        "The run worker died without reporting" in (e.message or "") for e in deployment.instance.all_logs(victim)
    )
    retry = deployment.wait(
        lambda: deployment.runs(daemon_defs.job_name("gpu"), **{"dagster/parent_run_id": victim}),
        "run_retries to re-launch the failed run",
    )
    [retry_run] = retry
    assert retry_run.tags["dagster/retry_number"] == "1"
    deployment.wait(lambda: deployment.holding(retry_run.run_id), "the retry to take the freed gpu slot")
    deployment.release(retry_run.run_id)
    deployment.finished(retry_run.run_id)
