"""Unchanged path sources are copied from the previous documents table instead of re-read: the digest
that decides it, and `raw_documents` run twice on a real instance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ai_assets.defs.ingestion.assets import raw_documents
from ai_assets.lib.arrow_digest import update_with_lines
from ai_assets.lib.ingestion.local_files import LocalSettings
from ai_assets.lib.ingestion.source_digest import source_digest
from ai_assets.lib.ingestion.sources import SourceSpec, parse_source_specs
from ai_assets.resources.sources import DocumentSourcesResource
from ai_assets_tests.corpora import scifact_records, write_markdown_corpus
from ai_assets_tests.ingestion.harness import materialization
from ai_assets_tests.resources import settings_resources


def spec_of(location: Path, name: str = "docs") -> SourceSpec:
    return parse_source_specs(f"{name}={location}")[0]


def test_update_with_lines_hashes_exactly_the_joined_lines() -> None:
    values = [f"id-{i}" for i in range(5000)] + ["", "ü\u2003", "a\nb"]
    expected = hashlib.sha256("".join(f"{v}\n" for v in values[3:4003]).encode()).hexdigest()
    for kind in (pa.string(), pa.large_string()):
        sliced = pa.array(values, kind).slice(3, 4000)
        chunked = pa.chunked_array([sliced.slice(0, 1234), sliced.slice(1234)])
        for column in (sliced, chunked):
            digest = hashlib.sha256()
            update_with_lines(digest, column, block=777)
            assert digest.hexdigest() == expected, (kind, type(column))
    empty = hashlib.sha256()
    update_with_lines(empty, pa.array([], pa.string()))
    assert empty.hexdigest() == hashlib.sha256().hexdigest()
    with pytest.raises(ValueError, match="nulls"):
        update_with_lines(hashlib.sha256(), pa.array(["a", None]))


def test_the_digest_follows_every_file_byte_name_and_setting(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    pages = write_markdown_corpus(docs, scifact_records(3, offset=40))
    spec = spec_of(docs)
    first = source_digest(spec)
    assert first is not None and source_digest(spec) == first

    original = pages[1].read_bytes()
    pages[1].write_bytes(original.replace(b"e", b"E", 1))  # one byte, same size
    assert source_digest(spec) not in (None, first)
    pages[1].write_bytes(original)
    assert source_digest(spec) == first  # content, not timestamps

    pages[2].rename(docs / "renamed.md")
    assert source_digest(spec) != first
    (docs / "renamed.md").rename(pages[2])
    (docs / "new.md").write_text("# New\n\nA page added later.\n")
    assert source_digest(spec) != first
    (docs / "new.md").unlink()
    assert source_digest(spec) == first

    assert source_digest(spec, LocalSettings(max_file_bytes=123)) != first
    assert source_digest(spec_of(docs, name="other")) != first
    # Nothing to promise for what cannot be listed or is fetched: those are read every time.
    assert source_digest(spec_of(tmp_path / "missing")) is None
    assert source_digest(parse_source_specs("web=http://127.0.0.1:9/page.md")[0]) is None


def materialize_documents(sources: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        [raw_documents],
        resources={**settings_resources(), "document_sources": DocumentSourcesResource(sources=sources)},
        instance=instance,
    )
    assert result.success
    return result


def stored_rows(result: dg.ExecuteInProcessResult) -> list[dict]:
    return pq.read_table(materialization(result, "raw_documents")["path"]).to_pylist()


def data_version(result: dg.ExecuteInProcessResult) -> str:
    (event,) = result.get_asset_materialization_events()
    return event.materialization.tags["dagster/data_version"]


@pytest.mark.usefixtures("data_dir")
def test_unchanged_sources_are_copied_and_changed_ones_read(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    pages = write_markdown_corpus(tmp_path / "docs", scifact_records(4, offset=60))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in scifact_records(3, offset=70)))
    sources = f"docs={tmp_path / 'docs'},corpus={corpus}"

    first = materialize_documents(sources, instance)
    assert materialization(first, "raw_documents")["sources_reused"] == 0
    first_rows = stored_rows(first)  # read now: the IO manager prunes older tables

    again = materialize_documents(sources, instance)
    meta = materialization(again, "raw_documents")
    assert meta["sources_reused"] == 2 and meta["documents"] == 7
    assert meta["characters"] == materialization(first, "raw_documents")["characters"]
    # Row for row what reading would give, and the same data version: downstream sees no change.
    assert stored_rows(again) == first_rows and data_version(again) == data_version(first)

    pages[0].write_text(pages[0].read_text() + "\nOne more sentence about zebrafish.\n")
    changed = materialize_documents(sources, instance)
    assert materialization(changed, "raw_documents")["sources_reused"] == 1  # the JSONL file only
    rows = stored_rows(changed)
    assert [r["doc_id"] for r in rows] == [r["doc_id"] for r in first_rows]  # the order is kept
    assert "zebrafish" in next(r["text"] for r in rows if r["doc_id"] == f"docs/{pages[0].name}")
    assert data_version(changed) != data_version(first)

    # Read afresh, the changed source gives what the copy now gives.
    fresh = materialize_documents(sources, instance)
    assert stored_rows(fresh) == rows and data_version(fresh) == data_version(changed)


@pytest.mark.usefixtures("data_dir")
def test_a_source_with_problems_is_read_again_so_they_are_reported_again(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "r1", "title": "Fins", "text": "Zebrafish regenerate fins."}\n{"_id": "r2", "text"\n')
    sources = f"corpus={corpus}"
    for _ in range(2):
        meta = materialization(materialize_documents(sources, instance), "raw_documents")
        assert meta["sources_reused"] == 0 and meta["problems"] == 1 and meta["documents"] == 1
