"""When fine-tuning runs: weekly, apart from ingestion; a deployment or a rollback is re-scored at once."""

import dagster as dg

# Modules, not their objects: a job imported by name would be collected twice when the folder is autoloaded.
from ai_assets.defs.evaluation import automation as evaluation_automation
from ai_assets.defs.ingestion import automation as ingestion_automation
from ai_assets.lib import settings
from ai_assets.run_recovery import executor as run_recovery_executor


def _executor() -> dg.ExecutorDefinition:
    """TRAINING_EXECUTOR, read when the code location loads (a job's executor is part of its definition).

    in_process: every step in the run's process, sharing the embedded Qdrant folder and the model (the
    training itself runs in the launcher's process). k8s: each step in a Kubernetes Job of its own
    (`dagster_k8s.k8s_job_executor`); the GPU step asks for GPUs through its `dagster-k8s/config` tag,
    the others stay small. That needs a Qdrant server (QDRANT_URL), which several pods can share."""
    if settings.value("TRAINING_EXECUTOR") == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return run_recovery_executor.in_process_executor


fine_tuning = dg.define_asset_job(
    "fine_tuning",
    selection=dg.AssetSelection.groups("training"),
    description="Fine-tune the embedding model on fresh training data, gate it against the deployed "
    "model and deploy it behind the collection alias when it is better.",
    executor_def=_executor(),
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


@dg.run_status_sensor(
    name="rescore_after_model_change",
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[fine_tuning, rollback_embedding_model],
    request_job=evaluation_automation.rag_evaluation,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a fine-tuning run or a rollback succeeds, re-scores the knowledge base "
    "(rag_quality_metrics) with the embedding model now serving.",
)
def rescore_after_model_change(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
    materialized = context.instance.get_records_for_run(
        context.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    if not any(r.event_log_entry.asset_materialization.asset_key.path == ["deployed_model"] for r in materialized):
        return dg.SkipReason("The run changed no deployment")
    return dg.RunRequest(run_key=f"rescore-{context.dagster_run.run_id}")
