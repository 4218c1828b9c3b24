"""When evaluation runs: after every index change (the asset's eager condition), and daily."""

import dagster as dg

from ai_assets.lib import settings

rag_evaluation = dg.define_asset_job(
    "rag_evaluation",
    selection=dg.AssetSelection.groups("evaluation"),
    description="Score the knowledge base on the evaluation set and gate it on the quality checks.",
    tags={"domain": "evaluation"},
)

daily_rag_evaluation = dg.ScheduleDefinition(
    name="daily_rag_evaluation",
    job=rag_evaluation,
    cron_schedule="0 2 * * *",
    # Read when the code location loads, not through a resource: the daemon evaluates a schedule from
    # the loaded definitions before any run (or run worker) exists.
    execution_timezone=settings.value("AI_ASSETS_TIMEZONE"),
    description="Re-scores the knowledge base at 02:00, an hour after the nightly refresh, so a "
    "provider-side change (the answering model) shows up even when the index did not change.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

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
