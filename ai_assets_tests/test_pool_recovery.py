"""A run killed with SIGKILL must not keep its pool slot for ever (issue 7, fault 2).

Unit tests judge worker records against real processes; instance tests sweep real sqlite instances
holding real slots; the end-to-end tests SIGKILL real `dagster` CLI runs (this project's dagster.yaml
in a temporary DAGSTER_HOME) while they hold the `qdrant` slot, and the next run must finish alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import EngineEventData

from ai_assets.run_recovery.__main__ import main as recovery_main
from ai_assets.run_recovery.slots import pool_entries, sweep
from ai_assets.run_recovery.workers import (
    BOOT_ID_KEY,
    HOSTNAME_KEY,
    PID_KEY,
    PID_NS_KEY,
    START_TICKS_KEY,
    HostIdentity,
    ProcessStart,
    RecordedProcess,
    Verdict,
    WorkerRecord,
    judge,
    process_start,
    this_process_record,
    worker_record,
)
from ai_assets_tests.corpora import REPO_ROOT

DAGSTER = str(Path(sys.executable).parent / "dagster")
HOST = HostIdentity(hostname="vm-a", boot_id="boot-1")


def _probe(table: dict[int, ProcessStart | None]):
    return lambda pid: table.get(pid)


# --- judging a worker record ---------------------------------------------------------------------


def test_dead_only_when_every_recorded_process_is_gone_on_this_machine() -> None:
    record = WorkerRecord("vm-a", "boot-1", (RecordedProcess(10, 1000.0, 500), RecordedProcess(11, 1001.0)))
    assert judge(record, HOST, _probe({})).verdict is Verdict.DEAD
    # The step subprocess (no start ticks recorded) still runs: started before it was recorded.
    alive = judge(record, HOST, _probe({11: ProcessStart(ticks=9, epoch_s=999.0)}))
    assert alive.verdict is Verdict.ALIVE and "11" in alive.reason
    # The worker's own pid with its exact start ticks: the same process.
    assert judge(record, HOST, _probe({10: ProcessStart(500, 990.0)})).verdict is Verdict.ALIVE


def test_a_reused_pid_reads_as_gone() -> None:
    record = WorkerRecord("vm-a", "boot-1", (RecordedProcess(10, 1000.0, 500), RecordedProcess(11, 1000.0)))
    # Both pids now belong to processes that started after the run recorded them.
    probe = _probe({10: ProcessStart(9000, 5000.0), 11: ProcessStart(9001, 5000.0)})
    assert judge(record, HOST, probe).verdict is Verdict.DEAD
    # Within the one-second resolution of the boot time, a process is taken for the recorded one.
    near = _probe({11: ProcessStart(9001, 1001.5)})
    assert judge(record, HOST, near).verdict is Verdict.ALIVE


@pytest.mark.parametrize(
    ("record", "host", "words"),
    [
        (WorkerRecord("vm-b", "boot-1", (RecordedProcess(10, 1.0),)), HOST, "host 'vm-b'"),
        (WorkerRecord("vm-a", "boot-0", (RecordedProcess(10, 1.0),)), HOST, "another kernel boot id"),
        (WorkerRecord(None, None, (RecordedProcess(10, 1.0),)), HOST, "no worker host"),
        (WorkerRecord("vm-a", "boot-1", ()), HOST, "no process id"),
        (WorkerRecord("vm-a", "boot-1", (RecordedProcess(10, 1.0),)), HostIdentity("vm-a", None), "/proc"),
        # A container on the same kernel with host networking: same hostname and boot id, other pids.
        (
            WorkerRecord("vm-a", "boot-1", (RecordedProcess(10, 1.0),), pid_namespace="pid:[4026532200]"),
            HostIdentity("vm-a", "boot-1", pid_namespace="pid:[4026531836]"),
            "another PID namespace",
        ),
    ],
)
def test_what_cannot_be_proven_from_here_is_never_dead(record: WorkerRecord, host: HostIdentity, words: str) -> None:
    judgement = judge(record, host, _probe({}))  # no process alive at all, and still not DEAD
    assert judgement.verdict is Verdict.UNKNOWN
    assert words in judgement.reason


def test_a_probe_that_cannot_read_proc_gives_unknown() -> None:
    def failing(pid: int) -> ProcessStart | None:
        raise PermissionError(13, "Permission denied", f"/proc/{pid}/stat")

    record = WorkerRecord("vm-a", "boot-1", (RecordedProcess(10, 1.0),))
    assert judge(record, HOST, failing).verdict is Verdict.UNKNOWN


def test_worker_record_gathers_hosts_and_pids_from_event_metadata() -> None:
    record = worker_record(
        [
            (100.0, {HOSTNAME_KEY: "vm-a", BOOT_ID_KEY: "boot-1", PID_KEY: "10", START_TICKS_KEY: "500"}),
            (101.0, {PID_KEY: "10", "step_keys": "['a']"}),
            (102.0, {PID_KEY: "11"}),
            (103.0, {"steps_interrupted": "[]"}),
            (104.0, {PID_KEY: "not a pid"}),
        ]
    )
    assert (record.hostname, record.boot_id) == ("vm-a", "boot-1")
    assert record.processes == (RecordedProcess(10, 100.0, 500), RecordedProcess(11, 102.0, None))


def test_process_start_tells_live_exited_and_this_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = process_start(child.pid)
        assert started is not None and started.epoch_s <= time.time() + 1
    finally:
        child.kill()
        child.wait()
    assert process_start(child.pid) is None
    me = this_process_record()
    assert me[PID_KEY] == str(os.getpid()) and me[HOSTNAME_KEY] == HostIdentity.current().hostname
    assert process_start(os.getpid()).ticks == int(me[START_TICKS_KEY])


# --- sweeping a real instance --------------------------------------------------------------------


@pytest.fixture
def pool_instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        instance.event_log_storage.set_concurrency_slots("qdrant", 1)
        yield instance


def _started_run(instance: dg.DagsterInstance, worker: dict[str, str] | None) -> dg.DagsterRun:
    """A STARTED run holding the `qdrant` slot, whose worker record is `worker` (None: none)."""
    run = instance.add_run(
        dg.DagsterRun(job_name="holder", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED)
    )
    if worker is not None:
        instance.report_engine_event("Run worker", run, EngineEventData(metadata=worker))
    assert instance.event_log_storage.claim_concurrency_slot("qdrant", run.run_id, "holder").is_claimed
    return run


def _exited_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _local_worker(pid: int) -> dict[str, str]:
    host = HostIdentity.current()
    return {
        HOSTNAME_KEY: host.hostname,
        BOOT_ID_KEY: str(host.boot_id),
        PID_NS_KEY: str(host.pid_namespace),
        PID_KEY: str(pid),
    }


def _holders(instance: dg.DagsterInstance) -> list[str]:
    return [slot.run_id for slot in instance.event_log_storage.get_concurrency_info("qdrant").claimed_slots]


def test_sweep_frees_a_dead_local_run_with_an_engine_event(pool_instance: dg.DagsterInstance) -> None:
    dead = _started_run(pool_instance, _local_worker(_exited_pid()))
    waiting_run_id = str(uuid.uuid4())
    assert not pool_instance.event_log_storage.claim_concurrency_slot("qdrant", waiting_run_id, "next").is_claimed

    outcomes = sweep(pool_instance, current_run_id=waiting_run_id)

    assert [(o.run_id, o.judgement.verdict, o.freed) for o in outcomes] == [(dead.run_id, Verdict.DEAD, True)]
    assert pool_instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    messages = [e.message for e in pool_instance.all_logs(dead.run_id)]
    assert sum("The run worker died without reporting" in m for m in messages) == 2  # engine event + failure
    assert _holders(pool_instance) == []
    # The freed slot went to the step that waited for it.
    assert pool_instance.event_log_storage.claim_concurrency_slot("qdrant", waiting_run_id, "next").is_claimed


def test_sweep_never_frees_a_live_or_unjudgeable_run(pool_instance: dg.DagsterInstance, tmp_path: Path) -> None:
    pool_instance.event_log_storage.set_concurrency_slots("qdrant", 3)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        alive = _started_run(pool_instance, _local_worker(live.pid))
        elsewhere = _started_run(pool_instance, {**_local_worker(_exited_pid()), HOSTNAME_KEY: "another-host"})
        unrecorded = _started_run(pool_instance, None)
        outcomes = {o.run_id: o for o in sweep(pool_instance, current_run_id=None)}
        assert outcomes[alive.run_id].judgement.verdict is Verdict.ALIVE
        assert outcomes[elsewhere.run_id].judgement.verdict is Verdict.UNKNOWN
        assert outcomes[unrecorded.run_id].judgement.verdict is Verdict.UNKNOWN
        assert not any(o.freed for o in outcomes.values())
        assert sorted(_holders(pool_instance)) == sorted([alive.run_id, elsewhere.run_id, unrecorded.run_id])
        for run in (alive, elsewhere, unrecorded):
            assert pool_instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    finally:
        live.kill()
        live.wait()
    # Once its process is gone, the local run is freed; the other host's run still is not.
    outcomes = {o.run_id: o for o in sweep(pool_instance, current_run_id=None)}
    assert outcomes[alive.run_id].freed and not outcomes[elsewhere.run_id].freed
    assert sorted(_holders(pool_instance)) == sorted([elsewhere.run_id, unrecorded.run_id])


def test_free_by_hand_releases_a_run_of_another_host(
    pool_instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = _started_run(pool_instance, {**_local_worker(1), HOSTNAME_KEY: "another-host"})
    monkeypatch.setattr(dg.DagsterInstance, "get", staticmethod(lambda: _NonClosing(pool_instance)))
    assert recovery_main([]) == 0
    assert "left alone" in capsys.readouterr().out and _holders(pool_instance) == [elsewhere.run_id]
    assert recovery_main(["--free", elsewhere.run_id]) == 0
    assert _holders(pool_instance) == []
    assert pool_instance.get_run_by_id(elsewhere.run_id).status == dg.DagsterRunStatus.FAILURE
    assert recovery_main(["--free", "no-such-run"]) == 2
    assert "no such run" in capsys.readouterr().err


class _NonClosing:
    """The test's instance as `DagsterInstance.get()` returns it, without closing it on exit."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance

    def __enter__(self) -> dg.DagsterInstance:
        return self.instance

    def __exit__(self, *exc: object) -> None:
        return None


# --- real CLI runs, SIGKILLed while they hold the slot -------------------------------------------


@pytest.fixture
def project_home(tmp_path: Path) -> dict[str, str]:
    """A DAGSTER_HOME with this project's dagster.yaml, and the pool holder's control folder."""
    home, control = tmp_path / "dagster_home", tmp_path / "control"
    home.mkdir()
    control.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "POOL_HOLDER_DIR": str(control),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }


HOLDER = ["-m", "ai_assets_tests.pool_holder_defs"]
COMMANDS = {
    "asset materialize (multiprocess)": ["asset", "materialize", *HOLDER, "--select", "pool_holder"],
    "job execute (in process)": ["job", "execute", *HOLDER, "-j", "hold_in_process"],
}


def _start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [DAGSTER, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: SIGKILL reaches the step subprocesses too
    )  # fmt: skip


def _finish(proc: subprocess.Popen, limit_s: float = 420) -> str:
    """The run's output once it exits; a run still blocked after `limit_s` is a deadlock: kill, fail."""
    try:
        out, _ = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the run never finished (deadlocked on the pool?):\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    return out


def _wait_for(condition, what: str, proc: subprocess.Popen, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run exited before {what}:\n{proc.stdout.read()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"never saw {what}")
        time.sleep(0.1)


def _holding(env: dict[str, str]) -> list[str]:
    return [p.name.removeprefix("holding-") for p in Path(env["POOL_HOLDER_DIR"]).glob("holding-*")]


def _kill_holding_run(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Start a run, SIGKILL its whole process group once it holds the slot; its run id."""
    proc = _start(args, env, cwd)
    _wait_for(lambda: _holding(env), "the run holding the slot", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    [run_id] = _holding(env)
    return run_id


def _instance(env: dict[str, str]) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(env["DAGSTER_HOME"])


def _assert_recovered(env: dict[str, str], killed: str) -> None:
    with _instance(env) as instance:
        assert instance.get_run_by_id(killed).status == dg.DagsterRunStatus.FAILURE
        messages = [e.message for e in instance.all_logs(killed)]
        assert sum("The run worker died without reporting" in m for m in messages) == 2
        assert pool_entries(instance) == {}, "a slot or a waiting step is left behind"
        runs = instance.get_runs()
        assert [r.status for r in runs if r.run_id != killed] == [dg.DagsterRunStatus.SUCCESS]
        [rerun] = [r for r in runs if r.run_id != killed]
        freed = [e.message for e in instance.all_logs(rerun.run_id) if f"run {killed}" in (e.message or "")]
        assert len(freed) == 1 and "marked failed and freed its slots" in freed[0]


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_next_cli_run_frees_the_slot_of_a_sigkilled_run(
    command: str, project_home: dict[str, str], tmp_path: Path
) -> None:
    args, env = COMMANDS[command], project_home
    killed = _kill_holding_run(args, env, tmp_path)
    with _instance(env) as instance:  # the deadlock's cause: a STARTED run holds the only slot
        assert instance.get_run_by_id(killed).status == dg.DagsterRunStatus.STARTED
        assert _holders(instance) == [killed]

    (Path(env["POOL_HOLDER_DIR"]) / "release").touch()
    _finish(_start(args, env, tmp_path))
    _assert_recovered(env, killed)


@pytest.mark.slow
def test_a_run_already_waiting_takes_the_slot_when_its_holder_is_killed(
    project_home: dict[str, str], tmp_path: Path
) -> None:
    env, args = project_home, COMMANDS["asset materialize (multiprocess)"]
    holder = _start(args, env, tmp_path)
    _wait_for(lambda: _holding(env), "the first run holding the slot", holder)
    [killed] = _holding(env)
    waiting = _start(args, env, tmp_path)

    def second_run_waits() -> bool:
        with _instance(env) as instance:
            return any(
                entry.unassigned for run_id, pools in pool_entries(instance).items() if run_id != killed
                for entry in pools.values()
            )  # fmt: skip

    _wait_for(second_run_waits, "the second run waiting for the slot", waiting)
    # A sweep while the holder lives leaves it alone.
    with _instance(env) as instance:
        [outcome] = sweep(instance, current_run_id=None, entries={killed: pool_entries(instance)[killed]})
        assert outcome.judgement.verdict is Verdict.ALIVE and not outcome.freed
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    (Path(env["POOL_HOLDER_DIR"]) / "release").touch()
    _finish(waiting)
    _assert_recovered(env, killed)
