"""Materialize one partition of `inference_outputs` in process, and read its failure as the UI shows it."""

from __future__ import annotations

import dagster as dg

from ai_assets.defs.inference.assets import inference_files, inference_outputs
from ai_assets.resources.llm import LLMResource
from ai_assets_tests.resources import settings_resources


def materialize_partition(instance: dg.DagsterInstance, key: str, llm: LLMResource) -> dg.ExecuteInProcessResult:
    """Add the partition when missing, then materialize it with `llm`; failures are returned, not raised."""
    if not instance.has_dynamic_partition(inference_files.name, key):
        instance.add_dynamic_partitions(inference_files.name, [key])
    return dg.materialize(
        [inference_outputs],
        partition_key=key,
        instance=instance,
        resources={**settings_resources(), "llm": llm},
        raise_on_error=False,
    )


def error_text(result: dg.ExecuteInProcessResult) -> str:
    """The step's error with its causes, as the run log shows it."""
    error, parts = result.failure_data_for_node("inference_outputs").error, []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)
