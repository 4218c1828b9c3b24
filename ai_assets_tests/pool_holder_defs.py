"""A test-only code location: one asset in the `qdrant` pool that holds its slot until told to let go.

It runs under the code location's own recovering executors, so a test can SIGKILL a run at a known
moment (while the slot is held) and see what the next run does. POOL_HOLDER_DIR is the control folder:
the asset writes `holding-<run id>` (its pid) once it runs, and returns when a file `release` exists.
"""

import os
import time
from pathlib import Path

import dagster as dg

from ai_assets.run_recovery.executor import in_process_executor, multiprocess_executor

HOLD_LIMIT_S = 600


@dg.asset(pool="qdrant")
def pool_holder(context: dg.AssetExecutionContext) -> None:
    """Holds one `qdrant` slot until POOL_HOLDER_DIR/release exists."""
    folder = Path(os.environ["POOL_HOLDER_DIR"])
    (folder / f"holding-{context.run_id}").write_text(str(os.getpid()))
    release = folder / "release"
    waited = 0.0
    while not release.exists():
        if waited > HOLD_LIMIT_S:
            raise dg.Failure(f"{release} did not appear within {HOLD_LIMIT_S} s")
        time.sleep(0.05)
        waited += 0.05


hold_in_process = dg.define_asset_job("hold_in_process", selection=[pool_holder], executor_def=in_process_executor)

defs = dg.Definitions(
    assets=[pool_holder],
    jobs=[hold_in_process],
    executor=multiprocess_executor.configured({"max_concurrent": 2}),
)
