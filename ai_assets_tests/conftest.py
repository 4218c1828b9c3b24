"""Shared fixtures: real Dagster instances, real on-disk Qdrant, real corpora on disk."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from ai_assets.resources.embeddings import EmbeddingModelResource

REPO_ROOT = Path(__file__).resolve().parents[1]
SCIFACT = REPO_ROOT.parent / "shared" / "datasets" / "scifact"


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


def scifact_records(n: int, offset: int = 0) -> list[dict]:
    """The first `n` SciFact abstracts (after `offset`): real scientific prose for realistic chunks."""
    corpus = SCIFACT / "corpus.jsonl"
    if not corpus.exists():
        raise FileNotFoundError(f"{corpus} is missing: the tests read a slice of ../shared/datasets/scifact")
    records = []
    with corpus.open() as f:
        for i, line in enumerate(f):
            if i < offset:
                continue
            if len(records) == n:
                break
            records.append(json.loads(line))
    return records


def write_markdown_corpus(folder: Path, records: list[dict]) -> list[Path]:
    """One Markdown page per record: `# title`, then the abstract split into paragraphs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for record in records:
        sentences = record["text"].split(". ")
        half = max(1, len(sentences) // 2)
        body = ". ".join(sentences[:half]) + "\n\n" + ". ".join(sentences[half:])
        path = folder / f"doc-{record['_id']}.md"
        path.write_text(f"# {record['title']}\n\n{body}\n")
        paths.append(path)
    return paths
