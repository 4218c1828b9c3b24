"""Upgrading from the qdrant-client local-mode store of earlier versions: the first run migrates the
folder in place, copying vectors, so nothing is re-embedded and search keeps its alias."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets_tests.corpora import scifact_records, write_markdown_corpus
from ai_assets_tests.ingestion import harness
from ai_assets_tests.ingestion.harness import alias_target, audit, check_results, ingest, materialization

pytestmark = pytest.mark.slow


def test_first_run_on_a_local_mode_folder_migrates_without_re_embedding(
    tmp_path: Path,
    data_dir: Path,
    instance: dg.DagsterInstance,
    embedding_model: EmbeddingModelResource,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_markdown_corpus(tmp_path / "docs", scifact_records(8, offset=500))
    sources = f"docs={tmp_path / 'docs'}"
    # An earlier version's store: the same job on qdrant-client local mode, moved to where it kept it.
    with monkeypatch.context() as patch:
        patch.setattr(harness, "STORE_KIND", "qdrant-client")
        old = materialization(ingest(sources, instance, embedding_model), "document_embeddings")
    for entry in (data_dir / "qdrant" / "qdrant-client").iterdir():
        shutil.move(str(entry), data_dir / "qdrant" / entry.name)
    (data_dir / "qdrant" / "qdrant-client").rmdir()

    result = ingest(sources, instance, embedding_model)
    logged = "\n".join(e.user_message for e in instance.all_logs(result.run_id))
    emb = materialization(result, "document_embeddings")
    assert all(check_results(result).values()), check_results(result)
    assert emb["collection"] == old["collection"] and emb["alias_swapped"] is False
    assert emb["chunks_embedded"] == 0 and emb["chunks_skipped"] == emb["point_count"] == old["point_count"]
    assert alias_target(data_dir) == old["collection"]
    assert audit(data_dir, sources, embedding_model).exact
    assert "from qdrant-client local mode to Qdrant Edge" in logged
    assert f"Migrated collection {old['collection']}: {old['point_count']} points" in logged
    assert (data_dir / "qdrant" / "local-mode-backup" / "meta.json").exists()
