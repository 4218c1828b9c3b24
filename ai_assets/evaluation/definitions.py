"""Everything the evaluation domain contributes to the code location."""

import dagster as dg

from ai_assets.evaluation import assets, checks
from ai_assets.evaluation.automation import daily_rag_evaluation, rag_evaluation

# The metrics follow the index through their eager automation conditions, which only a running
# automation-condition sensor evaluates. The one Dagster adds by itself starts STOPPED, so the metrics
# would not re-evaluate after new embeddings until someone turned it on in the UI: this one starts on.
rag_quality_automation = dg.AutomationConditionSensorDefinition(
    "rag_quality_automation",
    target=dg.AssetSelection.groups("evaluation"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    run_tags={"domain": "evaluation"},
    description="Requests rag_eval_set / rag_quality_metrics when their automation conditions say so "
    "(eager: after each new document_chunks / document_embeddings). Runs in the daemon of `dagster dev`.",
)

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([assets]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    jobs=[rag_evaluation],
    schedules=[daily_rag_evaluation],
    sensors=[rag_quality_automation],
)
