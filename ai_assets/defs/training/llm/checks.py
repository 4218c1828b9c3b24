"""The LLM's deployment gate: blocking, so a fine-tuned LLM that is not better never answers."""

import dagster as dg

from ai_assets.defs.training.llm.assets import LlmGateReport, llm_evaluation


@dg.asset_check(asset=llm_evaluation, blocking=True)
def llm_candidate_passes_gate(llm_evaluation: LlmGateReport) -> dg.AssetCheckResult:
    """The fine-tuned LLM reaches LLM_MIN_EXACT_MATCH (default 0.6) exact match on the validation split,
    beats the serving model's by LLM_MIN_IMPROVEMENT (default 0.01), and has a lower validation loss than
    the base model. A failure stops the deployment: the serving model keeps answering, unchanged."""
    report = llm_evaluation
    return dg.AssetCheckResult(
        passed=report.passed,
        metadata={
            "candidate_version": report.candidate.version,
            "serving_version": report.serving_version,
            "candidate_exact_match": round(report.candidate_exact_match, 5),
            "serving_exact_match": round(report.serving_exact_match, 5),
            "candidate_val_loss": round(report.candidate_val_loss, 5),
            "base_val_loss": round(report.base_val_loss, 5),
            "failures": "\n".join(report.failures) or "none",
        },
    )
