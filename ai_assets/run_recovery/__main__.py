"""`python -m ai_assets.run_recovery [--free RUN_ID ...]`: the pool slots of dead runs, by hand.

Without arguments: list every run in the instance's pools (DAGSTER_HOME) with its verdict, and free
the slots of those whose worker is provably dead on this machine, as a run would. With `--free`: mark
each named run failed (unless it ended) and free its slots whatever its state — for a run that died on
another machine, which nothing here can prove.
"""

from __future__ import annotations

import argparse
import sys

import dagster as dg

from ai_assets.run_recovery.slots import fail_and_free, pool_entries, sweep
from ai_assets.run_recovery.workers import HostIdentity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ai_assets.run_recovery", description=__doc__)
    parser.add_argument("--free", metavar="RUN_ID", action="append", default=[],
                        help="mark this run failed and free its pool slots (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    with dg.DagsterInstance.get() as instance:
        if not instance.event_log_storage.supports_global_concurrency_limits:
            print("This instance's storage has no concurrency pools: nothing to free.")
            return 0
        if args.free:
            entries = pool_entries(instance)
            for run_id in args.free:
                if run_id not in entries and instance.get_run_by_id(run_id) is None:
                    print(f"{run_id}: no such run, and it holds no slot", file=sys.stderr)
                    return 2
                by = f"python -m ai_assets.run_recovery --free, on {HostIdentity.current().hostname!r}"
                fail_and_free(instance, run_id, f"Marked failed and its pool slots freed by hand ({by}).", by)
                print(f"run {run_id}: marked failed if it had not ended, and its pool slots freed")
            return 0
        outcomes = sweep(instance, current_run_id=None)
        if not outcomes:
            print("No run holds or waits for a pool slot.")
        for outcome in outcomes:
            print(outcome.line())
        return 0


if __name__ == "__main__":
    sys.exit(main())
