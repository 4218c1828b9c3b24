"""A test-only code location for the daemon tests: one asset per production pool that holds its slot
until the test lets go, and an unpooled step that can run before it.

Production's pooled steps (embedding, inference, training) take tens of seconds to minutes and cannot be
paused at a chosen moment; these hold the very same instance pools (`qdrant`, `openai-api`, `gpu`) under
the code location's own recovering executor, for exactly as long as a test wants. DAEMON_TEST_CONTROL is
the control folder: a holder writes `holding-<run id>` (its pid) once it holds the slot, and returns when
`release-<run id>` or `release-all` exists there.
"""

import os
import time
from pathlib import Path

import dagster as dg

from ai_assets.run_recovery.executor import in_process_executor

POOLS = ("qdrant", "openai-api", "gpu")
HOLD_LIMIT_S = 300


def holder_name(pool: str) -> str:
    """The asset (and, with a `hold_` prefix, the job) that holds one slot of `pool`."""
    return pool.replace("-", "_") + "_holder"


def job_name(pool: str, *, warm_up: bool = False) -> str:
    """`hold_<pool>`: the pooled step is the run's first (the queue holds such a run while the pool is
    full, as it holds batch_inference). With `warm_up`, an unpooled step comes first (as in rag_ingestion
    and fine_tuning): the run starts and its pooled step waits in the run worker."""
    return ("warm_up_then_hold_" if warm_up else "hold_") + holder_name(pool)


def _warm_up(pool: str) -> dg.AssetsDefinition:
    @dg.asset(name=holder_name(pool) + "_warm_up")
    def warm_up() -> None:
        """An unpooled first step."""

    return warm_up


def _holder(pool: str, upstream: dg.AssetsDefinition) -> dg.AssetsDefinition:
    @dg.asset(name=holder_name(pool), pool=pool, deps=[upstream])
    def hold(context: dg.AssetExecutionContext) -> None:
        folder = Path(os.environ["DAEMON_TEST_CONTROL"])
        (folder / f"holding-{context.run_id}").write_text(str(os.getpid()))
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not ((folder / f"release-{context.run_id}").exists() or (folder / "release-all").exists()):
            if time.monotonic() > deadline:
                raise dg.Failure(f"not released within {HOLD_LIMIT_S} s")
            time.sleep(0.1)

    hold.__doc__ = f"Holds one `{pool}` slot until the test releases it."
    return hold


WARM_UPS = [_warm_up(pool) for pool in POOLS]
HOLDERS = [_holder(pool, warm_up) for pool, warm_up in zip(POOLS, WARM_UPS, strict=True)]
# In process, as rag_ingestion runs: the step claims its slot in the run worker itself, so the worker pid
# the holder records is the process that holds the slot.
JOBS = [
    dg.define_asset_job(
        job_name(pool, warm_up=warm), selection=[holder, *([warm_up] if warm else [])], executor_def=in_process_executor
    )  # fmt: skip
    for pool, warm_up, holder in zip(POOLS, WARM_UPS, HOLDERS, strict=True)
    for warm in (False, True)
]

defs = dg.Definitions(assets=[*WARM_UPS, *HOLDERS], jobs=JOBS)
