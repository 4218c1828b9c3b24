"""The ingestion job end to end: real Dagster instance, real vector store (both implementations), real model."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from ai_assets.defs.ingestion.assets import CHUNK_SCHEMA, DOCUMENT_SCHEMA
from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets_tests.corpora import scifact_records, write_markdown_corpus
from ai_assets_tests.ingestion.harness import (
    alias_target,
    audit,
    check_results,
    ingest,
    materialization,
    open_store,
    table_rows,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("store_kind")]


def test_incremental_add_change_remove(
    tmp_path: Path,
    data_dir: Path,
    instance: dg.DagsterInstance,
    embedding_model: EmbeddingModelResource,
    store_kind: str,
) -> None:
    docs = write_markdown_corpus(tmp_path / "docs", scifact_records(12))
    sources = f"docs={tmp_path / 'docs'}"

    first = ingest(sources, instance, embedding_model)
    assert first.success
    emb = materialization(first, "document_embeddings")
    assert emb["documents_added"] == 12 and emb["chunks_deleted"] == 0
    assert emb["chunks_embedded"] == emb["point_count"] > 12
    assert all(check_results(first).values()), check_results(first)
    assert audit(data_dir, sources, embedding_model).exact
    points_before = emb["point_count"]
    # The tables carry the metadata the UI understands: the stored file's real row count and columns.
    tables = (("raw_documents", DOCUMENT_SCHEMA, "documents"), ("document_chunks", CHUNK_SCHEMA, "chunks"))
    for asset, schema, count in tables:
        meta = materialization(first, asset)
        stored = pq.read_table(meta["path"])
        assert meta["dagster/row_count"] == stored.num_rows == meta[count] == meta["rows"], asset
        columns = meta["dagster/column_schema"].columns
        assert [c.name for c in columns] == stored.column_names == schema.names, asset
        assert [c.type for c in columns] == [str(t) for t in schema.types], asset
    assert materialization(first, "raw_documents")["dagster/row_count"] == 12
    assert table_rows(materialization(first, "raw_documents")["sources_preview"]) == [
        {"source": "docs", "kind": "path", "location": str(tmp_path / "docs"), "documents": 12, "status": "ok"}
    ]

    # Nothing changed: nothing embedded, nothing written, nothing deleted, and chunks are reused.
    noop = ingest(sources, instance, embedding_model)
    emb = materialization(noop, "document_embeddings")
    assert (emb["chunks_embedded"], emb["chunks_reused"], emb["chunks_deleted"]) == (0, 0, 0)
    assert emb["documents_unchanged"] == 12 and emb["point_count"] == points_before
    chunks_noop = materialization(noop, "document_chunks")
    assert chunks_noop["documents_reused"] == 12 and chunks_noop["documents_rechunked"] == 0
    assert chunks_noop["chunks"] == materialization(first, "document_chunks")["chunks"]  # the table, copied
    assert materialization(noop, "raw_documents")["sources_reused"] == 1  # the folder, unchanged, not re-read
    # The embedded store's sync stamp proves the collection unchanged without a scan; a server's
    # collection (other writers may share it) is always scanned.
    assert emb["points_scanned"] == (0 if store_kind == "edge" else points_before)

    # Change one document (a new last paragraph), delete one, add one.
    docs[3].write_text(docs[3].read_text() + "\nA paragraph added by the test about zebrafish fins.\n")
    docs[5].unlink()
    write_markdown_corpus(tmp_path / "docs", scifact_records(1, offset=100))
    changed = ingest(sources, instance, embedding_model)
    emb = materialization(changed, "document_embeddings")
    assert (emb["documents_added"], emb["documents_changed"], emb["documents_removed"]) == (1, 1, 1)
    assert emb["documents_unchanged"] == 10 and emb["points_scanned"] == points_before
    assert emb["chunks_deleted"] >= 2  # the removed document's chunks and the changed chunk
    assert all(check_results(changed).values()), check_results(changed)
    report = audit(data_dir, sources, embedding_model)
    assert report.exact, report
    # Only text the index had never seen went through the model.
    assert 1 <= emb["chunks_embedded"] <= 1 + materialization(changed, "document_chunks")["chunks"]
    assert emb["chunks_embedded"] + emb["chunks_reused"] == emb["point_count"] - (points_before - emb["chunks_deleted"])
    assert changed.output_for_node("document_chunks") is not None


def test_data_versions_follow_content(
    tmp_path: Path, data_dir: Path, instance: dg.DagsterInstance, embedding_model: EmbeddingModelResource
) -> None:
    docs = write_markdown_corpus(tmp_path / "docs", scifact_records(3, offset=20))
    sources = f"docs={tmp_path / 'docs'}"

    def versions(result: dg.ExecuteInProcessResult) -> dict[str, str]:
        return {
            e.asset_key.to_user_string(): e.materialization.tags["dagster/data_version"]
            for e in result.get_asset_materialization_events()
        }

    first = versions(ingest(sources, instance, embedding_model))
    assert versions(ingest(sources, instance, embedding_model)) == first
    docs[0].write_text(docs[0].read_text() + "\nOne more sentence.\n")
    third = versions(ingest(sources, instance, embedding_model))
    assert all(third[k] != first[k] for k in first), (first, third)


def test_moved_text_reuses_vectors_instead_of_embedding(
    tmp_path: Path, data_dir: Path, instance: dg.DagsterInstance, embedding_model: EmbeddingModelResource
) -> None:
    write_markdown_corpus(tmp_path / "docs", scifact_records(4, offset=40))
    sources = f"docs={tmp_path / 'docs'}"
    first = materialization(ingest(sources, instance, embedding_model), "document_embeddings")
    # A rename changes every document id (so every point id) but no text: nothing to embed.
    for path in sorted((tmp_path / "docs").iterdir()):
        path.rename(path.with_name("renamed-" + path.name))
    moved = materialization(ingest(sources, instance, embedding_model), "document_embeddings")
    assert moved["chunks_embedded"] == 0
    assert moved["chunks_reused"] == first["point_count"] == moved["point_count"]
    assert moved["chunks_deleted"] == first["point_count"]
    assert audit(data_dir, sources, embedding_model).exact


def test_alias_serves_the_complete_collection(
    tmp_path: Path, data_dir: Path, instance: dg.DagsterInstance, embedding_model: EmbeddingModelResource
) -> None:
    write_markdown_corpus(tmp_path / "docs", scifact_records(5, offset=60))
    sources = f"docs={tmp_path / 'docs'}"
    ingest(sources, instance, embedding_model, chunk_size=200)
    first = alias_target(data_dir)
    result = ingest(sources, instance, embedding_model, chunk_size=64, chunk_overlap=8)
    emb = materialization(result, "document_embeddings")
    assert emb["alias_swapped"] is True and emb["collection"] != first
    assert alias_target(data_dir) == emb["collection"]
    assert emb["collections_dropped"] == first
    with open_store(data_dir) as store:
        assert store.collections() == [emb["collection"]]
    assert audit(data_dir, sources, embedding_model, chunk_size=64, chunk_overlap=8).exact
