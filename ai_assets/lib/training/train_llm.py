"""LoRA supervised fine-tuning of the embedded LLM (SmolLM2-135M-Instruct), loaded straight from its GGUF.

Runs in its own process, launched through Dagster Pipes like the embedding trainer (`train_embeddings`):
a local subprocess, or a Kubernetes pod on a GPU node; the same code either way. Parameters come in as
Pipes extras (`LlmTrainingParams` fields); progress (step/total, loss, tokens a second, ETA) reaches the
run log at least every `progress_every_s`, and the metrics come back as the asset's materialization.

    python -m ai_assets.lib.training.train_llm   # under a Pipes launcher

A plain PyTorch loop over a peft LoRA model, not trl's `SFTTrainer`: the loss is on the answer tokens
only (the prompt is context, not something to imitate), which is a dozen lines here, while trl would be
another large dependency with its own pins for the same loop; and the progress lines, the step budget
and the before/after validation pass are this project's own either way.

Written once under `output_dir`, whole or not at all (built in a scratch folder, then renamed):
    adapter/        the peft adapter (safetensors + config): what vLLM's --lora-modules loads
    adapter.gguf    the same adapter as a llama.cpp LoRA: what the embedded server loads (--lora_path)
    merged/         with `write_merged`: base + adapter as one transformers model (bf16)
    training.json   parameters and metrics
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ai_assets.lib.training.extras import from_extras
from ai_assets.lib.training.gate import exact_match
from ai_assets.lib.training.sft_data import SftDataError, SftExample, check_lengths, read_sft_jsonl

__all__ = ["ADAPTER_DIR", "ADAPTER_GGUF", "LlmTrainingParams", "check_params", "train"]

ADAPTER_DIR = "adapter"
ADAPTER_GGUF = "adapter.gguf"
MERGED_DIR = "merged"
MANIFEST = "training.json"
# The attention and MLP projections of a Llama block: every linear layer LoRA can adapt, and every one
# the GGUF converter maps.
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
IGNORE = -100  # the label torch's cross-entropy skips: prompt and padding tokens


@dataclass(frozen=True)
class LlmTrainingParams:
    train_path: str  # SFT JSONL (chat messages or prompt/completion), see `sft_data`
    validation_path: str
    base_gguf: str  # a local GGUF file of a Llama-architecture model (nothing is downloaded)
    output_dir: str  # written whole, or not at all
    max_steps: int = 120
    batch_size: int = 4
    learning_rate: float = 5e-4
    warmup_fraction: float = 0.1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(ALL_PROJECTIONS))
    max_seq_len: int = 512
    seed: int = 1
    device: str = "cpu"
    min_examples: int = 8
    progress_every_s: float = 10.0
    exact_match: bool = True  # also score greedy answers with transformers (the gate scores llama.cpp's)
    write_merged: bool = False

    @classmethod
    def from_extras(cls, extras: dict[str, Any]) -> LlmTrainingParams:
        return from_extras(cls, extras)


class LlmTrainingInputError(ValueError):
    """Parameters or data that cannot train the LLM: raised before the model is loaded."""


def check_params(params: LlmTrainingParams) -> tuple[list[SftExample], list[SftExample]]:
    """(train, validation) examples, after checking what would otherwise fail minutes into training."""
    base = Path(params.base_gguf)
    if not base.is_file():
        raise LlmTrainingInputError(f"base_gguf {base}: no such file; models are loaded from local paths only")
    if Path(params.output_dir).exists():
        raise LlmTrainingInputError(f"{params.output_dir} already exists: a model version is written once, never over")
    for name in ("max_steps", "batch_size", "lora_r", "lora_alpha", "max_seq_len"):
        if getattr(params, name) < 1:
            raise LlmTrainingInputError(f"{name} {getattr(params, name)}: must be at least 1")
    if not 0 <= params.lora_dropout < 1:
        raise LlmTrainingInputError(f"lora_dropout {params.lora_dropout}: must be in [0, 1)")
    if not params.learning_rate > 0:
        raise LlmTrainingInputError(f"learning_rate {params.learning_rate}: must be above 0")
    unknown = sorted(set(params.target_modules) - set(ALL_PROJECTIONS))
    if unknown or not params.target_modules:
        raise LlmTrainingInputError(
            f"target_modules {params.target_modules}: each must be one of {', '.join(ALL_PROJECTIONS)}"
        )
    train_examples = read_sft_jsonl(Path(params.train_path))
    validation = read_sft_jsonl(Path(params.validation_path))
    if len(train_examples) < params.min_examples:
        raise LlmTrainingInputError(
            f"{params.train_path}: {len(train_examples)} training examples, fewer than min_examples "
            f"({params.min_examples}); add training data or lower the minimum"
        )
    if params.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise LlmTrainingInputError(f"device {params.device!r}: torch sees no CUDA device on this machine")
    return train_examples, validation


# --- tokens -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """One example as token ids, and which of them the loss is on (the answer and its end-of-turn)."""

    input_ids: list[int]
    labels: list[int]
    prompt_len: int


def prompt_text(tokenizer: Any, example: SftExample) -> str:
    """The prompt as the model sees it at inference: the GGUF's own chat template (the one llama.cpp's
    server applies), ending with the assistant's turn opened."""
    return tokenizer.apply_chat_template(example.prompt_chat(), add_generation_prompt=True, tokenize=False)


def end_of_turn(tokenizer: Any) -> str:
    """What closes an assistant turn in the chat template: trained after each answer, so the fine-tuned
    model stops after the answer instead of running on to `max_tokens`."""
    marker = "<|im_end|>"
    return marker if marker in tokenizer.get_vocab() else tokenizer.eos_token


def encode(tokenizer: Any, example: SftExample) -> Encoded:
    # Prompt and answer tokenised apart and joined: the boundary is exact, whatever the tokenizer would
    # merge across it.
    prompt = tokenizer(prompt_text(tokenizer, example), add_special_tokens=False)["input_ids"]
    answer = tokenizer(example.answer + end_of_turn(tokenizer), add_special_tokens=False)["input_ids"]
    return Encoded(prompt + answer, [IGNORE] * len(prompt) + answer, len(prompt))


def _batch(encoded: Sequence[Encoded], pad_id: int, device: str) -> dict[str, Any]:
    import torch

    width = max(len(e.input_ids) for e in encoded)
    ids = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in encoded]
    labels = [e.labels + [IGNORE] * (width - len(e.labels)) for e in encoded]
    mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in encoded]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "labels": torch.tensor(labels, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


def _answer_token_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
    """(summed cross-entropy over answer tokens, their count): summed, so a validation loss over batches
    of different answer lengths is the mean per answer token, not a mean of means."""
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    targets = batch["labels"][:, 1:].reshape(-1)
    loss = torch.nn.functional.cross_entropy(shifted, targets, ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())


def validation_loss(model: Any, encoded: Sequence[Encoded], pad_id: int, device: str, batch_size: int) -> float:
    """The mean cross-entropy per answer token on `encoded`."""
    import torch

    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            loss, count = _answer_token_loss(model, _batch(encoded[start : start + batch_size], pad_id, device))
            total, tokens = total + float(loss), tokens + count
    return total / tokens if tokens else float("nan")


def greedy_answers(model: Any, tokenizer: Any, examples: Sequence[SftExample], device: str) -> list[str]:
    """Each prompt's greedy answer, stopped at the end of the turn or a few tokens past the longest
    reference (a label task: a rambling answer is wrong whatever follows)."""
    import torch

    stop = tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))
    longest = max(len(tokenizer(e.answer, add_special_tokens=False)["input_ids"]) for e in examples)
    answers = []
    model.eval()
    with torch.no_grad():
        for example in examples:
            ids = tokenizer(prompt_text(tokenizer, example), add_special_tokens=False, return_tensors="pt")
            ids = ids["input_ids"].to(device)
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=longest + 4,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=stop,
            )
            answers.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return answers


# --- training ---------------------------------------------------------------------------------------


def load_tokenizer(base_gguf: Path) -> Any:
    """The tokenizer (and chat template) of a GGUF file."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_gguf.parent, gguf_file=base_gguf.name)


def load_model(base_gguf: Path, device: str) -> Any:
    """The model of a GGUF file, dequantised to float32 by transformers, on `device`."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_gguf.parent, gguf_file=base_gguf.name).to(device)


def _remove_stale_scratch(output: Path) -> None:
    """Scratch folders of this version left by a training process that was killed (SIGKILL, OOM): their
    process is gone, so nothing will finish them."""
    for scratch in output.parent.glob(f".{output.name}.training-*"):
        try:
            pid = int(scratch.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(scratch, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def train(params: LlmTrainingParams, log: Callable[[str], None]) -> dict[str, Any]:
    """Train, write the adapter (peft and GGUF) to `params.output_dir`, and return the metrics."""
    train_examples, validation = check_params(params)
    import torch
    from peft import LoraConfig, get_peft_model

    from ai_assets.lib.training.lora_gguf import write_lora_gguf

    random.seed(params.seed)
    torch.manual_seed(params.seed)
    started = time.perf_counter()
    tokenizer = load_tokenizer(Path(params.base_gguf))
    # Too long for the context: named by file:line before the model loads (sft_data.check_lengths).
    for examples in (train_examples, validation):
        check_lengths(examples, lambda e: len(encode(tokenizer, e).input_ids), params.max_seq_len)
    model = load_model(Path(params.base_gguf), params.device)
    log(f"loaded {Path(params.base_gguf).name} in {time.perf_counter() - started:.1f} s")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_encoded = [encode(tokenizer, e) for e in train_examples]
    val_encoded = [encode(tokenizer, e) for e in validation]
    references = [e.answer for e in validation]

    base_loss = validation_loss(model, val_encoded, pad_id, params.device, params.batch_size)
    base_answers = greedy_answers(model, tokenizer, validation, params.device) if params.exact_match else []
    log(f"base model on {len(validation)} validation examples: loss {base_loss:.4f}")

    lora = LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=list(params.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=params.learning_rate)
    warmup = max(1, int(params.max_steps * params.warmup_fraction))

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to zero
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (params.max_steps - step) / max(1, params.max_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    log(
        f"training LoRA r={params.lora_r} on {', '.join(params.target_modules)} ({trainable:,} parameters) "
        f"with {len(train_encoded)} examples: {params.max_steps} steps of {params.batch_size} on {params.device}"
    )
    order: list[int] = []
    tokens_seen, losses = 0, []
    began = last = time.perf_counter()
    model.train()
    for step in range(1, params.max_steps + 1):
        if len(order) < params.batch_size:  # a fresh shuffled pass over the data when the last runs out
            fresh = list(range(len(train_encoded)))
            random.shuffle(fresh)
            order += fresh
        picked, order = order[: params.batch_size], order[params.batch_size :]
        batch = _batch([train_encoded[i] for i in picked], pad_id, params.device)
        loss_sum, count = _answer_token_loss(model, batch)
        loss = loss_sum / max(count, 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += int(batch["attention_mask"].sum())
        losses.append(loss.item())
        now = time.perf_counter()
        if now - last >= params.progress_every_s or step == params.max_steps:
            last = now
            elapsed = now - began
            recent = losses[-10:]
            log(
                f"training: step {step}/{params.max_steps}, loss {sum(recent) / len(recent):.4f}, "
                f"{tokens_seen / elapsed:.0f} tokens/s, ETA {(params.max_steps - step) * elapsed / step:.0f} s"
            )
    train_seconds = time.perf_counter() - began

    tuned_loss = validation_loss(model, val_encoded, pad_id, params.device, params.batch_size)
    tuned_answers = greedy_answers(model, tokenizer, validation, params.device) if params.exact_match else []
    log(f"fine-tuned model on the validation examples: loss {tuned_loss:.4f} (base {base_loss:.4f})")

    output = Path(params.output_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_scratch(output)
    scratch = output.with_name(f".{output.name}.training-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        with warnings.catch_warnings():
            # peft looks for the base's config.json to see whether the vocabulary changed; a GGUF base has
            # none, and the vocabulary is not trained here.
            warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)
            model.save_pretrained(scratch / ADAPTER_DIR)
        tokenizer.save_pretrained(scratch / ADAPTER_DIR)
        gguf_stats = write_lora_gguf(scratch / ADAPTER_DIR, Path(params.base_gguf), scratch / ADAPTER_GGUF)
        if params.write_merged:
            _write_merged(model, tokenizer, scratch / MERGED_DIR)
        metrics = {
            "train_examples": len(train_examples),
            "validation_examples": len(validation),
            "steps": params.max_steps,
            "final_train_loss": round(sum(losses[-10:]) / len(losses[-10:]), 5),
            "base_val_loss": round(base_loss, 5),
            "finetuned_val_loss": round(tuned_loss, 5),
            "base_val_perplexity": round(math.exp(min(base_loss, 50.0)), 4),
            "finetuned_val_perplexity": round(math.exp(min(tuned_loss, 50.0)), 4),
            "train_seconds": round(train_seconds, 2),
            "train_tokens": tokens_seen,
            "train_tokens_per_second": round(tokens_seen / train_seconds, 2) if train_seconds else 0.0,
            "trainable_parameters": trainable,
            "adapter_gguf_bytes": int(gguf_stats["bytes"]),
            "device": params.device,
            "torch_threads": torch.get_num_threads(),
            "params": json.dumps(asdict(params), sort_keys=True),
        }
        if params.exact_match:
            metrics["base_val_exact_match"] = round(exact_match(base_answers, references), 5)
            metrics["finetuned_val_exact_match"] = round(exact_match(tuned_answers, references), 5)
        (scratch / MANIFEST).write_text(json.dumps({"params": asdict(params), "metrics": metrics}, indent=1))
        if output.exists():
            raise FileExistsError(f"{output} appeared while training; this run's model is not written over it")
        os.rename(scratch, output)  # a reader never finds half a model under the final name
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    metrics["model_path"] = str(output)
    return metrics


def _write_merged(model: Any, tokenizer: Any, folder: Path) -> None:
    """Base + adapter folded into one transformers model, in bf16 (half the bytes of float32, and what
    GPU servers load): for servers that take a merged model rather than an adapter."""
    import torch

    merged = model.merge_and_unload()
    # Loaded from a GGUF, the model still names the GGUF quantizer, and transformers refuses to save a
    # quantized model; the weights are plain dequantised tensors by now.
    merged.hf_quantizer = None
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config
    merged.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def main() -> None:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        params = LlmTrainingParams.from_extras(dict(pipes.extras))
        try:
            metrics = train(params, pipes.log.info)
        except SftDataError as err:  # bad data: the message (file:line, field) is the whole story
            raise LlmTrainingInputError(str(err)) from None
        pipes.report_asset_materialization(metadata=metrics)


if __name__ == "__main__":
    main()
