"""Dagster's executors, made to recover the pool slots of dead runs before and while they wait.

`with_pool_recovery(dg.multiprocess_executor)` is the same executor (name, config, requirements),
whose runs first write where their worker runs (host, boot id, pid and its start time: what
`workers.judge` needs later), then sweep the pools once before any step claims a slot, then sweep
again every `SWEEP_INTERVAL_S` while one of their steps waits for a slot — so a run killed while
another already waited frees its slot too. Everything else is the wrapped executor's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dagster as dg
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.retries import RetryMode
from dagster._core.execution.step_dependency_config import StepDependencyConfig
from dagster._core.executor.base import Executor
from dagster._core.executor.init import InitExecutorContext

from ai_assets.lib import settings
from ai_assets.run_recovery.slots import blocked_by_unjudgeable, pool_entries, sweep
from ai_assets.run_recovery.workers import HOSTNAME_KEY, PID_KEY, this_process_record

# As often as Dagster re-checks a blocked step at most (MAX_CONCURRENCY_CLAIM_BLOCKED_INTERVAL is 15 s).
SWEEP_INTERVAL_S = 10.0


class _Sweeper(threading.Thread):
    """While the run executes: sweep whenever one of its steps waits unassigned for a slot, and say
    once per holder when a slot is held by a run that cannot be judged from this machine."""

    def __init__(self, instance: dg.DagsterInstance, run: dg.DagsterRun, interval_s: float):
        super().__init__(name=f"pool-slot-recovery-{run.run_id[:8]}", daemon=True)
        self.instance, self.dagster_run, self.interval_s = instance, run, interval_s
        self.stopped = threading.Event()
        self.warned: set[str] = set()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - a failed sweep must never fail the run
                self.instance.report_engine_event(
                    f"Pool-slot recovery check failed (the run goes on waiting): {exc!r}", self.dagster_run
                )

    def tick(self) -> None:
        entries = pool_entries(self.instance)
        if not any(entry.unassigned for entry in entries.get(self.dagster_run.run_id, {}).values()):
            return
        outcomes = sweep(self.instance, self.dagster_run.run_id, entries=entries)
        for outcome in outcomes:
            if outcome.freed:
                self.instance.report_engine_event(f"Pool-slot recovery: {outcome.line()}", self.dagster_run)
        if any(outcome.freed for outcome in outcomes):
            entries = pool_entries(self.instance)
        for line in blocked_by_unjudgeable(self.instance, self.dagster_run.run_id, entries=entries):
            if line not in self.warned:
                self.warned.add(line)
                self.instance.report_engine_event(line, self.dagster_run)


class PoolRecoveringExecutor(Executor):
    """Wraps an executor: a worker record first, a sweep before steps start, a sweeper thread while
    they run. Events, retries and step dependencies are the wrapped executor's."""

    def __init__(self, inner: Executor, interval_s: float = SWEEP_INTERVAL_S):
        self.inner, self.interval_s = inner, interval_s

    @property
    def retries(self) -> RetryMode:
        return self.inner.retries

    @property
    def step_dependency_config(self) -> StepDependencyConfig:
        return self.inner.step_dependency_config

    def execute(self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan) -> Iterator[DagsterEvent]:
        record = this_process_record()
        yield DagsterEvent.engine_event(
            plan_context,
            f"Run worker on host {record[HOSTNAME_KEY]!r} (pid {record[PID_KEY]})",
            EngineEventData(metadata=record),
        )
        instance, run = plan_context.instance, plan_context.dagster_run
        if not instance.event_log_storage.supports_global_concurrency_limits:
            yield from self.inner.execute(plan_context, execution_plan)
            return
        for outcome in sweep(instance, run.run_id):
            if outcome.freed:
                yield DagsterEvent.engine_event(
                    plan_context, f"Pool-slot recovery: {outcome.line()}", EngineEventData()
                )
        sweeper = _Sweeper(instance, run, self.interval_s)
        sweeper.start()
        try:
            yield from self.inner.execute(plan_context, execution_plan)
        finally:
            sweeper.stopped.set()
            sweeper.join()


class _WithPoolRecovery:
    """The creation function of a recovering executor definition (a class, so tests can find it)."""

    def __init__(self, base: dg.ExecutorDefinition):
        if base.executor_creation_fn is None:
            raise ValueError(f"executor {base.name!r} has no creation function to wrap")
        self.base = base
        self.create_inner = base.executor_creation_fn

    def __call__(self, init_context: InitExecutorContext) -> Executor:
        return PoolRecoveringExecutor(self.create_inner(init_context))


def with_pool_recovery(base: dg.ExecutorDefinition) -> dg.ExecutorDefinition:
    """`base` (same name, config schema and requirements) with pool-slot recovery (module docstring)."""
    return dg.ExecutorDefinition(
        name=base.name,
        config_schema=base.config_schema,
        requirements=base.get_requirements,
        executor_creation_fn=_WithPoolRecovery(base),
        description=(base.description or "") + " Frees the pool slots of runs whose worker died.",
    )


def recovers_pool_slots(executor_def: dg.ExecutorDefinition) -> bool:
    """Whether runs of `executor_def` recover the pool slots of dead runs."""
    return isinstance(executor_def.executor_creation_fn, _WithPoolRecovery)


multiprocess_executor = with_pool_recovery(dg.multiprocess_executor)
in_process_executor = with_pool_recovery(dg.in_process_executor)


def training_executor() -> dg.ExecutorDefinition:
    """The fine-tuning jobs' executor: TRAINING_EXECUTOR, read when the code location loads (a job's
    executor is part of its definition).

    in_process: every step in the run's process, sharing the embedded Qdrant folder and the model (the
    training itself runs in the launcher's process). k8s: each step in a Kubernetes Job of its own
    (`dagster_k8s.k8s_job_executor`); the GPU step asks for GPUs through its `dagster-k8s/config` tag,
    the others stay small. That needs a Qdrant server (QDRANT_URL), which several pods can share."""
    if settings.value("TRAINING_EXECUTOR") == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return in_process_executor
