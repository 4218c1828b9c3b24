"""RAG quality end to end, offline: the sample corpus, its golden set, SmolLM2 answers, ragas."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from ai_assets.lib.evaluation.eval_set import GOLDEN_SETS_DIR
from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets.resources.llm import LLMResource
from ai_assets.resources.sources import DocumentSourcesResource, sample_corpus_path
from ai_assets_tests.domains import domain_defs
from ai_assets_tests.ingestion.harness import ingest, open_store, table_rows
from ai_assets_tests.resources import qdrant_on_data_folder, settings_resources

pytestmark = pytest.mark.slow
SAMPLE = f"sample_corpus={sample_corpus_path()}"


def evaluation_defs(embedding_model: EmbeddingModelResource) -> dg.Definitions:
    ingestion, evaluation = domain_defs("ingestion"), domain_defs("evaluation")
    return dg.Definitions(
        assets=[*ingestion.assets, *evaluation.assets],
        asset_checks=[*ingestion.asset_checks, *evaluation.asset_checks],
        resources={
            **settings_resources(),
            "qdrant": qdrant_on_data_folder(lock_timeout_s=30),
            "embedding_model": embedding_model,
            "document_sources": DocumentSourcesResource(sources=SAMPLE),
            "llm": LLMResource(max_in_flight=2),
        },
    )


def evaluate(defs: dg.Definitions, instance: dg.DagsterInstance, answered: int) -> dg.ExecuteInProcessResult:
    job = dg.define_asset_job("evaluate_only", selection=dg.AssetSelection.groups("evaluation")).resolve(
        asset_graph=defs.resolve_asset_graph(), resource_defs=defs.resources
    )
    return job.execute_in_process(
        instance=instance,
        run_config={
            "ops": {"rag_quality_metrics": {"config": {"max_answered_questions": answered, "answer_max_tokens": 48}}}
        },
        raise_on_error=False,
    )


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == asset:
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise AssertionError(f"{asset} not materialized")


def test_quality_metrics_offline_then_a_regression_is_caught(
    data_dir: Path, instance: dg.DagsterInstance, embedding_model: EmbeddingModelResource
) -> None:
    assert ingest(SAMPLE, instance, embedding_model).success
    defs = evaluation_defs(embedding_model)

    first = evaluate(defs, instance, answered=4)
    assert first.success, first.all_events
    meta = metadata(first, "rag_quality_metrics")
    assert meta["questions"] == 30 and meta["questions_answered"] == 4
    for name in ("ndcg_at_10", "mrr_at_10", "recall_at_10", "hit_rate_at_5", "ragas_score"):
        assert 0.0 <= meta[name] <= 1.0, name
    assert meta["ndcg_at_10"] >= 0.5  # the golden set was written against these pages
    assert meta["relevant_docs_not_indexed"] == 0 and meta["questions_with_unindexed_relevant_docs"] == 0
    assert {"semantic_similarity", "rouge_l", "non_llm_string_similarity", "non_llm_context_recall"} <= set(
        meta["metrics"]
    )
    # Reference sentences are compared as the chunks holding them: context recall reflects retrieval
    # (recall@3 of this golden set is near 1), not the length mismatch between a sentence and a chunk.
    assert meta["reference_contexts_aligned_to_chunks"] == meta["reference_contexts"] > 0
    assert meta["non_llm_context_recall"] >= 0.5
    rows = [json.loads(line) for line in Path(meta["per_question"]).read_text().splitlines()]
    assert len(rows) == 30 and sum(1 for r in rows if r.get("answer")) >= 3  # SmolLM2 answered
    # The ten worst questions as a table, worst first, with the per-question results' own values.
    assert [c.name for c in meta["worst_questions"].schema.columns] == [
        "id",
        "question",
        "ndcg_at_10",
        "first_relevant_rank",
        "answer",
        "answer_error",
    ]
    worst = table_rows(meta["worst_questions"])
    by_id = {r["id"]: r for r in rows}
    assert len(worst) == 10 and len({w["id"] for w in worst}) == 10
    assert [w["ndcg_at_10"] for w in worst] == sorted(w["ndcg_at_10"] for w in worst)
    assert worst[0]["ndcg_at_10"] == round(min(r["ndcg_at_10"] for r in rows), 4)
    for w in worst:
        assert w["question"] == by_id[w["id"]]["question"]
        assert abs(w["ndcg_at_10"] - by_id[w["id"]]["ndcg_at_10"]) < 1e-4
        # The answer on one line, clipped to 200 characters.
        answer = (by_id[w["id"]].get("answer") or "").replace("\n", " ")
        assert answer.startswith((w["answer"] or "").removesuffix("…")) and bool(w["answer"]) == bool(answer)
        # nDCG@10 is above 0 exactly when a relevant document is among the first ten.
        rank = w["first_relevant_rank"]
        assert (rank is not None and rank <= 10) == (w["ndcg_at_10"] > 0), w
    eval_set = metadata(first, "rag_eval_set")
    assert eval_set["dagster/row_count"] == eval_set["questions"] == 30
    checks = {e.check_name: e.passed for e in first.get_asset_check_evaluations()}
    assert checks == {"metrics_meet_thresholds": True, "no_regression": True}

    # Remove most of the knowledge base behind the alias: retrieval collapses, the gates must say so.
    with open_store(data_dir) as store:
        keep = "sample_corpus/concepts/rag-chunking-strategies.md"
        collection = store.alias_target("knowledge-base")
        assert collection is not None
        doomed = [pid for pid, payload in store.iter_points(collection, ["doc_id"]) if payload["doc_id"] != keep]
        store.delete(collection, doomed)
    second = evaluate(defs, instance, answered=0)
    assert not second.success  # blocking checks failed
    checks = {e.check_name: e for e in second.get_asset_check_evaluations()}
    assert checks["no_regression"].passed is False
    assert "ndcg_at_10" in checks["no_regression"].metadata["regressions"].value
    assert checks["metrics_meet_thresholds"].passed is False
    # The judged documents are gone from the index: counted and named, not silently scored 0.
    meta = metadata(second, "rag_quality_metrics")
    golden = [json.loads(line) for line in (GOLDEN_SETS_DIR / "sample_corpus.jsonl").read_text().splitlines()]
    expected = [q for q in golden if any(doc != keep for doc in q["relevant_doc_ids"])]
    assert meta["questions_with_unindexed_relevant_docs"] == len(expected) > 0
    assert meta["relevant_docs_not_indexed"] == sum(sum(doc != keep for doc in q["relevant_doc_ids"]) for q in expected)
    logs = instance.all_logs(second.run_id)
    named = [r.user_message for r in logs if "not in the index, so they score 0" in r.user_message]
    assert named and expected[0]["id"] in named[0]


def test_new_embeddings_trigger_a_new_evaluation(
    data_dir: Path, instance: dg.DagsterInstance, embedding_model: EmbeddingModelResource
) -> None:
    defs = evaluation_defs(embedding_model)
    assert ingest(SAMPLE, instance, embedding_model).success
    assert evaluate(defs, instance, answered=0).success
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert baseline.total_requested == 0  # nothing changed since the evaluation

    assert ingest(SAMPLE, instance, embedding_model).success  # a new document_embeddings materialization
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
    assert after.get_num_requested(dg.AssetKey("rag_quality_metrics")) == 1
