"""kill -9 in the middle of embedding, then run again: the collection equals the sources exactly."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets_tests.corpora import scifact_records, write_markdown_corpus
from ai_assets_tests.ingestion.harness import alias_target, audit, check_results, chunk_config, ingest, materialization

pytestmark = pytest.mark.slow


def stored_points(collection_dir: Path) -> int:
    """Points committed to an embedded-Qdrant collection, read straight from its sqlite file."""
    db = collection_dir / "storage.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM points").fetchone()[0]
    except sqlite3.OperationalError:  # table not created yet, or locked for a moment
        return 0


def test_sigkill_while_rebuilding_then_rerun(
    tmp_path: Path, data_dir: Path, instance: dg.DagsterInstance, embedding_model: EmbeddingModelResource
) -> None:
    write_markdown_corpus(tmp_path / "docs", scifact_records(60, offset=200))
    sources = f"docs={tmp_path / 'docs'}"
    assert ingest(sources, instance, embedding_model, chunk_size=200).success
    serving = alias_target(data_dir)

    # New chunking settings start a new collection; the CLI run is killed once some points are in it.
    config = chunk_config(chunk_size=64, chunk_overlap=8)
    config["ops"]["document_embeddings"] = {"config": {"encode_window": 16, "upsert_batch_size": 16}}
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    config_file = tmp_path / "run_config.yaml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "AI_ASSETS_SOURCES": sources, "EMBEDDING_THREADS": "1"}
    cmd = [
        str(Path(sys.executable).parent / "dagster"),
        "job", "execute", "-m", "ai_assets.definitions", "-j", "rag_ingestion",
        "-c", str(config_file),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    collections = data_dir / "qdrant" / "collection"
    deadline = time.monotonic() + 240
    killed_at = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            building = [d for d in collections.iterdir() if d.name != serving] if collections.exists() else []
            if building and (killed_at := stored_points(building[0])) >= 16:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-way"
    assert killed_at >= 16

    # Search still sees the old, complete collection.
    assert alias_target(data_dir) == serving
    assert audit(data_dir, sources, embedding_model, chunk_size=200).exact

    rerun = ingest(sources, instance, embedding_model, chunk_size=64, chunk_overlap=8)
    emb = materialization(rerun, "document_embeddings")
    assert all(check_results(rerun).values()), check_results(rerun)
    assert emb["alias_swapped"] is True and alias_target(data_dir) == emb["collection"]
    # What the killed run committed is kept; only the rest is written now.
    assert emb["chunks_skipped"] >= killed_at
    assert emb["chunks_embedded"] + emb["chunks_reused"] == emb["point_count"] - emb["chunks_skipped"]
    report = audit(data_dir, sources, embedding_model, chunk_size=64, chunk_overlap=8)
    assert report.exact, report
