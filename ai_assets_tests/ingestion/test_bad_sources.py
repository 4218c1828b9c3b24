"""Bad sources are reported by name, the rest ingests, and nothing already indexed is lost."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets_tests.corpora import scifact_records, write_markdown_corpus
from ai_assets_tests.http_fixture import Routes, serve
from ai_assets_tests.ingestion.harness import (
    check_results,
    ingest,
    materialization,
    open_store,
    table_rows,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("store_kind")]


def points_of(data_dir: Path, doc_id: str) -> set[str]:
    with open_store(data_dir) as store:
        return {
            point_id
            for point_id, payload in store.iter_points("knowledge-base", ["doc_id"])
            if payload["doc_id"] == doc_id
        }


def problems_of(raw: dict) -> str:
    """The problems preview (a table: source, where, problem), one problem a line."""
    rows = table_rows(raw["problems_preview"])
    assert rows and all(set(r) == {"source", "where", "problem"} and r["problem"] for r in rows), rows
    return "\n".join(f"{r['source']} | {r['where']} | {r['problem']}" for r in rows)


def warnings_of(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(e.user_message for e in instance.all_logs(result.run_id) if e.level >= 30)


def test_unreadable_sources_are_reported_and_keep_their_points(
    tmp_path: Path, data_dir: Path, instance: dg.DagsterInstance, embedding_model: EmbeddingModelResource
) -> None:
    docs = tmp_path / "docs"
    good = write_markdown_corpus(docs, scifact_records(3, offset=300))
    (docs / "records.jsonl").write_text(
        '{"_id": "r1", "title": "Zebrafish", "text": "Zebrafish regenerate fin tissue."}\n'
        '{"_id": "r2", "title": "Broken", "text": "no closing brace"\n'
    )
    (docs / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (docs / "empty.md").write_text("\n\n")
    routes = Routes(pages={"/page.md": (200, "text/markdown", b"# Remote page\n\nServed over HTTP for the test.\n")})
    with serve(routes) as base:
        url = f"{base}/page.md"
        sources = f"docs={docs},web={url},ghost={tmp_path / 'does-not-exist'}"

        first = ingest(sources, instance, embedding_model, http_timeout_s="2.0")
        assert first.success
        raw = materialization(first, "raw_documents")
        assert raw["documents"] == 3 + 1 + 1  # markdown pages, the valid JSONL record, the URL
        assert raw["sources_unavailable"] == 1
        preview = problems_of(raw)
        assert f"{docs / 'records.jsonl'}:2" in preview  # malformed JSONL named as file:line
        assert "latin1.txt" in preview and "empty.md" in preview and "does-not-exist" in preview
        log = warnings_of(instance, first)
        assert "ghost" in log and "records.jsonl:2" in log
        assert all(check_results(first).values()), check_results(first)
        url_points = points_of(data_dir, url)
        page_points = points_of(data_dir, f"docs/{good[0].name}")
        assert url_points and page_points

        # The server now answers 404 and one page stops decoding: both keep what they had indexed.
        routes.pages["/page.md"] = (404, "text/plain", b"gone")
        good[0].write_bytes(b"\xff\xfe broken bytes")
        second = ingest(sources, instance, embedding_model, http_timeout_s="2.0")
    assert second.success
    emb = materialization(second, "document_embeddings")
    assert emb["points_preserved"] == len(url_points) + len(page_points)
    assert emb["chunks_deleted"] == 0
    assert points_of(data_dir, url) == url_points
    assert points_of(data_dir, f"docs/{good[0].name}") == page_points
    raw = materialization(second, "raw_documents")
    assert "HTTP 404" in problems_of(raw) and raw["sources_unavailable"] == 2
    assert all(check_results(second).values()), check_results(second)


def test_links_out_of_the_folder_and_oversized_files_are_reported_and_never_indexed(
    tmp_path: Path, data_dir: Path, instance: dg.DagsterInstance, embedding_model: EmbeddingModelResource
) -> None:
    docs = tmp_path / "docs"
    pages = write_markdown_corpus(docs, scifact_records(2, offset=310))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "hostname.txt").write_text("ingest-host-7f3a secret machine name\n")
    (docs / "hostname.txt").symlink_to(outside / "hostname.txt")
    (docs / "etc").symlink_to(outside, target_is_directory=True)
    (docs / "loop").symlink_to(".", target_is_directory=True)
    limit = max(p.stat().st_size for p in pages) + 100
    sources = f"docs={docs}"

    first = ingest(sources, instance, embedding_model, max_file_bytes=limit)
    assert first.success
    raw = materialization(first, "raw_documents")
    assert raw["documents"] == 2
    preview = problems_of(raw)
    log = warnings_of(instance, first)
    for link in ("hostname.txt", "etc", "loop"):
        assert str(docs / link) in preview and str(docs / link) in log
    assert "AI_ASSETS_FOLLOW_EXTERNAL_SYMLINKS" in preview
    assert points_of(data_dir, "docs/hostname.txt") == set()
    kept = points_of(data_dir, f"docs/{pages[0].name}")
    assert kept

    # The page grows past the limit: reported with its size and the setting, its points stay.
    pages[0].write_text(pages[0].read_text() + "\n\nMore text. " * (limit // 10))
    size = pages[0].stat().st_size
    second = ingest(sources, instance, embedding_model, max_file_bytes=limit)
    assert second.success
    raw = materialization(second, "raw_documents")
    assert raw["documents"] == 1
    message = f"too large: {size} bytes, over the {limit}-byte limit for one document"
    assert message in problems_of(raw) and "LOCAL_MAX_FILE_BYTES" in problems_of(raw)
    assert f"{pages[0]}: {message}" in warnings_of(instance, second)
    emb = materialization(second, "document_embeddings")
    assert emb["points_preserved"] == len(kept) and emb["chunks_deleted"] == 0
    assert points_of(data_dir, f"docs/{pages[0].name}") == kept
    assert all(check_results(second).values()), check_results(second)
