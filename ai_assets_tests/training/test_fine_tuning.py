"""The fine-tuning loop end to end on a SciFact slice: real ingestion, real training in a Pipes process,
the gate passing and failing, deployment behind the alias, rollback, and a killed training run."""

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ai_assets.defs.training import assets as training_assets
from ai_assets.defs.training import automation as training_automation
from ai_assets.defs.training import checks as training_checks
from ai_assets.lib.training.registry import Registry
from ai_assets.resources import build_resources
from ai_assets.resources.data_folder import DataFolderResource
from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets.resources.llm import LLMResource
from ai_assets.resources.sources import DocumentSourcesResource
from ai_assets.resources.training import TrainingLauncherResource, TrainingResource
from ai_assets_tests.corpora import SCIFACT
from ai_assets_tests.domains import domain_defs
from ai_assets_tests.inference.openai_server import FakeOpenAIServer
from ai_assets_tests.ingestion.harness import ingest, open_store
from ai_assets_tests.resources import qdrant_on_data_folder, settings_resources

pytestmark = pytest.mark.slow

QUICK_TRAINING = {
    "ops": {
        "training_dataset": {"config": {"min_train_pairs": 8}},
        "fine_tuned_model": {"config": {"max_steps": 3, "batch_size": 8}},
    }
}


@pytest.fixture(scope="module")
def scifact_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BEIR folder: 40 SciFact train queries, their judged abstracts and 60 others as distractors."""
    folder = tmp_path_factory.mktemp("scifact-slice")
    lines = (SCIFACT / "qrels" / "train.tsv").read_text().splitlines()
    judgements = [line.split("\t") for line in lines[1:] if line.strip()]
    queries = list(dict.fromkeys(q for q, _, _ in judgements))[:40]
    kept = [(q, d, s.strip()) for q, d, s in judgements if q in queries]
    relevant_docs = {d for _, d, _ in kept}
    docs, distractors = [], 0
    with (SCIFACT / "corpus.jsonl").open() as corpus:
        for line in corpus:
            record = json.loads(line)
            if record["_id"] in relevant_docs:
                docs.append(line)
            elif distractors < 60:
                docs.append(line)
                distractors += 1
    (folder / "corpus.jsonl").write_text("".join(docs))
    wanted = set(queries)
    with (SCIFACT / "queries.jsonl").open() as source:
        (folder / "queries.jsonl").write_text("".join(q for q in source if json.loads(q)["_id"] in wanted))
    (folder / "qrels").mkdir()
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in kept)
    )
    return folder


def training_defs(scifact: Path, llm: LLMResource | None = None, **training_fields: Any) -> dg.Definitions:
    """Ingestion and training wired as the code location wires them, on the test's data folder."""
    ingestion = domain_defs("ingestion")
    data_folder = build_resources()["data_folder"]
    fields = {"training_set": str(scifact), "doc_id_prefix": "scifact#", **training_fields}
    return dg.Definitions(
        assets=[*ingestion.assets, *dg.load_assets_from_modules([training_assets])],
        asset_checks=[*ingestion.asset_checks, *dg.load_asset_checks_from_modules([training_checks])],
        jobs=[training_automation.fine_tuning, training_automation.rollback_embedding_model],
        resources={
            **settings_resources(),
            "qdrant": qdrant_on_data_folder(lock_timeout_s=30),
            "embedding_model": EmbeddingModelResource(data_folder=data_folder),
            "document_sources": DocumentSourcesResource(sources=f"scifact={scifact / 'corpus.jsonl'}"),
            "llm": llm or LLMResource(max_in_flight=2),
            "training": TrainingResource(data_folder=data_folder, **fields),
            "training_launcher": TrainingLauncherResource(),
        },
    )


def run(defs: dg.Definitions, job: str, instance: dg.DagsterInstance, config: dict | None = None):
    return defs.resolve_job_def(job).execute_in_process(
        run_config=config or {}, instance=instance, raise_on_error=False
    )


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == asset:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise AssertionError(f"{asset} not materialized")


def materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def collections_and_alias(data_dir: Path) -> tuple[list[str], str | None]:
    with open_store(data_dir) as store:
        return store.collections(), store.alias_target("knowledge-base")


def rescore(instance: dg.DagsterInstance, run_id: str) -> dg.RunRequest | dg.SkipReason:
    """What `rescore_after_model_change` answers to the end of run `run_id`."""
    run_record = instance.get_run_by_id(run_id)
    event = next(
        e
        for e in instance.all_logs(run_id)
        if e.dagster_event and e.dagster_event.event_type_value in ("PIPELINE_SUCCESS", "PIPELINE_FAILURE")
    )
    context = dg.build_run_status_sensor_context(
        sensor_name="rescore_after_model_change",
        dagster_instance=instance,
        dagster_run=run_record,
        dagster_event=event.dagster_event,
    )
    return training_automation.rescore_after_model_change(context)


@pytest.fixture
def ingested(data_dir: Path, instance: dg.DagsterInstance, scifact_slice: Path) -> Iterator[dg.Definitions]:
    defs = training_defs(scifact_slice)
    job_result = ingest(f"scifact={scifact_slice / 'corpus.jsonl'}", instance, EmbeddingModelResource())
    assert job_result.success
    yield defs


def test_train_gate_deploy_follow_and_roll_back(
    data_dir: Path, instance: dg.DagsterInstance, scifact_slice: Path, ingested: dg.Definitions
) -> None:
    _, base_collection = collections_and_alias(data_dir)
    defs = training_defs(scifact_slice, min_accuracy="0.0", min_improvement="-1.0")
    result = run(defs, "fine_tuning", instance, QUICK_TRAINING)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert materialized(result) == {"training_dataset", "fine_tuned_model", "model_evaluation", "deployed_model"}

    data = metadata(result, "training_dataset")
    assert data["train_pairs"] >= 8 and data["validation_queries"] >= 1 and data["synthetic_queries"] == 0
    assert data["dagster/row_count"] == data["train_pairs"]
    folder = Path(data["folder"])
    train = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    validation = [json.loads(line) for line in (folder / "validation.jsonl").read_text().splitlines()]
    assert all(row["negative_1"] and row["positive"] != row["negative_1"] for row in train)
    # No document on both sides, and never the test split (its queries are not in the slice at all).
    qrels = {}
    for line in (scifact_slice / "qrels" / "train.tsv").read_text().splitlines()[1:]:
        query, doc, _ = line.split("\t")
        qrels.setdefault(query, set()).add(f"scifact#{doc}")
    train_docs = {doc for row in train for doc in qrels[row["query_id"]]}
    assert not train_docs & {doc for row in validation for doc in row["relevant"]}

    model = metadata(result, "fine_tuned_model")
    assert model["steps"] == 3 and model["reused"] is False and model["model_bytes"] > 1_000_000
    version = model["version"]
    assert Path(model["model_path"]).name == version and (Path(model["model_path"]) / "training.json").exists()
    logs = [r.user_message for r in instance.all_logs(result.run_id)]
    assert any("training: step 3/3" in line and "examples/s" in line for line in logs)

    evaluation = metadata(result, "model_evaluation")
    assert evaluation["gate_passed"] is True and 0 < evaluation["candidate_ndcg_at_10"] <= 1
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()}["candidate_passes_gate"]

    deployed = metadata(result, "deployed_model")
    assert deployed["version"] == version and deployed["previous_version"] == "base"
    collections, alias = collections_and_alias(data_dir)
    assert alias == deployed["collection"] != base_collection and base_collection in collections
    registry = Registry(data_dir / "models")
    assert registry.current.version == version and registry.previous.collection == base_collection

    # The deployment is re-scored on the evaluation set at once; a run that deployed nothing is not.
    assert isinstance(rescore(instance, result.run_id), dg.RunRequest)

    # Ingestion now embeds with the deployed model, and finds its index complete.
    follower = EmbeddingModelResource(data_folder=DataFolderResource(path=str(data_dir)))
    assert follower.name.endswith(f"+ft-{version}") and follower.model_path == Path(model["model_path"])
    again = ingest(f"scifact={scifact_slice / 'corpus.jsonl'}", instance, follower)
    assert again.success and metadata(again, "document_embeddings")["chunks_embedded"] == 0
    assert metadata(again, "document_chunks")["documents_rechunked"] == 0  # same tokenizer, same chunks
    assert collections_and_alias(data_dir)[1] == alias

    # One command back to the base model. Its kept collection is gone (as after a re-chunking ingestion):
    # the rollback rebuilds it from the current chunks, checks it, then swaps.
    with open_store(data_dir) as store:
        store.drop_collection(base_collection)
    back = run(defs, "rollback_embedding_model", instance)
    assert back.success, [e.message for e in back.all_events if e.is_failure]
    rolled = metadata(back, "deployed_model")
    assert rolled["rolled_back_version"] == version and rolled["collection_rebuilt"] is True
    assert collections_and_alias(data_dir)[1] == base_collection
    assert registry.current.version == "base" and registry.previous.version == version
    base_again = EmbeddingModelResource(data_folder=DataFolderResource(path=str(data_dir)))
    assert base_again.name == EmbeddingModelResource().name
    assert ingest(f"scifact={scifact_slice / 'corpus.jsonl'}", instance, base_again).success
    assert collections_and_alias(data_dir)[1] == base_collection

    # The same data and hyper-parameters: the model store already has this version.
    retrained = run(defs, "fine_tuning", instance, QUICK_TRAINING)
    assert retrained.success and metadata(retrained, "fine_tuned_model")["reused"] is True
    assert collections_and_alias(data_dir)[1] == alias


def test_a_failed_gate_keeps_the_deployed_model_serving(
    data_dir: Path, instance: dg.DagsterInstance, scifact_slice: Path, ingested: dg.Definitions
) -> None:
    before = collections_and_alias(data_dir)
    defs = training_defs(scifact_slice, min_improvement="1.0")  # no model gains a whole point of nDCG
    result = run(defs, "fine_tuning", instance, QUICK_TRAINING)
    assert not result.success
    assert "deployed_model" not in materialized(result)
    check = {e.check_name: e for e in result.get_asset_check_evaluations()}["candidate_passes_gate"]
    assert check.passed is False and "TRAINING_MIN_IMPROVEMENT" in check.metadata["failures"].value
    evaluation = metadata(result, "model_evaluation")
    assert evaluation["gate_passed"] is False and evaluation["candidate_collection_dropped"] is True
    assert collections_and_alias(data_dir) == before  # the candidate's index is gone, the alias unmoved
    assert isinstance(rescore(instance, result.run_id), dg.SkipReason)
    assert Registry(data_dir / "models").current is None


def test_a_killed_training_process_fails_with_its_last_lines_and_deploys_nothing(
    data_dir: Path,
    instance: dg.DagsterInstance,
    scifact_slice: Path,
    ingested: dg.Definitions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = collections_and_alias(data_dir)
    script = (
        "import os, signal\nprint('training: step 1/9, loss 2.0', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)"
    )
    monkeypatch.setattr(TrainingLauncherResource, "command", lambda self, module="": [sys.executable, "-c", script])
    result = run(training_defs(scifact_slice), "fine_tuning", instance, QUICK_TRAINING)
    assert not result.success and materialized(result) == {"training_dataset"}
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = str(failure.step_failure_data.error)
    assert "TrainingFailedError" in message and "killed by SIGKILL" in message and "step 1/9, loss 2.0" in message
    assert collections_and_alias(data_dir) == before and Registry(data_dir / "models").current is None
    assert not [p for p in (data_dir / "models").glob("*") if p.name != "registry.json"]


def test_too_little_training_data_stops_before_training(
    data_dir: Path, instance: dg.DagsterInstance, scifact_slice: Path, ingested: dg.Definitions, tmp_path: Path
) -> None:
    tiny = tmp_path / "tiny"
    (tiny / "qrels").mkdir(parents=True)
    (tiny / "queries.jsonl").write_text((scifact_slice / "queries.jsonl").read_text())
    lines = (scifact_slice / "qrels" / "train.tsv").read_text().splitlines()
    (tiny / "qrels" / "train.tsv").write_text("\n".join(lines[:4]) + "\n")
    result = run(training_defs(tiny), "fine_tuning", instance, QUICK_TRAINING)
    assert not result.success and not materialized(result)
    message = str(next(e for e in result.all_events if e.is_step_failure).step_failure_data.error)
    assert "TrainingDataError" in message and ("training pairs" in message or "validation" in message)


def test_without_a_training_set_the_llm_writes_synthetic_questions(
    data_dir: Path, instance: dg.DagsterInstance, scifact_slice: Path, ingested: dg.Definitions
) -> None:
    with FakeOpenAIServer(latency_s=0.0) as server:
        llm = LLMResource(base_url=server.base_url, api_key="sk-test")
        defs = training_defs(scifact_slice, llm=llm, training_set="", synthesize_questions=24)
        job = dg.define_asset_job("dataset_only", selection=["training_dataset"]).resolve(
            asset_graph=defs.resolve_asset_graph(), resource_defs=defs.resources
        )
        config = {"ops": {"training_dataset": {"config": {"min_train_pairs": 8}}}}
        result = job.execute_in_process(instance=instance, run_config=config)
    data = metadata(result, "training_dataset")
    assert data["synthetic_queries"] == 24 and "synthetic" in data["source"]
    rows = [json.loads(line) for line in (Path(data["folder"]) / "train.jsonl").read_text().splitlines()]
    # Each synthetic question's positive is the chunk it was written from.
    assert all(row["query_id"].startswith("synthetic-") and row["anchor"].startswith("echo:") for row in rows)
