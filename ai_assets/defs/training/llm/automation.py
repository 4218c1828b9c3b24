"""When the LLM is fine-tuned: weekly, on another day than the embedding model (both want the `gpu` pool);
and the one-command rollback."""

import dagster as dg

from ai_assets.lib import settings
from ai_assets.run_recovery import executor as run_recovery_executor

llm_fine_tuning = dg.define_asset_job(
    "llm_fine_tuning",
    selection=dg.AssetSelection.groups("llm_training"),
    description="Fine-tune the LLM (a LoRA adapter for the embedded SmolLM2) on the instruction set, gate it "
    "against the serving model and deploy it to the embedded server when it is better.",
    executor_def=run_recovery_executor.training_executor(),
    tags={"domain": "training"},
)

rollback_llm = dg.define_asset_job(
    "rollback_llm",
    selection=dg.AssetSelection.assets("deployed_llm"),
    description="Switch the LLM back to the version the last deployment replaced (the base model after the "
    "first one). Running it again undoes the rollback.",
    config={"ops": {"deployed_llm": {"config": {"action": "rollback"}}}},
    executor_def=run_recovery_executor.in_process_executor,
    tags={"domain": "training"},
)

weekly_llm_fine_tune = dg.ScheduleDefinition(
    name="weekly_llm_fine_tune",
    job=llm_fine_tuning,
    cron_schedule="0 3 * * 3",
    execution_timezone=settings.value("AI_ASSETS_TIMEZONE"),
    description="Retrains the LLM's adapter every Wednesday at 03:00, away from the embedding model's Sunday "
    "run (both want the GPU pool); the gate deploys it only when it beats the serving version.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
