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
from ai_assets_tests.ingestion.harness import (
    alias_target,
    audit,
    check_results,
    chunk_config,
    ingest,
    materialization,
    open_store,
)

pytestmark = pytest.mark.slow


def run_log_has(dagster_home: Path, text: str) -> bool:
    """Whether any run under `dagster_home` has logged a message containing `text` (sqlite event logs)."""
    for db in (dagster_home / "history" / "runs").glob("*.db") if (dagster_home / "history").exists() else []:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                rows = conn.execute("SELECT event FROM event_logs WHERE event LIKE ?", (f"%{text}%",)).fetchall()
        except sqlite3.OperationalError:  # not created yet, or locked for a moment
            continue
        if rows:
            return True
    return False


def test_sigkill_while_rebuilding_then_rerun(
    tmp_path: Path, data_dir: Path, instance: dg.DagsterInstance, embedding_model: EmbeddingModelResource
) -> None:
    write_markdown_corpus(tmp_path / "docs", scifact_records(160, offset=200))
    sources = f"docs={tmp_path / 'docs'}"
    assert ingest(sources, instance, embedding_model, chunk_size=200).success
    serving = alias_target(data_dir)

    # New chunking settings start a new collection; the CLI run is killed at its first progress line
    # (10 s into embedding, one thread: a few hundred of its ~1,000 chunks written).
    config = chunk_config(chunk_size=64, chunk_overlap=8)
    config["ops"]["document_embeddings"] = {"config": {"encode_window": 16, "upsert_batch_size": 16}}
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    config_file = tmp_path / "run_config.yaml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "AI_ASSETS_SOURCES": sources,
        "EMBEDDING_THREADS": "1",
        # The same precision as this process's model, so both build the same collection.
        "EMBEDDING_DTYPE": embedding_model.resolved_dtype,
    }
    cmd = [
        str(Path(sys.executable).parent / "dagster"),
        "job", "execute", "-m", "ai_assets.definitions", "-j", "rag_ingestion",
        "-c", str(config_file),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if run_log_has(dagster_home, "embedding: "):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed mid-way"
    with open_store(data_dir) as store:
        building = [c for c in store.collections() if c != serving]
        assert len(building) == 1
        killed_at = store.count(building[0])
    assert killed_at >= 16, "killed before any window was written"

    # Search still sees the old, complete collection.
    assert alias_target(data_dir) == serving
    assert audit(data_dir, sources, embedding_model, chunk_size=200).exact

    rerun = ingest(sources, instance, embedding_model, chunk_size=64, chunk_overlap=8)
    emb = materialization(rerun, "document_embeddings")
    assert all(check_results(rerun).values()), check_results(rerun)
    assert emb["alias_swapped"] is True and alias_target(data_dir) == emb["collection"]
    # What the killed run committed is kept; only the rest is written now.
    assert emb["chunks_skipped"] == killed_at  # every point the killed run wrote is kept
    assert emb["chunks_embedded"] > 0, "the kill came after the last write"
    assert emb["chunks_embedded"] + emb["chunks_reused"] == emb["point_count"] - emb["chunks_skipped"]
    report = audit(data_dir, sources, embedding_model, chunk_size=64, chunk_overlap=8)
    assert report.exact, report
