"""`deployment_checks`: the command a team puts in its own CI, run the way that CI runs it (issue 12, part 4).

A deployment is built with the README's commands (ingest the bundled corpus, score it), then the checks
job runs against it through `dagster job execute` and `dg launch`: exit 0 while the deployment is sound,
non-zero, naming the check, once a quality gate or the index is broken.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from ai_assets.definitions import defs
from ai_assets.defs.operations.automation import DEPLOYED_STATE
from ai_assets_tests.corpora import REPO_ROOT
from ai_assets_tests.dagster_processes import make_dagster_home, process_env
from ai_assets_tests.ingestion.harness import open_store

BIN = Path(sys.executable).parent
CHECKS_COMMAND = [str(BIN / "dagster"), "job", "execute", "-m", "ai_assets.definitions", "-j", "deployment_checks"]


def test_every_check_is_in_the_ci_job_or_left_out_for_a_reason() -> None:
    graph = defs.resolve_asset_graph()
    job = defs.resolve_job_def("deployment_checks")
    in_job = set(job.asset_layer.asset_graph.asset_check_keys)
    assert in_job == {key for key in graph.asset_check_keys if key.asset_key in {a.key for a in DEPLOYED_STATE}}
    # The rest: checks evaluated inside their asset (inference, per partition) and the training gates,
    # which judge one candidate inside its own run. A new check must be placed on one side or the other.
    left_out = {(key.asset_key.to_user_string(), key.name) for key in graph.asset_check_keys - in_job}
    assert left_out == {
        ("inference_outputs", "one_output_per_input"),
        ("inference_outputs", "error_rate_within_threshold"),
        ("model_evaluation", "candidate_passes_gate"),
        ("llm_evaluation", "llm_candidate_passes_gate"),
    }
    assert not job.asset_layer.executable_asset_keys, "the CI job must not materialize anything"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The README's deployment on the embedded defaults: the bundled corpus ingested and scored
    (retrieval metrics only: RAG_EVAL_MAX_ANSWERED=0 keeps the LLM out of it)."""
    root = tmp_path_factory.mktemp("deployment")
    home = make_dagster_home(root / "dagster_home")
    env = process_env(home, AI_ASSETS_DATA_DIR=str(root / "data"), RAG_EVAL_MAX_ANSWERED="0")
    env.pop("AI_ASSETS_SOURCES", None)
    for job in ("rag_ingestion", "rag_evaluation"):
        done = run([str(BIN / "dagster"), "job", "execute", "-m", "ai_assets.definitions", "-j", job], env)
        assert done.returncode == 0, f"{job}:\n{done.stdout[-3000:]}"
    yield env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    done.stdout += done.stderr
    return done


def evaluations(env: dict[str, str], run_id: str) -> dict[str, bool]:
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        events = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    return {e.dagster_event.event_specific_data.check_name: e.dagster_event.event_specific_data.passed for e in events}


def last_run_id(env: dict[str, str]) -> str:
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="deployment_checks"), limit=1)
    return runs[0].run_id


@pytest.mark.slow
def test_a_sound_deployment_passes_with_both_clis(deployment: dict[str, str]) -> None:
    done = run(CHECKS_COMMAND, deployment)
    assert done.returncode == 0, done.stdout[-3000:]
    results = evaluations(deployment, last_run_id(deployment))
    assert results == dict.fromkeys(
        {"chunk_ids_unique", "chunks_not_empty", "point_count_matches_chunks", "vector_dimension_matches_model",
         "smoke_retrieval", "metrics_meet_thresholds", "no_regression"}, True
    )  # fmt: skip
    # `dg launch` (the dg CLI, from the project folder) runs the same job.
    launched = run([str(BIN / "dg"), "launch", "--job", "deployment_checks"], deployment)
    assert launched.returncode == 0, launched.stdout[-3000:]
    assert all(evaluations(deployment, last_run_id(deployment)).values())


@pytest.mark.slow
def test_a_failed_quality_gate_fails_the_ci_command(deployment: dict[str, str]) -> None:
    # The team raises its bar above what the deployed index scores.
    done = run(CHECKS_COMMAND, {**deployment, "RAG_THRESHOLDS": '{"ndcg_at_10": 0.999}'})
    assert done.returncode != 0
    assert "Asset check 'metrics_meet_thresholds' on 'rag_quality_metrics' did not pass" in done.stdout
    results = evaluations(deployment, last_run_id(deployment))
    assert results["metrics_meet_thresholds"] is False
    # One failure does not hide the others' verdicts: the index checks still ran and passed.
    assert results["point_count_matches_chunks"] and results["smoke_retrieval"]


@pytest.mark.slow
def test_a_broken_index_fails_the_ci_command(deployment: dict[str, str]) -> None:
    # Something outside ai_assets deleted a point from the live collection: search lost a chunk.
    data = Path(deployment["AI_ASSETS_DATA_DIR"])
    with open_store(data) as store:
        collection = store.alias_target("knowledge-base")
        victim = next(store.scroll(collection, ["doc_id"]))[0][0]
        store.delete(collection, [victim])
    try:
        done = run(CHECKS_COMMAND, deployment)
        assert done.returncode != 0
        assert "Asset check 'point_count_matches_chunks' on 'document_embeddings' did not pass" in done.stdout
        assert evaluations(deployment, last_run_id(deployment))["point_count_matches_chunks"] is False
    finally:
        # Re-ingesting restores the point (the module's other tests share this deployment).
        restored = run(
            [str(BIN / "dagster"), "job", "execute", "-m", "ai_assets.definitions", "-j", "rag_ingestion"], deployment
        )
        assert restored.returncode == 0, restored.stdout[-3000:]
