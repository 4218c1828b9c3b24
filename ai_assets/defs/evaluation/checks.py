"""Quality gates on `rag_quality_metrics`: blocking, so a worse index is flagged before it is used."""

import dagster as dg

from ai_assets.defs.evaluation.assets import rag_quality_metrics
from ai_assets.lib.evaluation.gates import regressions, threshold_failures
from ai_assets.resources.evaluation import EvaluationResource


def _recent_metrics(instance: dg.DagsterInstance, limit: int) -> list[dict[str, float]]:
    """Metrics of the latest `limit` materializations, newest first, from the instance's event log."""
    result = instance.fetch_materializations(rag_quality_metrics.key, limit=limit)
    found = []
    for record in result.records:
        entry = record.asset_materialization.metadata.get("metrics") if record.asset_materialization else None
        if entry is not None:
            found.append(dict(entry.value))
    return found


@dg.asset_check(asset=rag_quality_metrics, blocking=True)
def metrics_meet_thresholds(
    context: dg.AssetCheckExecutionContext, evaluation: EvaluationResource
) -> dg.AssetCheckResult:
    """Every thresholded metric (RAG_THRESHOLDS, default nDCG@10 >= 0.5, recall@10 >= 0.7,
    MRR@10 >= 0.45, hit rate@5 >= 0.7) is at or above its minimum. Below it, users get worse answers."""
    recent = _recent_metrics(context.instance, 1)
    thresholds = evaluation.threshold_map()
    failures = threshold_failures(recent[0] if recent else {}, thresholds)
    return dg.AssetCheckResult(
        passed=bool(recent) and not failures,
        metadata={
            "thresholds": dg.MetadataValue.json(thresholds),
            "failures": dg.MetadataValue.json(failures),
            "failed_metrics": len(failures),
        },
    )


@dg.asset_check(asset=rag_quality_metrics, blocking=True)
def no_regression(context: dg.AssetCheckExecutionContext, evaluation: EvaluationResource) -> dg.AssetCheckResult:
    """No metric dropped by more than RAG_REGRESSION_TOLERANCE (default 0.02) since the previous
    materialization: catches a change (documents, model, chunking) that made retrieval or answers worse."""
    recent = _recent_metrics(context.instance, 2)
    if len(recent) < 2:
        return dg.AssetCheckResult(passed=True, metadata={"compared_with": "nothing yet (first evaluation)"})
    tolerance = evaluation.tolerance()
    worse = regressions(recent[0], recent[1], tolerance)
    return dg.AssetCheckResult(
        passed=not worse,
        metadata={
            "tolerance": tolerance,
            "regressions": dg.MetadataValue.json(worse),
            "regressed_metrics": len(worse),
        },
    )
