"""Free the concurrency-pool slots of runs whose worker is provably dead, and mark those runs failed.

Dagster frees a step's pool slot when the process orchestrating the run sees the step end. A run
killed with SIGKILL never does: its slot stays claimed, the run stays STARTED, and every later step of
the pool (`qdrant`, `openai-api`) waits behind it for ever. The daemon's run monitoring frees the slots
of runs that *ended* (`free_slots_after_run_end_seconds` in dagster.yaml), but no daemon runs behind
`dagster job execute` / `dagster asset materialize`, and the default run launcher cannot tell that a
STARTED run's worker died. So each run of this code location sweeps before it claims slots (and while
it waits for one): every other run in the pools' tables whose worker is provably dead on this machine
(`workers.judge`) gets an engine event saying why, is marked failed, and loses its slots. A holder
that cannot be judged from here (another host) is left alone, and `blocked_by_unjudgeable` says which
command frees it by hand.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import dagster as dg
from dagster._core.events import DagsterEventType, EngineEventData, JobFailureData, RunFailureReason

from ai_assets.run_recovery.workers import (
    HostIdentity,
    Judgement,
    ProcessStart,
    Verdict,
    WorkerRecord,
    judge,
    process_start,
    worker_record,
)

# The events that carry a pid: the worker's record and Dagster's own (run worker, multiprocess parent),
# and each step subprocess of the multiprocess executor, which outlives a SIGKILL of its parent alone.
PID_EVENT_TYPES = {
    DagsterEventType.ENGINE_EVENT,
    DagsterEventType.STEP_WORKER_STARTING,
    DagsterEventType.STEP_WORKER_STARTED,
}


@dataclass(frozen=True)
class PoolEntry:
    """A run's place in one pool: slots it holds and steps of it waiting (assigned or not)."""

    held: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    unassigned: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What a sweep decided about one other run found in the pools' tables."""

    run_id: str
    status: str
    pools: tuple[str, ...]
    judgement: Judgement
    freed: bool

    def line(self) -> str:
        action = "marked failed and freed its slots" if self.freed else "left alone"
        return f"run {self.run_id} ({self.status}, pools {', '.join(self.pools)}): {action}: {self.judgement.reason}"


def free_command(run_id: str) -> str:
    """The exact command that frees a run's slots by hand, for this DAGSTER_HOME."""
    home = os.environ.get("DAGSTER_HOME", "")
    prefix = f"DAGSTER_HOME={shlex.quote(home)} " if home else ""
    return f"{prefix}{shlex.quote(sys.executable)} -m ai_assets.run_recovery --free {run_id}"


def pool_entries(instance: dg.DagsterInstance) -> dict[str, dict[str, PoolEntry]]:
    """run id -> pool -> that run's slots and waiting steps, from the instance's concurrency tables."""
    storage = instance.event_log_storage
    keys = sorted(storage.get_concurrency_keys())
    held: dict[tuple[str, str], list[str]] = defaultdict(list)
    waiting: dict[tuple[str, str], list[str]] = defaultdict(list)
    unassigned: dict[tuple[str, str], list[str]] = defaultdict(list)
    for key, info in storage.get_concurrency_infos(keys).items():
        for slot in info.claimed_slots:
            held[(slot.run_id, key)].append(slot.step_key)
        for pending in info.pending_steps:
            waiting[(pending.run_id, key)].append(pending.step_key)
            if pending.assigned_timestamp is None:
                unassigned[(pending.run_id, key)].append(pending.step_key)
    entries: dict[str, dict[str, PoolEntry]] = defaultdict(dict)
    for run_id, key in {*held, *waiting}:
        entries[run_id][key] = PoolEntry(
            held=tuple(held[(run_id, key)]),
            waiting=tuple(waiting[(run_id, key)]),
            unassigned=tuple(unassigned[(run_id, key)]),
        )
    # Pending steps left in a pool whose limit row was since removed still hold their queue place.
    for run_id in storage.get_concurrency_run_ids():
        entries.setdefault(run_id, {})
    return dict(entries)


def read_worker_record(instance: dg.DagsterInstance, run_id: str) -> WorkerRecord:
    """The worker record of `run_id`, from the pids and hosts its engine events carry."""
    events = []
    for entry in instance.all_logs(run_id, of_type=PID_EVENT_TYPES):
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        metadata = getattr(data, "metadata", None) or {}
        events.append((entry.timestamp, {k: str(getattr(v, "value", v)) for k, v in metadata.items()}))
    return worker_record(events)


def _ended_before(record: dg.RunRecord | None, seconds: int | None) -> bool:
    """Whether a finished run ended over `seconds` ago (the daemon's rule for freeing its slots)."""
    if record is None or not seconds or record.end_time is None:
        return False
    return record.end_time + seconds < time.time()


def fail_and_free(instance: dg.DagsterInstance, run_id: str, message: str, freed_by: str) -> None:
    """Mark `run_id` failed (unless it already ended) with an engine event carrying `message`, then
    free its slots and pending steps, which hands them to the next waiting step."""
    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished:
        instance.report_engine_event(message, run, EngineEventData(metadata={"freed_by": freed_by}))
        instance.report_run_failed(
            run, message, JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION)
        )
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def sweep(
    instance: dg.DagsterInstance,
    current_run_id: str | None,
    host: HostIdentity | None = None,
    probe: Callable[[int], ProcessStart | None] = process_start,
    entries: Mapping[str, Mapping[str, PoolEntry]] | None = None,
) -> list[Outcome]:
    """Judge every other run in the pools' tables; fail and free those provably dead (see module)."""
    if not instance.event_log_storage.supports_global_concurrency_limits:
        return []
    host = host or HostIdentity.current()
    entries = pool_entries(instance) if entries is None else entries
    after_end_s = instance.run_monitoring_settings.get("free_slots_after_run_end_seconds")
    freed_by = f"Run {current_run_id}" if current_run_id else "ai_assets.run_recovery"
    outcomes = []
    for run_id, pools in sorted(entries.items()):
        if run_id == current_run_id:
            continue
        record = instance.get_run_record_by_id(run_id)
        status = record.dagster_run.status.value if record else "DELETED"
        judgement = judge(read_worker_record(instance, run_id), host, probe)
        freed = judgement.verdict is Verdict.DEAD
        if not freed and record is not None and record.dagster_run.is_finished:
            # What the daemon would do after free_slots_after_run_end_seconds, done without a daemon.
            freed = judgement.verdict is Verdict.UNKNOWN and _ended_before(record, after_end_s)
        if freed:
            by = f"{freed_by} (on {host.hostname!r})"
            message = (
                f"The run worker died without reporting (SIGKILL, out of memory or a crash): "
                f"{judgement.reason}. {by} marked the run failed and freed its concurrency-pool slots."
            )
            fail_and_free(instance, run_id, message, by)
        outcomes.append(Outcome(run_id, status, tuple(sorted(pools)), judgement, freed))
    return outcomes


def blocked_by_unjudgeable(
    instance: dg.DagsterInstance,
    current_run_id: str,
    host: HostIdentity | None = None,
    entries: Mapping[str, Mapping[str, PoolEntry]] | None = None,
) -> list[str]:
    """For each pool where a step of `current_run_id` waits unassigned behind a slot held by a run
    whose worker cannot be judged from here, a line naming that run and the command that frees it."""
    entries = pool_entries(instance) if entries is None else entries
    mine = entries.get(current_run_id, {})
    blocked_pools = {pool for pool, entry in mine.items() if entry.unassigned}
    if not blocked_pools:
        return []
    host = host or HostIdentity.current()
    lines = []
    for run_id, pools in sorted(entries.items()):
        holds = sorted(pool for pool, entry in pools.items() if entry.held and pool in blocked_pools)
        if run_id == current_run_id or not holds:
            continue
        judgement = judge(read_worker_record(instance, run_id), host)
        if judgement.verdict is not Verdict.UNKNOWN:
            continue
        lines.append(
            f"Waiting for pool {', '.join(repr(p) for p in holds)}: its slot is held by run {run_id}, "
            f"whose worker cannot be checked from here ({judgement.reason}). If that run is dead, "
            f"free its slots with: {free_command(run_id)}"
        )
    return lines
