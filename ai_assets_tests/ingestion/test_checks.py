"""The asset checks pass on a healthy index and fail on a damaged one."""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from ai_assets.defs.ingestion.assets import CHUNK_SCHEMA
from ai_assets.defs.ingestion.checks import _probe_chunk, chunk_ids_unique, chunks_not_empty
from ai_assets.lib.tables import TableWriter
from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets_tests.corpora import scifact_records, write_markdown_corpus
from ai_assets_tests.ingestion.harness import alias_target, ingest, open_store, run_index_checks


def chunk_row(chunk_id: str, text: str, tokens: int) -> dict:
    return {
        "chunk_id": chunk_id,
        "doc_id": "docs/a.md",
        "source": "docs",
        "uri": "/a.md",
        "title": "A",
        "chunk_index": 0,
        "chunk_hash": "h",
        "doc_hash": "d",
        "token_count": tokens,
        "text": text,
    }


def table(tmp_path: Path, rows: list[dict]):
    writer = TableWriter(tmp_path / "chunks.parquet", CHUNK_SCHEMA)
    writer.write_many(rows)
    return writer.close()


def test_chunk_checks_pass_and_fail(tmp_path: Path, embedding_model: EmbeddingModelResource) -> None:
    healthy = table(tmp_path, [chunk_row("a", "alpha", 1), chunk_row("b", "beta", 1)])
    assert chunk_ids_unique(document_chunks=healthy).passed
    assert chunks_not_empty(document_chunks=healthy, embedding_model=embedding_model).passed

    duplicated = table(tmp_path, [chunk_row("a", "alpha", 1), chunk_row("a", "alpha", 1)])
    result = chunk_ids_unique(document_chunks=duplicated)
    assert not result.passed and result.metadata["duplicate_ids"].value == 1

    bad = table(tmp_path, [chunk_row("a", "  ", 0), chunk_row("b", "long " * 300, 300)])
    result = chunks_not_empty(document_chunks=bad, embedding_model=embedding_model)
    assert not result.passed
    assert result.metadata["empty_chunks"].value == 1
    assert result.metadata["chunks_over_model_limit"].value == 1
    assert result.metadata["examples"].value == "docs/a.md (empty), docs/a.md (300 tokens)"
    # Unicode whitespace is empty too, whatever the token count says.
    blank = table(tmp_path, [chunk_row("c", "\u2003\u3000\n", 1)])
    assert chunks_not_empty(document_chunks=blank, embedding_model=embedding_model).metadata["empty_chunks"].value == 1


def test_the_smoke_probe_is_the_smallest_chunk_id_with_text_of_its_own() -> None:
    def probe(rows: list[tuple[str, str]], tries: int = 64) -> str | None:
        ids, hashes = zip(*rows, strict=True) if rows else ((), ())
        return _probe_chunk(pa.table({"chunk_id": list(ids), "chunk_hash": list(hashes)}, schema=SMOKE), tries)

    rows = [("c", "h3"), ("a", "h1"), ("d", "h1"), ("b", "h2")]
    assert probe(rows) == "b"  # "a" shares its text with "d"
    # The first tries all shared: the whole column is grouped, with the same answer.
    duplicated = [(f"a{i:03d}", f"dup{i // 2}") for i in range(200)] + [("z", "alone"), ("y", "also alone")]
    assert probe(duplicated, tries=5) == probe(duplicated, tries=500) == "y"
    assert probe([("a", "h"), ("b", "h")]) is None and probe([]) is None


SMOKE = pa.schema([("chunk_id", pa.string()), ("chunk_hash", pa.string())])


@pytest.mark.slow
@pytest.mark.usefixtures("store_kind")
def test_index_checks_fail_on_a_damaged_index(
    tmp_path: Path, data_dir: Path, instance: dg.DagsterInstance, embedding_model: EmbeddingModelResource
) -> None:
    write_markdown_corpus(tmp_path / "docs", scifact_records(4, offset=400))
    sources = f"docs={tmp_path / 'docs'}"
    assert ingest(sources, instance, embedding_model).success
    healthy = run_index_checks(sources, instance, embedding_model)
    assert {name: e.passed for name, e in healthy.items()} == {
        "point_count_matches_chunks": True,
        "vector_dimension_matches_model": True,
        "smoke_retrieval": True,
    }
    # Nothing changed since the run's own probe: the check reuses its verification.
    assert healthy["smoke_retrieval"].metadata["verified_this_run"].value is False

    collection = alias_target(data_dir)
    with open_store(data_dir) as store:
        stray = str(uuid.uuid4())
        store.upsert(collection, [stray], [[0.1] * 384], [{"doc_id": "x", "source": "docs"}])
        probe = healthy["smoke_retrieval"].metadata["probe_chunk_id"].value
        # The probe's vector replaced by an unrelated one: it must no longer be found first.
        store.upsert(collection, [probe], [[1.0] + [0.0] * 383], [{}])

    damaged = run_index_checks(sources, instance, embedding_model)
    assert damaged["point_count_matches_chunks"].passed is False
    assert damaged["point_count_matches_chunks"].metadata["stale_points"].value == 1
    assert damaged["smoke_retrieval"].passed is False
    assert damaged["smoke_retrieval"].metadata["verified_this_run"].value is True
    assert damaged["vector_dimension_matches_model"].passed is True

    # The next materialization repairs the index and the checks pass again.
    repaired = ingest(sources, instance, embedding_model)
    assert all(e.passed for e in repaired.get_asset_check_evaluations())
    events = {e.asset_key.to_user_string(): e for e in repaired.get_asset_materialization_events()}
    metadata = events["document_embeddings"].materialization.metadata
    assert metadata["points_repaired"].value == 1 and metadata["chunks_deleted"].value == 1
