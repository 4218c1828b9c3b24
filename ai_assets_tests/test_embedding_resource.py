"""The embedding resource: config read without torch, offline loading, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from ai_assets.resources.embeddings import EmbeddingModelResource


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
