"""LLM fine-tuning benchmark: the `llm_fine_tuning` job on the bundled instruction set, as `key: value` lines.

    python bench/llm_finetune.py      # ~6 min on 2 cores: data, LoRA training, gate, deploy, serve, rollback

One run, through the pipeline's own assets and the code location's own resources (embedded defaults):
1. `sft_dataset`: the bundled support-ticket routing set (or --examples FILE), split by prompt hash;
   `validation_examples` are held out from training.
2. `fine_tuned_llm`: LoRA on SmolLM2-135M-Instruct loaded from its GGUF, trained in its Pipes process with
   the job's default hyper-parameters (`LlmFineTuneConfig`, or --max-steps / --learning-rate).
   `base_val_loss` -> `finetuned_val_loss`: mean cross-entropy per answer token on the held-out split
   (must drop); `train_tokens_per_s`, `train_seconds`: the training loop alone.
   `finetuned_task_score_transformers`: exact match of greedy answers from the training process itself.
3. `llm_evaluation`: `base_task_score` and `finetuned_task_score`, exact match of the answers the
   embedded llama.cpp server gives without and with the GGUF adapter: what users get. The gate is the
   code location's (LLM_MIN_EXACT_MATCH 0.6, LLM_MIN_IMPROVEMENT 0.01) unless overridden.
4. `deployed_llm`: `deploy_seconds` (check the adapter serves, write the registry record), then
   `served_after_deploy`: a completion through the `llm` resource as batch inference builds it, answered
   by the deployed version (the response's model name); `rollback_ok`: `rollback_llm` restores the base.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def emit(key: str, value: object) -> None:
    print(f"{key}: {value}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", default="", help="an SFT JSONL file (default: the bundled set)")
    parser.add_argument("--max-steps", type=int, default=None, help="default: LlmFineTuneConfig's")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: LlmFineTuneConfig's")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-llm-finetune-") as tmp:
        os.environ.update({"AI_ASSETS_DATA_DIR": str(Path(tmp) / "data"), "LLM_TRAINING_SET": args.examples})
        run(args)


def run(args: argparse.Namespace) -> None:
    import dagster as dg

    from ai_assets.defs.training.llm import assets as llm_assets
    from ai_assets.defs.training.llm import automation, checks
    from ai_assets.resources import build_resources

    started = time.perf_counter()
    defs = dg.Definitions(
        assets=dg.load_assets_from_modules([llm_assets]),
        asset_checks=[checks.llm_candidate_passes_gate],
        jobs=[automation.llm_fine_tuning, automation.rollback_llm],
        resources=build_resources(),
    )
    instance = dg.DagsterInstance.ephemeral()

    def run_job(name: str, config: dict | None = None) -> dg.ExecuteInProcessResult:
        result = defs.resolve_job_def(name).execute_in_process(
            instance=instance, run_config=config or {}, raise_on_error=False
        )
        checks_failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
        if not result.success and not checks_failed:
            failures = [str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure]
            raise SystemExit(f"{name} failed: {failures}")
        return result

    def meta(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
        for event in result.get_asset_materialization_events():
            if event.asset_key.to_user_string() == asset:
                return {k: v.value for k, v in event.materialization.metadata.items()}
        return {}

    tuning = {k: v for k, v in {"max_steps": args.max_steps, "learning_rate": args.learning_rate}.items() if v}
    result = run_job("llm_fine_tuning", {"ops": {"fine_tuned_llm": {"config": tuning}}} if tuning else None)
    data, model, gate, deployed = (
        meta(result, a) for a in ("sft_dataset", "fine_tuned_llm", "llm_evaluation", "deployed_llm")
    )
    emit("train_examples", data["train_examples"])
    emit("validation_examples", data["validation_examples"])
    emit("train_steps", model["steps"])
    emit("train_seconds", model["train_seconds"])
    emit("train_tokens_per_s", model["train_tokens_per_second"])
    emit("base_val_loss", model["base_val_loss"])
    emit("finetuned_val_loss", model["finetuned_val_loss"])
    emit("val_loss_lower", model["finetuned_val_loss"] < model["base_val_loss"])
    emit("base_task_score", gate["serving_exact_match"])
    emit("finetuned_task_score", gate["candidate_exact_match"])
    emit("finetuned_task_score_transformers", model.get("finetuned_val_exact_match", "n/a"))
    emit("adapter_bytes", model["adapter_bytes"])
    emit("gate_passed", gate["gate_passed"])
    if not gate["gate_passed"]:
        emit("gate_failures", gate["gate_failures"].replace("\n", "; "))
        emit("total_s", round(time.perf_counter() - started, 1))
        return
    emit("deploy_seconds", deployed["deploy_seconds"])

    # What batch inference does: the code location's `llm` resource, built afresh for a new run.
    with build_resources()["llm"].process_config_and_initialize_cm() as llm:
        reply = asyncio.run(_one_completion(llm))
    emit("served_model", reply)
    emit("served_after_deploy", reply == deployed["served_model"])

    back = run_job("rollback_llm")
    rolled = meta(back, "deployed_llm")
    with build_resources()["llm"].process_config_and_initialize_cm() as after:
        emit("rollback_ok", rolled.get("version") == "base" and after.default_model == "smollm2-135m-instruct")
    emit("total_s", round(time.perf_counter() - started, 1))


async def _one_completion(llm: Any) -> str:
    """The model name the response reports for one routed ticket."""
    client = llm.async_client()
    try:
        response = await client.chat.completions.create(
            model=llm.default_model,
            messages=[{"role": "user", "content": "Our Qdrant collection lost its alias after a restart."}],
            max_tokens=8,
            temperature=0,
        )
    finally:
        await client.close()
    return response.model


if __name__ == "__main__":
    main()
