"""The LLM training script: its input checks, the answer-only loss mask, and a real LoRA run launched
through Dagster Pipes whose adapter loads in peft and in llama.cpp."""

import json
from pathlib import Path

import dagster as dg
import pytest

from ai_assets.lib.training.gate import LlmGate, exact_match, llm_gate_failures, normalise_answer
from ai_assets.lib.training.sft_data import SftDataError, read_sft_jsonl
from ai_assets.lib.training.train_llm import (
    ADAPTER_DIR,
    ADAPTER_GGUF,
    IGNORE,
    MERGED_DIR,
    LlmTrainingInputError,
    LlmTrainingParams,
    check_params,
    encode,
    end_of_turn,
    train,
)
from ai_assets.resources.llama_server import LlamaServer, bundled_gguf_path
from ai_assets.resources.training import BUNDLED_SFT_EXAMPLES, LLM_TRAINING_MODULE, TrainingLauncherResource

BASE = str(bundled_gguf_path())


def slice_of_bundled(path: Path, start: int, count: int) -> Path:
    path.write_text("".join(BUNDLED_SFT_EXAMPLES.read_text().splitlines(keepends=True)[start : start + count]))
    return path


def params(tmp_path: Path, **overrides: object) -> LlmTrainingParams:
    fields = {
        "train_path": str(slice_of_bundled(tmp_path / "train.jsonl", 0, 12)),
        "validation_path": str(slice_of_bundled(tmp_path / "validation.jsonl", 100, 4)),
        "base_gguf": BASE,
        "output_dir": str(tmp_path / "llm" / "v1"),
        **overrides,
    }
    return LlmTrainingParams(**fields)


def test_bad_input_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    train, validation = check_params(params(tmp_path))
    assert len(train) == 12 and len(validation) == 4

    with pytest.raises(LlmTrainingInputError, match="no such file"):
        check_params(params(tmp_path, base_gguf=str(tmp_path / "missing.gguf")))
    with pytest.raises(LlmTrainingInputError, match="fewer than min_examples"):
        check_params(params(tmp_path, min_examples=13))
    with pytest.raises(LlmTrainingInputError, match="target_modules .*lm_head"):
        check_params(params(tmp_path, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(LlmTrainingInputError, match="max_steps 0"):
        check_params(params(tmp_path, max_steps=0))
    with pytest.raises(LlmTrainingInputError, match="lora_dropout"):
        check_params(params(tmp_path, lora_dropout=1.0))
    with pytest.raises(LlmTrainingInputError, match="torch sees no CUDA"):
        check_params(params(tmp_path, device="cuda"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "completion": "a"}\nnot json\n')
    with pytest.raises(SftDataError, match=rf"{bad}:2"):
        check_params(params(tmp_path, validation_path=str(bad)))
    (tmp_path / "llm" / "v1").mkdir(parents=True)
    with pytest.raises(LlmTrainingInputError, match="already exists"):
        check_params(params(tmp_path))
    with pytest.raises(ValueError, match="unknown steps"):
        LlmTrainingParams.from_extras(
            {"train_path": "t", "validation_path": "v", "base_gguf": "b", "output_dir": "o", "steps": 1}
        )


def test_exact_match_and_the_llm_gate() -> None:
    assert normalise_answer('  "Ingestion."\n') == "ingestion" == normalise_answer("INGESTION")
    assert exact_match(["ingestion", "Training!", "inference is my guess"], ["ingestion", "training", "inference"]) == (
        pytest.approx(2 / 3)
    )
    with pytest.raises(ValueError, match="2 predictions for 1"):
        exact_match(["a", "b"], ["a"])
    gate = LlmGate(min_exact_match=0.6, min_improvement=0.01)
    assert llm_gate_failures(0.75, 0.0, 0.2, 3.6, gate, "base") == []
    failures = llm_gate_failures(0.5, 0.5, 3.7, 3.6, gate, "smollm2-135m-instruct+ft-abc")
    assert len(failures) == 3
    assert "LLM_MIN_EXACT_MATCH 0.6" in failures[0]
    assert "LLM_MIN_IMPROVEMENT" in failures[1] and "+ft-abc" in failures[1]
    assert "validation loss 3.7000 is not below the base model's 3.6000" in failures[2]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    path = bundled_gguf_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.slow
def test_the_loss_is_on_the_answer_and_its_end_of_turn_only(tokenizer) -> None:
    example = read_sft_jsonl(BUNDLED_SFT_EXAMPLES)[0]
    encoded = encode(tokenizer, example)
    assert len(encoded.input_ids) == len(encoded.labels)
    assert all(label == IGNORE for label in encoded.labels[: encoded.prompt_len])
    answer_ids = encoded.labels[encoded.prompt_len :]
    assert IGNORE not in answer_ids
    assert tokenizer.decode(answer_ids) == example.answer + end_of_turn(tokenizer)
    # The prompt is the chat template with the assistant's turn opened: what llama.cpp's server sends.
    prompt = tokenizer.decode(encoded.input_ids[: encoded.prompt_len])
    assert prompt.endswith("<|im_start|>assistant\n") and example.prompt[-1][1] in prompt


@pytest.mark.slow
def test_an_example_longer_than_the_context_is_named_before_the_model_loads(tmp_path: Path) -> None:
    logged: list[str] = []
    with pytest.raises(SftDataError, match=r"9 example\(s\) longer than max_seq_len \(60 tokens\)") as refused:
        train(params(tmp_path, max_seq_len=60), logged.append)
    assert f"{tmp_path / 'train.jsonl'}:3: 66 tokens > 60" in str(refused.value)
    assert not any(line.startswith("loaded") for line in logged)  # refused before the model was loaded
    assert not (tmp_path / "llm").exists()


@pytest.mark.slow
def test_a_pipes_launched_run_trains_an_adapter_that_peft_and_llama_cpp_load(tmp_path: Path) -> None:
    output = tmp_path / "llm" / "v1"
    extras = {
        "train_path": str(slice_of_bundled(tmp_path / "train.jsonl", 0, 12)),
        "validation_path": str(slice_of_bundled(tmp_path / "validation.jsonl", 100, 4)),
        "base_gguf": BASE,
        "output_dir": str(output),
        "max_steps": 3,
        "batch_size": 2,
        "learning_rate": 1e-3,
        "progress_every_s": 0.0,
        "write_merged": True,
    }

    @dg.asset
    def tiny_adapter(context: dg.AssetExecutionContext, training_launcher: TrainingLauncherResource):
        return training_launcher.run(context, extras, module=LLM_TRAINING_MODULE).get_materialize_result()

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [tiny_adapter], resources={"training_launcher": TrainingLauncherResource()}, instance=instance
        )
        assert result.success
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("training: step 3/3" in line and "tokens/s" in line for line in logs)
    reported = {k: v.value for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}
    assert reported["steps"] == 3 and reported["train_examples"] == 12 and reported["validation_examples"] == 4
    assert reported["finetuned_val_loss"] < reported["base_val_loss"]
    assert 0 <= reported["finetuned_val_exact_match"] <= 1 and reported["train_tokens_per_second"] > 0
    assert reported["adapter_gguf_bytes"] == (output / ADAPTER_GGUF).stat().st_size
    manifest = json.loads((output / "training.json").read_text())
    assert manifest["metrics"]["steps"] == 3 and manifest["params"]["lora_r"] == 16
    assert not list(output.parent.glob(".*"))  # no scratch folder left beside the version

    config = json.loads((output / ADAPTER_DIR / "adapter_config.json").read_text())
    assert config["r"] == 16 and set(config["target_modules"]) >= {"q_proj", "down_proj"}
    # The merged model is a plain transformers model (no GGUF quantizer left in its config).
    merged = json.loads((output / MERGED_DIR / "config.json").read_text())
    assert "quantization_config" not in merged and merged["model_type"] == "llama"
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(output / MERGED_DIR).num_parameters() > 100_000_000
    # The embedded server starts with the GGUF adapter and answers (ready = a one-token completion).
    with LlamaServer(bundled_gguf_path(), lora_path=output / ADAPTER_GGUF) as server:
        assert server.returncode is None
