"""The embedding resource: config read without torch, offline loading, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ai_assets.resources import embeddings
from ai_assets.resources.embeddings import EmbeddingModelResource, choose_dtype


def test_bundled_model_facts_come_from_its_config_files() -> None:
    model = EmbeddingModelResource()
    assert model.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert (model.dimension, model.max_seq_length, model.max_content_tokens) == (384, 256, 254)
    assert (model.model_path / "model.safetensors").exists()


def test_unknown_model_is_a_clear_error_not_a_download(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="never downloads weights"):
        _ = EmbeddingModelResource(model="nobody/no-such-model").model_path


@pytest.mark.slow
def test_encode_gives_unit_vectors_and_ranks_by_meaning(embedding_model: EmbeddingModelResource) -> None:
    vectors = embedding_model.encode(
        ["Qdrant stores vectors.", "A vector database holds embeddings.", "Bake the bread for an hour."]
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


# --- precision (EMBEDDING_DTYPE) -------------------------------------------------------------------

FP32_IDENTITY = {"model": "sentence-transformers/all-MiniLM-L6-v2", "dimension": 384, "max_seq_length": 256}
SENTENCES = [
    "Qdrant stores vectors.",
    "A vector database holds embeddings.",
    "Bake the bread for an hour.",
    "Dagster materializes software-defined assets on a schedule.",
    "The patients received a placebo for twelve weeks before the trial ended.",
]


@pytest.mark.parametrize(
    ("requested", "native", "fp32_s", "bf16_s", "expected", "said"),
    [
        ("float32", True, 2.0, 1.0, "float32", "EMBEDDING_DTYPE=float32"),
        ("bfloat16", False, None, None, "bfloat16", "EMBEDDING_DTYPE=bfloat16"),
        ("auto", False, 2.0, 1.0, "float32", "no native bfloat16"),
        ("auto", True, None, None, "float32", "no probe timings"),
        ("auto", True, 2.0, 1.0, "bfloat16", "2.00x float32"),
        ("auto", True, 1.2, 1.0, "bfloat16", "1.20x float32"),
        ("auto", True, 1.1, 1.0, "float32", "only 1.10x float32"),
        ("auto", True, 1.0, 2.0, "float32", "only 0.50x float32"),
    ],
)
def test_choose_dtype(
    requested: str, native: bool, fp32_s: float | None, bf16_s: float | None, expected: str, said: str
) -> None:
    dtype, reason = choose_dtype(requested, native, fp32_s, bf16_s)
    assert dtype == expected and said in reason


def test_auto_never_chooses_bfloat16_when_it_is_disabled_for_quality() -> None:
    assert choose_dtype("auto", True, 2.0, 1.0, allow_bf16=False)[0] == "float32"
    assert choose_dtype("bfloat16", True, 2.0, 1.0, allow_bf16=False)[0] == "bfloat16"  # explicit is kept


def test_an_unknown_dtype_is_a_clear_error_naming_the_variable() -> None:
    message = r"EMBEDDING_DTYPE='fp16' is not a precision .* one of auto, float32, bfloat16"
    with pytest.raises(ValueError, match=message):
        _ = EmbeddingModelResource(dtype="fp16").identity
    with pytest.raises(ValueError, match=message):
        choose_dtype("fp16", native_bf16=True)


def test_identity_is_unchanged_for_float32_and_names_bfloat16() -> None:
    # float32 keeps the identity of every collection built before EMBEDDING_DTYPE existed.
    assert EmbeddingModelResource(dtype="float32").identity == FP32_IDENTITY
    assert EmbeddingModelResource(dtype="bfloat16").identity == {**FP32_IDENTITY, "dtype": "bfloat16"}


@pytest.fixture
def auto_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private on-disk cache of auto decisions, and an empty in-process one."""
    cache = tmp_path / "hf" / "embedding_dtype.json"
    monkeypatch.setattr(embeddings, "dtype_cache_file", lambda: cache)
    monkeypatch.setattr(embeddings, "_AUTO_DTYPES", {})
    return cache


def test_auto_is_probed_once_then_read_from_disk(auto_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probes = []
    monkeypatch.setattr(embeddings, "cpu_bf16_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(embeddings, "native_bf16", lambda device: (True, "patched"))
    monkeypatch.setattr(EmbeddingModelResource, "_probe", lambda self: probes.append(self.threads) or (2.0, 1.0))

    model = EmbeddingModelResource()
    assert model.dtype_choice[0] == "bfloat16" and "2.00x float32" in model.dtype_choice[1]
    assert model.identity == {**FP32_IDENTITY, "dtype": "bfloat16"}
    assert probes == [0] and auto_cache.exists()

    # A later process (here: an empty in-process cache) reads the decision instead of probing again.
    monkeypatch.setattr(embeddings, "_AUTO_DTYPES", {})
    assert EmbeddingModelResource().dtype_choice[0] == "bfloat16" and probes == [0]
    # A different key (threads here; torch version, CPU, model or device too) is decided afresh.
    monkeypatch.setattr(EmbeddingModelResource, "_probe", lambda self: probes.append(self.threads) or (1.0, 1.0))
    assert EmbeddingModelResource(threads=1).dtype_choice[0] == "float32" and probes == [0, 1]


def test_auto_without_a_bf16_cpu_flag_is_float32_without_torch_or_probe(
    auto_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args):
        raise AssertionError("must not run")

    monkeypatch.setattr(embeddings, "cpu_bf16_flags", lambda: set())
    monkeypatch.setattr(embeddings, "native_bf16", fail)
    monkeypatch.setattr(EmbeddingModelResource, "_probe", fail)
    dtype, reason = EmbeddingModelResource().dtype_choice
    assert dtype == "float32" and "advertises none of avx512_bf16, amx_bf16" in reason
    assert EmbeddingModelResource().identity == FP32_IDENTITY
    assert not auto_cache.exists()


@pytest.mark.slow
def test_bfloat16_encode_gives_float32_unit_vectors_close_to_float32() -> None:
    import torch

    fp32 = EmbeddingModelResource(dtype="float32").encode(SENTENCES)
    bf16_model = EmbeddingModelResource(dtype="bfloat16")
    bf16 = bf16_model.encode(SENTENCES)
    assert next(bf16_model._load().parameters()).dtype == torch.bfloat16
    assert bf16.shape == (len(SENTENCES), 384) and bf16.dtype == np.float32
    assert np.allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    assert np.sum(fp32 * bf16, axis=1).min() >= 0.99
    assert bf16[0] @ bf16[1] > bf16[0] @ bf16[2] + 0.2
    assert bf16_model.encode([]).shape == (0, 384)


@pytest.mark.slow
def test_real_auto_decision_is_reused_by_a_later_process_without_torch(auto_cache: Path) -> None:
    dtype, reason = EmbeddingModelResource().dtype_choice
    assert dtype in ("float32", "bfloat16") and reason.startswith("auto: ")
    if not embeddings.cpu_bf16_flags():
        return  # decided from /proc/cpuinfo alone: nothing to cache
    assert json.loads(auto_cache.read_text())
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(auto_cache)], capture_output=True, text=True, timeout=300, check=True
    )
    seen = json.loads(child.stdout.strip().splitlines()[-1])
    assert seen == {"dtype": dtype, "identity_has_dtype": dtype == "bfloat16", "torch_imported": False}


CHILD = """
import json, sys
from pathlib import Path
from ai_assets.resources import embeddings
embeddings.dtype_cache_file = lambda: Path(sys.argv[1])
model = embeddings.EmbeddingModelResource()
identity = model.identity
print(json.dumps({"dtype": model.resolved_dtype, "identity_has_dtype": "dtype" in identity,
                  "torch_imported": "torch" in sys.modules}))
"""
