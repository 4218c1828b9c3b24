"""When evaluation runs: after every index change (the asset's eager condition), and daily."""

import dagster as dg

from ai_assets import settings

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
    execution_timezone=settings.value("AI_ASSETS_TIMEZONE"),
    description="Re-scores the knowledge base at 02:00, an hour after the nightly refresh, so a "
    "provider-side change (the answering model) shows up even when the index did not change.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
