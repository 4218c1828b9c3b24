"""Evaluation benchmark: `rag_quality_metrics` on BEIR SciFact, printed as `key: value` lines.

    python bench/evaluation.py            # ingest SciFact (~10 min), then evaluate its 300 test queries

Figures, measured side by side in one run:
- scifact_ndcg_at_10 / scifact_recall_at_100: the asset's retrieval metrics (published for
  all-MiniLM-L6-v2: 0.64508 and 0.925). The corpus is chunked at 254 tokens, all the model reads.
- eval_vs_encode_ratio: the asset's retrieval evaluation time ÷ (encoding the same queries and running
  the same searches directly, without Dagster or metrics).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SCIFACT = REPO.parent / "shared" / "datasets" / "scifact"


def emit(key: str, value: object) -> None:
    print(f"{key}: {value}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk-size", type=int, default=254)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        os.environ["AI_ASSETS_DATA_DIR"] = str(Path(tmp) / "data")
        run(args)


def run(args: argparse.Namespace) -> None:
    import dagster as dg

    from ai_assets.lib.evaluation.eval_set import load_eval_set
    from ai_assets.lib.evaluation.retrieval import search_documents
    from ai_assets.lib.vector_store.edge import EdgeStore
    from ai_assets.resources.data_folder import data_folder_from_environment as data_dir
    from ai_assets.resources.embeddings import EmbeddingModelResource
    from ai_assets.resources.llm import LLMResource
    from ai_assets.resources.qdrant import QdrantResource
    from ai_assets.resources.sources import DocumentSourcesResource
    from ai_assets_tests.domains import domain_defs
    from ai_assets_tests.resources import settings_resources

    ingestion, evaluation = domain_defs("ingestion"), domain_defs("evaluation")
    model = EmbeddingModelResource()
    model.encode(["warm up"])
    defs = dg.Definitions(
        assets=[*ingestion.assets, *evaluation.assets],
        asset_checks=[*ingestion.asset_checks],
        jobs=ingestion.jobs,
        resources={
            **settings_resources(),
            "qdrant": QdrantResource(data_folder=settings_resources()["data_folder"]),
            "embedding_model": model,
            "document_sources": DocumentSourcesResource(sources=f"scifact={SCIFACT / 'corpus.jsonl'}"),
            "llm": LLMResource(),  # not called: answers are off, retrieval is what is measured
        },
    )
    instance = dg.DagsterInstance.ephemeral()
    started = time.perf_counter()
    ingest = defs.resolve_job_def("rag_ingestion").execute_in_process(
        instance=instance,
        run_config={"ops": {"document_chunks": {"config": {"chunk_size": args.chunk_size, "chunk_overlap": 32}}}},
    )
    assert ingest.success
    emit("scifact_ingest_s", round(time.perf_counter() - started, 1))

    evaluate = dg.materialize(
        [a for a in evaluation.assets],
        instance=instance,
        resources=defs.resources,
        run_config={
            "ops": {
                "rag_eval_set": {"config": {"location": str(SCIFACT), "beir_doc_id_prefix": "scifact#"}},
                "rag_quality_metrics": {"config": {"max_answered_questions": 0}},
            }
        },
        selection=["rag_eval_set", "rag_quality_metrics"],
    )
    assert evaluate.success
    events = {e.asset_key.to_user_string(): e for e in evaluate.get_asset_materialization_events()}
    meta = {k: v.value for k, v in events["rag_quality_metrics"].materialization.metadata.items()}
    emit("scifact_queries", meta["questions"])
    emit("scifact_ndcg_at_10", meta["ndcg_at_10"])
    emit("scifact_recall_at_100", meta["recall_at_100"])
    emit("scifact_mrr_at_10", meta["mrr_at_10"])
    eval_s = meta["retrieval_s"]

    # The same work done directly: encode the queries, run the same searches, nothing else.
    questions, _ = load_eval_set(str(SCIFACT), beir_doc_id_prefix="scifact#")
    with EdgeStore(data_dir() / "qdrant") as store:
        started = time.perf_counter()
        vectors = model.encode([q.question for q in questions])
        search_documents(store, "knowledge-base", vectors, top_documents=100)
        direct_s = time.perf_counter() - started
    emit("eval_retrieval_s", round(eval_s, 3))
    emit("direct_encode_and_search_s", round(direct_s, 3))
    emit("eval_vs_encode_ratio", round(eval_s / direct_s, 3))


if __name__ == "__main__":
    main()
