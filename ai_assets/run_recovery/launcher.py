"""The default run launcher, plus a health check run monitoring can use.

Dagster's `DefaultRunLauncher` cannot tell whether a run's worker still lives, so run monitoring skips
its runs: a run whose worker was killed (OOM, `kill -9`, a crashed host process) reads STARTED forever
and keeps its pool slots, and a queued run waiting for one of those slots never starts. This launcher
answers the health check with the same proof `run_recovery` uses (same host, same boot, same PID
namespace, none of the worker's recorded processes left): the monitoring daemon then marks such a run
failed, frees its slots, and `run_retries` re-launches it. Anything that cannot be proven dead from the
daemon's machine (a worker on another host, a run that has not recorded its worker yet) is reported as
running, because run monitoring fails every run whose status is anything else.
"""

from __future__ import annotations

import dagster as dg
from dagster._core.launcher import DefaultRunLauncher
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus

from ai_assets.run_recovery.slots import read_worker_record
from ai_assets.run_recovery.workers import HostIdentity, Verdict, judge


class WorkerCheckingRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` whose run workers the monitoring daemon can find dead (dagster.yaml)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        judgement = judge(read_worker_record(self._instance, run.run_id), HostIdentity.current())
        if judgement.verdict is Verdict.DEAD:
            return CheckRunHealthResult(
                WorkerStatus.FAILED, f"The run worker died without reporting: {judgement.reason}"
            )
        return CheckRunHealthResult(WorkerStatus.RUNNING, judgement.reason)
