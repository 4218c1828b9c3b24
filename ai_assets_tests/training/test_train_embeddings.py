"""The training script: its input checks, and a real run launched through Dagster Pipes."""

import json
from pathlib import Path

import dagster as dg
import pytest

from ai_assets.lib.training.train_embeddings import TrainingInputError, TrainingParams, check_params
from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets.resources.training import TrainingLauncherResource
from ai_assets_tests.corpora import scifact_records

BASE_MODEL = str(EmbeddingModelResource().model_path)


def write_pairs(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def scifact_pairs(n: int) -> list[dict]:
    """A query-like title and its abstract: a small, real training set."""
    return [{"anchor": r["title"], "positive": r["text"]} for r in scifact_records(n, offset=500)]


def params(tmp_path: Path, pairs: Path, **overrides: object) -> TrainingParams:
    return TrainingParams(pairs_path=str(pairs), base_model=BASE_MODEL, output_dir=str(tmp_path / "model"), **overrides)


def test_bad_input_is_refused_before_training_starts(tmp_path: Path) -> None:
    good = write_pairs(tmp_path / "good.jsonl", scifact_pairs(10))
    assert len(check_params(params(tmp_path, good))) == 10

    with pytest.raises(TrainingInputError, match="not a sentence-transformers model folder"):
        check_params(TrainingParams(str(good), str(tmp_path / "no-model"), str(tmp_path / "out")))
    with pytest.raises(TrainingInputError, match="fewer than min_pairs"):
        check_params(params(tmp_path, write_pairs(tmp_path / "tiny.jsonl", scifact_pairs(3))))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"anchor": "q", "positive": "p"}\n\n{"anchor": "q2"}\nnot json\n')
    with pytest.raises(TrainingInputError, match=rf"{bad}:3: needs non-empty text fields[\s\S]*{bad}:4: invalid JSON"):
        check_params(params(tmp_path, bad, min_pairs=1))
    mixed = [{**scifact_pairs(1)[0], "negative_1": "x"}, *scifact_pairs(9)]
    with pytest.raises(TrainingInputError, match="negative_"):
        check_params(params(tmp_path, write_pairs(tmp_path / "mixed.jsonl", mixed)))
    with pytest.raises(TrainingInputError, match="at least 2"):
        check_params(params(tmp_path, good, batch_size=1))
    (tmp_path / "model").mkdir()
    with pytest.raises(TrainingInputError, match="already exists"):
        check_params(params(tmp_path, good))
    with pytest.raises(ValueError, match="unknown epoch"):
        TrainingParams.from_extras({"pairs_path": "p", "base_model": "m", "output_dir": "o", "epoch": 1})


@pytest.mark.slow
def test_a_pipes_launched_run_trains_writes_the_model_and_reports(tmp_path: Path) -> None:
    texts = scifact_pairs(13)
    # Each query's mined negative: the next abstract.
    rows = [{**row, "negative_1": other["positive"]} for row, other in zip(texts[:12], texts[1:], strict=True)]
    pairs = write_pairs(tmp_path / "pairs.jsonl", rows)
    output = tmp_path / "models" / "v1"
    extras = {
        "pairs_path": str(pairs),
        "base_model": BASE_MODEL,
        "output_dir": str(output),
        "max_steps": 2,
        "batch_size": 4,
        "progress_every_s": 0.0,
    }

    @dg.asset
    def tiny_model(context: dg.AssetExecutionContext, training_launcher: TrainingLauncherResource):
        return training_launcher.run(context, extras).get_materialize_result()

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [tiny_model], resources={"training_launcher": TrainingLauncherResource()}, instance=instance
        )
        assert result.success
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
    (event,) = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["steps"] == 2 and metadata["pairs"] == 12 and metadata["model_path"] == str(output)
    assert metadata["train_examples_per_second"] > 0 and metadata["model_bytes"] > 10_000_000
    assert any("training: step 2/2, loss" in line and "ETA" in line for line in logs), logs
    # The model is whole under its final name, and nothing is left beside it.
    from sentence_transformers import SentenceTransformer

    vectors = SentenceTransformer(str(output), device="cpu").encode(["zebrafish fin regeneration"])
    assert vectors.shape == (1, 384)
    assert sorted(p.name for p in output.parent.iterdir()) == ["v1"]
