"""The map of the code location: each domain's definitions, the shared resources, the executor."""

import dagster as dg

import ai_assets.evaluation.definitions as evaluation
import ai_assets.inference.definitions as inference
import ai_assets.ingestion.definitions as ingestion
from ai_assets.resources import build_resources
from ai_assets.run_recovery.executor import multiprocess_executor

defs = dg.Definitions.merge(
    ingestion.defs,
    inference.defs,
    evaluation.defs,
    dg.Definitions(
        resources=build_resources(),
        # Steps of other jobs run in parallel processes; two at a time on a 2-core machine, because
        # torch steps that each use every core run slower together than one after the other. Before a
        # step claims a pool slot, the run frees the slots of runs whose worker died (run_recovery).
        executor=multiprocess_executor.configured({"max_concurrent": 2}),
    ),
)
