"""The code location through Dagster's own CLI, in subprocesses, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ai_assets_tests.corpora import REPO_ROOT, scifact_records, write_markdown_corpus

DAGSTER = str(Path(sys.executable).parent / "dagster")


def run(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([DAGSTER, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "AI_ASSETS_DATA_DIR": str(tmp_path / "data"),
    }


def test_definitions_validate_without_heavy_imports(cli_env: dict[str, str]) -> None:
    result = run(["definitions", "validate", "-m", "ai_assets.definitions"], cli_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr
    # The webserver and daemon import the code location often: heavy ML libraries must load lazily.
    probe = (
        "import sys; import ai_assets.definitions; "
        "print(','.join(m for m in ('torch', 'sentence_transformers', 'transformers', 'ragas', 'llama_cpp', 'peft') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=cli_env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported when the code location loads: {out.stdout.strip()}"


@pytest.mark.slow
def test_cli_materialize_ingests_and_runs_checks(tmp_path: Path, cli_env: dict[str, str]) -> None:
    write_markdown_corpus(tmp_path / "docs", scifact_records(3, offset=500))
    env = {**cli_env, "AI_ASSETS_SOURCES": f"docs={tmp_path / 'docs'}"}
    result = run(["asset", "materialize", "-m", "ai_assets.definitions", "--select", "group:ingestion"], env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for asset in ("raw_documents", "document_chunks", "document_embeddings"):
        assert f"Materialized value {asset}" in output
    for check in ("chunk_ids_unique", "chunks_not_empty", "point_count_matches_chunks", "smoke_retrieval"):
        assert f"Asset check '{check}'" in output and "passed" in output
    assert "RUN_SUCCESS" in output
    store = tmp_path / "data" / "qdrant"
    assert (store / "ai_assets_store.json").exists() and (store / "aliases.json").exists()
