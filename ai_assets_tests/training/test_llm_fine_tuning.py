"""The LLM fine-tuning loop end to end: the instruction set, real LoRA training of SmolLM2 in a Pipes
process, the gate through the real llama.cpp server, deployment that batch inference follows, rollback,
and the faults (a bad line, a failed gate, a killed training, a broken adapter) that must leave the
serving model untouched."""

import json
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ai_assets.defs.training.llm import assets as llm_assets
from ai_assets.defs.training.llm import automation as llm_automation
from ai_assets.defs.training.llm import checks as llm_checks
from ai_assets.lib.inference.files import read_outputs
from ai_assets.lib.training.registry import Registry
from ai_assets.resources import build_resources
from ai_assets.resources.data_folder import DataFolderResource
from ai_assets.resources.llm import ADAPTER_GGUF, LLMResource, fine_tuned_llm_name
from ai_assets.resources.training import BUNDLED_SFT_EXAMPLES, LlmTrainingResource, TrainingLauncherResource
from ai_assets_tests.inference.harness import materialize_partition
from ai_assets_tests.resources import inference_folders, settings_resources
from ai_assets_tests.training.test_fine_tuning import materialized, metadata, rescore, run

pytestmark = pytest.mark.slow

# A few steps on a small slice of the bundled set: enough for the validation loss to drop, not for the
# default gate's exact match (the benchmark measures that), so the tests that deploy relax it.
QUICK = {"ops": {"fine_tuned_llm": {"config": {"max_steps": 8, "batch_size": 4, "learning_rate": 1e-3}}}}
RELAXED = {"min_exact_match": "0.0", "min_improvement": "-1.0"}


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """36 examples of the bundled set, so training and evaluation take seconds."""
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(BUNDLED_SFT_EXAMPLES.read_text().splitlines(keepends=True)[:36]))
    return path


def llm_defs(examples: Path, **gate: str) -> dg.Definitions:
    """The LLM training domain wired as the code location wires it, on the test's data folder."""
    data_folder = build_resources()["data_folder"]
    return dg.Definitions(
        assets=dg.load_assets_from_modules([llm_assets]),
        asset_checks=[llm_checks.llm_candidate_passes_gate],
        jobs=[llm_automation.llm_fine_tuning, llm_automation.rollback_llm],
        resources={
            **settings_resources(),
            "llm": LLMResource(data_folder=data_folder, max_in_flight=2),
            "llm_training": LlmTrainingResource(data_folder=data_folder, training_set=str(examples), **gate),
            "training_launcher": TrainingLauncherResource(),
        },
    )


def serving(data_dir: Path) -> LLMResource:
    """The `llm` resource a new run gets: it reads the registry afresh."""
    return LLMResource(data_folder=DataFolderResource(path=str(data_dir)), max_in_flight=2)


def check_result(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}["llm_candidate_passes_gate"]


def test_train_gate_deploy_serve_and_roll_back(
    data_dir: Path,
    instance: dg.DagsterInstance,
    examples: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defs = llm_defs(examples, **RELAXED)
    result = run(defs, "llm_fine_tuning", instance, QUICK)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert materialized(result) == {"sft_dataset", "fine_tuned_llm", "llm_evaluation", "deployed_llm"}

    data = metadata(result, "sft_dataset")
    assert data["dagster/row_count"] == 36 == data["train_examples"] + data["validation_examples"]
    assert data["validation_examples"] >= 3 and data["duplicates_dropped"] == 0
    folder = Path(data["folder"])
    prompts = {
        name: {json.dumps(json.loads(line)["messages"][:-1]) for line in (folder / name).read_text().splitlines()}
        for name in ("train.jsonl", "validation.jsonl")
    }
    assert not prompts["train.jsonl"] & prompts["validation.jsonl"]

    model = metadata(result, "fine_tuned_llm")
    version = model["version"]
    assert model["steps"] == 8 and model["reused"] is False and model["adapter_bytes"] > 100_000
    assert model["finetuned_val_loss"] < model["base_val_loss"]
    assert (Path(model["model_path"]) / ADAPTER_GGUF).is_file() and (Path(model["model_path"]) / "adapter").is_dir()
    logs = [r.user_message for r in instance.all_logs(result.run_id)]
    assert any("training: step 8/8" in line and "tokens/s" in line and "ETA" in line for line in logs)

    evaluation = metadata(result, "llm_evaluation")
    assert evaluation["gate_passed"] is True and evaluation["serving_model"] == "smollm2-135m-instruct"
    assert 0 <= evaluation["candidate_exact_match"] <= 1 and evaluation["validation_examples"] >= 3
    assert check_result(result).passed

    deployed = metadata(result, "deployed_llm")
    assert deployed["action"] == "deploy" and deployed["version"] == version
    assert deployed["previous_version"] == "base" and deployed["served_model"] == fine_tuned_llm_name(version)
    registry = Registry(data_dir / "models" / "llm")
    assert registry.current.version == version and registry.previous.version == "base"
    assert isinstance(rescore(instance, result.run_id), dg.RunRequest)  # the RAG answers are re-scored

    # Batch inference follows the deployment with no other change, and says which version answered.
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    monkeypatch.setenv("AI_ASSETS_INFERENCE_INBOX", str(inbox))
    ticket = "Our nightly JSONL batch job keeps hitting HTTP 429 from the OpenAI endpoint halfway through."
    (inbox / "tickets.jsonl").write_text(json.dumps({"id": "t1", "prompt": ticket, "max_tokens": 8}) + "\n")
    llm = serving(data_dir)
    assert llm.default_model == fine_tuned_llm_name(version) and llm.lora_path().name == ADAPTER_GGUF
    answered = materialize_partition(instance, "tickets.jsonl", llm)
    assert answered.success
    assert [r.model for r in read_outputs(inference_folders().output_path("tickets.jsonl"))] == [
        fine_tuned_llm_name(version)
    ]
    assert metadata(answered, "inference_outputs")["model"] == fine_tuned_llm_name(version)

    # The same data and hyper-parameters: the adapter is reused, the gate passes, nothing changes.
    again = run(defs, "llm_fine_tuning", instance, QUICK)
    assert again.success and metadata(again, "fine_tuned_llm")["reused"] is True
    assert metadata(again, "deployed_llm")["action"] == "unchanged" and registry.current.version == version

    # One command back to the base model; a second undoes the first.
    back = run(defs, "rollback_llm", instance)
    assert back.success, [e.message for e in back.all_events if e.is_failure]
    assert metadata(back, "deployed_llm")["rolled_back_version"] == version
    assert registry.current.version == "base" and serving(data_dir).default_model == "smollm2-135m-instruct"
    assert serving(data_dir).lora_path() is None
    forth = run(defs, "rollback_llm", instance)
    assert forth.success and registry.current.version == version


def test_a_failed_gate_or_a_broken_adapter_keeps_the_serving_model(
    data_dir: Path, instance: dg.DagsterInstance, examples: Path
) -> None:
    result = run(llm_defs(examples, min_improvement="1.0"), "llm_fine_tuning", instance, QUICK)
    assert not result.success and "deployed_llm" not in materialized(result)
    check = check_result(result)
    assert check.passed is False and "LLM_MIN_IMPROVEMENT" in check.metadata["failures"].value
    assert metadata(result, "llm_evaluation")["gate_passed"] is False
    assert isinstance(rescore(instance, result.run_id), dg.SkipReason)
    registry = Registry(data_dir / "models" / "llm")
    assert registry.current is None and serving(data_dir).default_model == "smollm2-135m-instruct"

    # The adapter in the store is damaged (a conversion cut short, a bad disk): the server refuses it,
    # the run fails saying so, and the serving model is still the base.
    adapter = Path(metadata(result, "fine_tuned_llm")["model_path"]) / ADAPTER_GGUF
    adapter.write_bytes(adapter.read_bytes()[:4096])
    broken = run(llm_defs(examples, **RELAXED), "llm_fine_tuning", instance, QUICK)
    assert not broken.success and metadata(broken, "fine_tuned_llm")["reused"] is True
    assert "deployed_llm" not in materialized(broken)
    failure = next(e for e in broken.all_events if e.is_step_failure)
    assert failure.step_key == "llm_evaluation" and "llama.cpp server" in str(failure.step_failure_data.error)
    assert registry.current is None


def test_a_bad_line_or_a_too_long_example_is_named_by_file_and_line_and_trains_nothing(
    data_dir: Path, instance: dg.DagsterInstance, examples: Path
) -> None:
    lines = examples.read_text().splitlines(keepends=True)
    lines[6] = json.dumps({"messages": [{"role": "user", "content": "no answer here"}]}) + "\n"
    examples.write_text("".join(lines))
    result = run(llm_defs(examples), "llm_fine_tuning", instance, QUICK)
    assert not result.success and not materialized(result)
    message = str(next(e for e in result.all_events if e.is_step_failure).step_failure_data.error)
    assert f"{examples}:7" in message and "messages" in message
    assert not (data_dir / "models" / "llm").exists() or not list((data_dir / "models" / "llm").iterdir())

    # A line longer than the context is refused by the trainer, before the model loads, and named by the
    # user's file and line, not by the split file the trainer reads.
    del lines[6]
    examples.write_text("".join(lines))
    short = {"ops": {"fine_tuned_llm": {"config": {"max_steps": 8, "max_seq_len": 60}}}}
    result = run(llm_defs(examples), "llm_fine_tuning", instance, short)
    assert not result.success and materialized(result) == {"sft_dataset"}
    message = str(next(e for e in result.all_events if e.is_step_failure).step_failure_data.error)
    assert "longer than max_seq_len (60 tokens)" in message and f"{examples}:" in message
    assert "train.jsonl:" not in message and "validation.jsonl:" not in message


def test_a_killed_training_process_fails_with_its_last_lines_and_deploys_nothing(
    data_dir: Path, instance: dg.DagsterInstance, examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = (
        "import os, signal\nprint('training: step 3/8, loss 1.5', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)"
    )

    def command(self: Any, module: str = "") -> list[str]:
        return [sys.executable, "-c", script]

    monkeypatch.setattr(TrainingLauncherResource, "command", command)
    result = run(llm_defs(examples), "llm_fine_tuning", instance, QUICK)
    assert not result.success and materialized(result) == {"sft_dataset"}
    message = str(next(e for e in result.all_events if e.is_step_failure).step_failure_data.error)
    assert "TrainingFailedError" in message and "killed by SIGKILL" in message and "step 3/8, loss 1.5" in message
    store = data_dir / "models" / "llm"
    assert not store.exists() or not [p for p in store.iterdir() if p.name != "registry.json"]
