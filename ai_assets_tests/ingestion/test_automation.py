"""The nightly schedule and the source-change sensor, evaluated against real folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from ai_assets.defs.ingestion.automation import nightly_rag_refresh, rag_ingestion, source_change_sensor
from ai_assets.resources.sources import DocumentSourcesResource


def evaluate(sources: DocumentSourcesResource, instance: dg.DagsterInstance, cursor: str | None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"document_sources": sources})
    return source_change_sensor.evaluate_tick(context)


def test_sensor_requests_a_run_only_when_a_local_source_changes(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nalpha\n")
    sources = DocumentSourcesResource(sources=f"docs={docs},web=https://example.invalid/page.md")

    first = evaluate(sources, instance, None)
    assert first.run_requests == [] and first.cursor  # baseline recorded, nothing requested
    assert set(json.loads(first.cursor)) == {"docs"}  # URLs are the schedule's job

    unchanged = evaluate(sources, instance, first.cursor)
    assert unchanged.run_requests == []

    (docs / "b.md").write_text("# B\n\nbeta\n")
    added = evaluate(sources, instance, unchanged.cursor or first.cursor)
    assert len(added.run_requests) == 1
    assert added.run_requests[0].tags["changed_sources"] == "docs"
    assert added.cursor != first.cursor

    again = evaluate(sources, instance, added.cursor)
    assert again.run_requests == []

    # An edit that keeps the size still moves the mtime.
    stat = (docs / "a.md").stat()
    (docs / "a.md").write_text("# A\n\nALPHA\n")
    os.utime(docs / "a.md", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    edited = evaluate(sources, instance, added.cursor)
    assert len(edited.run_requests) == 1
    assert edited.run_requests[0].run_key != added.run_requests[0].run_key

    (docs / "b.md").unlink()
    removed = evaluate(sources, instance, edited.cursor)
    assert len(removed.run_requests) == 1


def test_nightly_schedule_targets_the_ingestion_job(instance: dg.DagsterInstance) -> None:
    assert nightly_rag_refresh.cron_schedule == "0 1 * * *"
    assert nightly_rag_refresh.job_name == rag_ingestion.name
    assert nightly_rag_refresh.execution_timezone == os.environ.get("AI_ASSETS_TIMEZONE", "UTC")
    context = dg.build_schedule_context(instance=instance)
    data = nightly_rag_refresh.evaluate_tick(context)
    assert len(data.run_requests) == 1
