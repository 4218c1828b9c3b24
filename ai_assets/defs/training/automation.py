"""When fine-tuning the embedding model runs: weekly, apart from ingestion; a deployment or a rollback (of
the embedding model or of the LLM) is re-scored at once."""

import dagster as dg

# Modules, not their objects: a job imported by name would be collected twice when the folder is autoloaded.
from ai_assets.defs.evaluation import automation as evaluation_automation
from ai_assets.defs.ingestion import automation as ingestion_automation
from ai_assets.defs.training.llm import automation as llm_automation
from ai_assets.lib import settings
from ai_assets.run_recovery import executor as run_recovery_executor

fine_tuning = dg.define_asset_job(
    "fine_tuning",
    selection=dg.AssetSelection.groups("training"),
    description="Fine-tune the embedding model on fresh training data, gate it against the deployed "
    "model and deploy it behind the collection alias when it is better.",
    executor_def=run_recovery_executor.training_executor(),
    hooks={ingestion_automation.return_freed_memory_hook},
    tags={"domain": "training"},
)

rollback_embedding_model = dg.define_asset_job(
    "rollback_embedding_model",
    selection=dg.AssetSelection.assets("deployed_model"),
    description="Switch the knowledge base back to the embedding model the last deployment replaced "
    "(its collection is kept until the next deployment). Running it again undoes the rollback.",
    config={"ops": {"deployed_model": {"config": {"action": "rollback"}}}},
    executor_def=run_recovery_executor.in_process_executor,
    tags={"domain": "training"},
)

weekly_fine_tune = dg.ScheduleDefinition(
    name="weekly_fine_tune",
    job=fine_tuning,
    cron_schedule="@weekly",
    execution_timezone=settings.value("AI_ASSETS_TIMEZONE"),
    description="Retrains every Sunday at 00:00 on the training data of the moment; the gate deploys the "
    "result only when it beats the serving model.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


# What a run must have materialized for its scores to be stale: a new embedding model or LLM serving.
_DEPLOYMENTS = (["deployed_model"], ["deployed_llm"])


@dg.run_status_sensor(
    name="rescore_after_model_change",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[fine_tuning, rollback_embedding_model, llm_automation.llm_fine_tuning, llm_automation.rollback_llm],
    request_job=evaluation_automation.rag_evaluation,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a fine-tuning run or a rollback (of the embedding model or the LLM) succeeds, "
    "re-scores the knowledge base (rag_quality_metrics) with the models now serving.",
)
def rescore_after_model_change(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
    materialized = context.instance.get_records_for_run(
        context.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    if not any(r.event_log_entry.asset_materialization.asset_key.path in _DEPLOYMENTS for r in materialized):
        return dg.SkipReason("The run changed no deployment")
    return dg.RunRequest(run_key=f"rescore-{context.dagster_run.run_id}")
