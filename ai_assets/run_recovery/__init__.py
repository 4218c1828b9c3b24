"""Recover the concurrency-pool slots of runs whose worker died (SIGKILL, OOM, a lost machine).

`executor` wraps Dagster's executors so every run sweeps the pools before and while it waits for a
slot; `slots` judges and frees; `workers` decides, from /proc, whether a run's worker is provably dead.
By hand: `python -m ai_assets.run_recovery` (judge and free what is provably dead) or
`python -m ai_assets.run_recovery --free RUN_ID` (free one run's slots whatever its state).
"""
