"""The deployment gate: blocking, so a fine-tuned model that is not better never reaches the index."""

import dagster as dg

from ai_assets.defs.training.assets import GateReport, model_evaluation


@dg.asset_check(asset=model_evaluation, blocking=True)
def candidate_passes_gate(model_evaluation: GateReport) -> dg.AssetCheckResult:
    """The fine-tuned model reaches TRAINING_MIN_ACCURACY (default 0.85) accuracy@k (hit rate at
    TRAINING_ACCURACY_K, default 10) on the validation split and beats the deployed model's nDCG@10 by
    TRAINING_MIN_IMPROVEMENT (default 0.005). A failure stops the deployment: the deployed model keeps
    serving, unchanged."""
    report = model_evaluation
    k = report.accuracy_k
    return dg.AssetCheckResult(
        passed=report.passed,
        metadata={
            "candidate_version": report.candidate.version,
            "deployed_model": report.deployed_name,
            f"candidate_accuracy_at_{k}": round(report.candidate_metrics.get(f"hit_rate_at_{k}", 0.0), 5),
            "candidate_ndcg_at_10": round(report.candidate_metrics.get("ndcg_at_10", 0.0), 5),
            "deployed_ndcg_at_10": round(report.deployed_metrics.get("ndcg_at_10", 0.0), 5),
            "failures": "\n".join(report.failures) or "none",
        },
    )
