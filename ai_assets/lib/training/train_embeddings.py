"""Fine-tune a sentence-transformers embedding model on (query, positive[, negatives]) pairs.

Runs in its own process, launched through Dagster Pipes: on this machine by `dg.PipesSubprocessClient`, on a
Kubernetes GPU node by `dagster_k8s.PipesK8sClient`; the same code either way. The launcher passes its
parameters as Pipes extras (`TrainingParams` fields); progress goes to the run log as it trains (step/total,
loss, examples a second, ETA, at least every `progress_every_s`), and the result comes back as the asset's
materialization metadata.

    python -m ai_assets.lib.training.train_embeddings   # under a Pipes launcher

The loss is `MultipleNegativesRankingLoss`: every other positive in a batch is a negative for a query, and
any mined hard-negative columns (`negative_1`, ...) add more. `NO_DUPLICATES` batches keep one text from
appearing twice in a batch, which would otherwise be scored as its own negative.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ai_assets.lib.training.extras import from_extras

__all__ = ["TrainingParams", "check_params", "read_pairs", "train"]

PAIRS_COLUMNS = ("anchor", "positive")


@dataclass(frozen=True)
class TrainingParams:
    pairs_path: str  # JSONL: {"anchor": query, "positive": text, "negative_1": text, ...} per line
    base_model: str  # a local sentence-transformers folder (nothing is downloaded)
    output_dir: str  # the fine-tuned model is written here, whole, or not at all
    epochs: float = 1.0
    max_steps: int = -1  # > 0 caps the steps (a quick run), whatever `epochs` says
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_fraction: float = 0.1
    seed: int = 1
    device: str = "cpu"
    min_pairs: int = 8
    progress_every_s: float = 10.0

    @classmethod
    def from_extras(cls, extras: dict[str, Any]) -> TrainingParams:
        return from_extras(cls, extras)


class TrainingInputError(ValueError):
    """Parameters or data that cannot train a model: raised before the model is loaded."""


def read_pairs(path: Path) -> list[dict[str, str]]:
    """The training rows of a JSONL file, each checked: an error names the file and line."""
    rows, problems = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"{path}:{number}: invalid JSON ({err.msg})")
                continue
            if not isinstance(row, dict) or any(not isinstance(row.get(c), str) or not row[c] for c in PAIRS_COLUMNS):
                problems.append(f"{path}:{number}: needs non-empty text fields {', '.join(PAIRS_COLUMNS)}")
                continue
            rows.append(row)
    if problems:
        shown = "\n  ".join(problems[:10])
        raise TrainingInputError(f"{len(problems)} bad training row(s):\n  {shown}")
    return rows


def check_params(params: TrainingParams) -> list[dict[str, str]]:
    """The training rows, after checking everything that would otherwise fail minutes into training."""
    if (
        not (Path(params.base_model) / "config.json").exists()
        and not (Path(params.base_model) / "modules.json").exists()
    ):
        raise TrainingInputError(
            f"base model {params.base_model!r} is not a sentence-transformers model folder (no modules.json or "
            "config.json there); models are loaded from local paths only"
        )
    if Path(params.output_dir).exists():
        raise TrainingInputError(f"{params.output_dir} already exists: a model version is written once, never over")
    pairs_path = Path(params.pairs_path)
    if not pairs_path.is_file():
        raise TrainingInputError(f"training pairs file {pairs_path} does not exist")
    if params.batch_size < 2:
        raise TrainingInputError(f"batch_size {params.batch_size}: in-batch negatives need at least 2")
    rows = read_pairs(pairs_path)
    if len(rows) < params.min_pairs:
        raise TrainingInputError(
            f"{pairs_path}: {len(rows)} training pairs, fewer than min_pairs ({params.min_pairs}); "
            "add training data or lower the minimum"
        )
    negative_columns = {frozenset(k for k in row if k.startswith("negative_")) for row in rows}
    if len(negative_columns) > 1:
        raise TrainingInputError(f"{pairs_path}: rows differ in their negative_* columns; give every row as many")
    return rows


def train(params: TrainingParams, log: Callable[[str], None]) -> dict[str, Any]:
    """Train, write the model to `params.output_dir`, and return its metrics."""
    rows = check_params(params)
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import TrainerCallback

    columns = [*PAIRS_COLUMNS, *sorted(k for k in rows[0] if k.startswith("negative_"))]
    dataset = Dataset.from_dict({c: [row[c] for row in rows] for c in columns})
    model = SentenceTransformer(params.base_model, device=params.device)
    steps_per_epoch = math.ceil(len(rows) / params.batch_size)
    total_steps = params.max_steps if params.max_steps > 0 else math.ceil(steps_per_epoch * params.epochs)
    output = Path(params.output_dir)
    scratch = output.with_name(f".{output.name}.training-{os.getpid()}")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(scratch / "checkpoints"),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        warmup_steps=params.warmup_fraction,  # a float below 1 is a fraction of the steps (transformers 5)
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        seed=params.seed,
        save_strategy="no",
        logging_steps=1,
        report_to=[],
        use_cpu=params.device == "cpu",
        disable_tqdm=True,
    )

    class Progress(TrainerCallback):
        """A run-log line at least every `progress_every_s`: step/total, loss, examples/s and ETA."""

        def __init__(self) -> None:
            self.started = self.last = time.monotonic()
            self.loss = float("nan")

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])
            now = time.monotonic()
            if now - self.last >= params.progress_every_s or state.global_step == total_steps:
                self.last = now
                elapsed = now - self.started
                rate = state.global_step * params.batch_size / elapsed if elapsed else 0.0
                eta = (total_steps - state.global_step) * elapsed / state.global_step if state.global_step else 0
                log(
                    f"training: step {state.global_step}/{total_steps}, loss {self.loss:.4f}, "
                    f"{rate:.1f} examples/s, ETA {eta:.0f} s"
                )

    log(
        f"training {params.base_model} on {len(rows)} pairs ({len(columns) - 2} mined negatives each), "
        f"{total_steps} steps"
    )
    started = time.perf_counter()
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=MultipleNegativesRankingLoss(model),
        callbacks=[Progress()],
    )
    try:
        result = trainer.train()
        seconds = time.perf_counter() - started
        # Written aside, then renamed into place: a reader never finds half a model under the final name.
        model.save(str(scratch / "model"))
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.exists():
            raise FileExistsError(f"{output} appeared while training; this run's model is not written over it")
        os.rename(scratch / "model", output)
    finally:
        # A failed or killed-by-exception run leaves nothing beside the model store's versions.
        shutil.rmtree(scratch, ignore_errors=True)
    size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    return {
        "pairs": len(rows),
        "steps": int(result.global_step),
        "train_loss": round(float(result.training_loss), 5),
        "train_seconds": round(seconds, 2),
        "train_examples_per_second": round(result.global_step * params.batch_size / seconds, 2) if seconds else 0.0,
        "model_path": str(output),
        "model_bytes": size,
        "device": params.device,
        "torch_threads": torch.get_num_threads(),
        "params": json.dumps(asdict(params), sort_keys=True),
    }


def main() -> None:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        params = TrainingParams.from_extras(dict(pipes.extras))
        metrics = train(params, pipes.log.info)
        pipes.report_asset_materialization(metadata=metrics)


if __name__ == "__main__":
    main()
