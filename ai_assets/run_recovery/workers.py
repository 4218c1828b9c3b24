"""Is a run's worker still alive? Judged from what the run recorded, and only where it can be proven.

A run killed with SIGKILL (or OOM-killed, or lost with its machine) never reports its end: it stays
STARTED and keeps its concurrency-pool slots. Freeing those slots is safe only if no process of the
run is still working, so the verdict is DEAD only when every process the run recorded is gone *and*
the run's worker ran on this very machine since its last boot (same hostname and kernel boot id).
Anything else — another host, a machine without /proc, a process that still runs — is never DEAD.

A recorded pid may since have been given to an unrelated process. A process is the recorded one only
if it started no later than the record was written (for the worker's own record, its exact start time
in clock ticks is compared), so a reused pid reads as gone, and a pid that cannot be told apart reads
as alive.
"""

from __future__ import annotations

import enum
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Metadata keys of the engine event the recovering executor writes when a run starts.
HOSTNAME_KEY = "worker_hostname"
BOOT_ID_KEY = "worker_boot_id"
PID_NS_KEY = "worker_pid_namespace"
PID_KEY = "pid"  # the key Dagster's own engine events use for the pids they record
START_TICKS_KEY = "pid_start_ticks"

# /proc/stat's boot time has one-second resolution; a process that started within this many seconds
# after a pid was recorded is still taken for the recorded one (alive), never for a stranger.
START_TIME_SLACK_S = 2.0

_PROC = Path("/proc")


@dataclass(frozen=True)
class HostIdentity:
    """This machine as run records name it. `boot_id` is None where processes cannot be inspected."""

    hostname: str
    boot_id: str | None
    # Containers on one kernel share its boot id, and with host networking even its hostname, but not
    # their process ids: a pid is only meaningful inside the PID namespace that recorded it.
    pid_namespace: str | None = None

    @classmethod
    def current(cls) -> HostIdentity:
        try:
            boot_id = (_PROC / "sys/kernel/random/boot_id").read_text().strip() or None
        except OSError:
            boot_id = None
        try:
            pid_namespace: str | None = os.readlink(_PROC / "self/ns/pid")
        except OSError:
            pid_namespace = None
        return cls(hostname=socket.gethostname(), boot_id=boot_id, pid_namespace=pid_namespace)


@dataclass(frozen=True)
class ProcessStart:
    """When a live process started: clock ticks since boot, and the same as a Unix timestamp."""

    ticks: int
    epoch_s: float


@dataclass(frozen=True)
class RecordedProcess:
    """A pid a run recorded at `recorded_at` (Unix time); `start_ticks` when the recorder knew it."""

    pid: int
    recorded_at: float
    start_ticks: int | None = None


@dataclass(frozen=True)
class WorkerRecord:
    """Where a run's worker ran and every process it recorded."""

    hostname: str | None
    boot_id: str | None
    processes: tuple[RecordedProcess, ...]
    pid_namespace: str | None = None


class Verdict(enum.Enum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str


def _boot_time_s() -> float:
    for line in (_PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("/proc/stat has no btime line")


def process_start(pid: int) -> ProcessStart | None:
    """The start of live process `pid`, or None if there is none (a zombie counts as none).

    Raises OSError when /proc cannot say (not Linux, or /proc hidden): callers must then not judge.
    """
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    state, start_ticks = fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    if state in ("Z", "X", "x"):
        return None
    return ProcessStart(ticks=start_ticks, epoch_s=_boot_time_s() + start_ticks / os.sysconf("SC_CLK_TCK"))


def this_process_record() -> dict[str, str]:
    """Metadata naming this process and machine, for the engine event a run worker writes first."""
    host = HostIdentity.current()
    metadata = {HOSTNAME_KEY: host.hostname, PID_KEY: str(os.getpid())}
    if host.boot_id:
        metadata[BOOT_ID_KEY] = host.boot_id
    if host.pid_namespace:
        metadata[PID_NS_KEY] = host.pid_namespace
    try:
        start = process_start(os.getpid())
    except OSError:
        start = None
    if start is not None:
        metadata[START_TICKS_KEY] = str(start.ticks)
    return metadata


def worker_record(events: Iterable[tuple[float, Mapping[str, str]]]) -> WorkerRecord:
    """Gather a run's worker record from its engine events, given as (timestamp, text metadata)."""
    hostname = boot_id = pid_namespace = None
    processes: dict[int, RecordedProcess] = {}
    for timestamp, metadata in events:
        if HOSTNAME_KEY in metadata:
            hostname, boot_id = metadata[HOSTNAME_KEY], metadata.get(BOOT_ID_KEY)
            pid_namespace = metadata.get(PID_NS_KEY)
        raw_pid = metadata.get(PID_KEY)
        if raw_pid is None or not raw_pid.strip().isdigit():
            continue
        pid = int(raw_pid)
        raw_ticks = metadata.get(START_TICKS_KEY)
        ticks = int(raw_ticks) if raw_ticks and raw_ticks.isdigit() else None
        earlier = processes.get(pid)
        # The first record of a pid is the one that dates the process; a later one only adds ticks.
        processes[pid] = RecordedProcess(
            pid=pid,
            recorded_at=earlier.recorded_at if earlier else timestamp,
            start_ticks=ticks if ticks is not None else (earlier.start_ticks if earlier else None),
        )
    return WorkerRecord(
        hostname=hostname, boot_id=boot_id, processes=tuple(processes.values()), pid_namespace=pid_namespace
    )


def judge(
    record: WorkerRecord,
    host: HostIdentity,
    probe: Callable[[int], ProcessStart | None] = process_start,
) -> Judgement:
    """DEAD only when provable from this machine (see the module docstring); never raises."""
    if record.hostname is None:
        return Judgement(Verdict.UNKNOWN, "it recorded no worker host (it did not run through this "
                         "code location's executor)")  # fmt: skip
    if host.boot_id is None:
        return Judgement(Verdict.UNKNOWN, "this machine cannot inspect processes (no /proc)")
    if record.hostname != host.hostname:
        return Judgement(Verdict.UNKNOWN, f"its worker ran on host {record.hostname!r}, not on this one "
                         f"({host.hostname!r})")  # fmt: skip
    if record.boot_id != host.boot_id:
        return Judgement(Verdict.UNKNOWN, f"its worker ran on host {record.hostname!r} under another "
                         "kernel boot id (another machine of the same name, or before a reboot)")  # fmt: skip
    if record.pid_namespace != host.pid_namespace:
        return Judgement(Verdict.UNKNOWN, "its worker ran in another PID namespace (another container on "
                         "this kernel), whose processes cannot be seen from here")  # fmt: skip
    if not record.processes:
        return Judgement(Verdict.UNKNOWN, "it recorded no process id")
    for process in record.processes:
        try:
            start = probe(process.pid)
        except (OSError, ValueError, IndexError) as exc:
            return Judgement(Verdict.UNKNOWN, f"process {process.pid} cannot be inspected: {exc}")
        if start is None:
            continue
        if process.start_ticks is not None:
            same = start.ticks == process.start_ticks
        else:
            same = start.epoch_s <= process.recorded_at + START_TIME_SLACK_S
        if same:
            return Judgement(Verdict.ALIVE, f"its process {process.pid} still runs on {host.hostname!r}")
    pids = ", ".join(str(p.pid) for p in record.processes)
    return Judgement(Verdict.DEAD, f"none of its processes ({pids}) runs any more on {host.hostname!r}")
