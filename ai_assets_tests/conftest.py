"""Shared fixtures: real Dagster instances, real on-disk Qdrant, real corpora on disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from ai_assets.resources.embeddings import EmbeddingModelResource


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private AI_ASSETS_DATA_DIR: Qdrant folder, tables and caches of one test."""
    folder = tmp_path / "data"
    monkeypatch.setenv("AI_ASSETS_DATA_DIR", str(folder))
    return folder


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="session")
def embedding_model() -> EmbeddingModelResource:
    return EmbeddingModelResource()
