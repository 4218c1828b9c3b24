"""RAG quality: retrieval metrics and ragas metrics on an evaluation set, after every index change."""

import asyncio
import json
import math
import time

import dagster as dg

from ai_assets.lib.evaluation.coverage import describe, indexed_doc_ids, unindexed_judgements
from ai_assets.lib.evaluation.eval_set import EvalQuestion, load_eval_set
from ai_assets.lib.evaluation.metrics import per_query_retrieval, retrieval_report
from ai_assets.lib.evaluation.reference_chunks import align_reference_contexts
from ai_assets.lib.evaluation.retrieval import search_chunks, search_documents
from ai_assets.lib.evaluation.synthesis import pick_chunks, question_prompts, synthetic_questions
from ai_assets.lib.llm.answering import answer_with, build_prompt
from ai_assets.lib.metadata import preview_table, table_metadata
from ai_assets.lib.tables import ParquetTable
from ai_assets.resources.data_folder import DataFolderResource
from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets.resources.evaluation import EvaluationResource, JudgeResource
from ai_assets.resources.llm import LLMResource
from ai_assets.resources.qdrant import QdrantResource

OWNERS = ["team:ml-platform"]
GROUP = "evaluation"


class EvalSetConfig(dg.Config):
    """Where the golden questions come from, for this run. Each field left empty (None) takes the
    deployment's setting from the `evaluation` resource (RAG_EVAL_SET, RAG_EVAL_DOC_ID_PREFIX,
    RAG_EVAL_SYNTHESIZE)."""

    # A JSONL file or a BEIR folder; "" = the bundled golden set.
    location: str | None = None
    # BEIR corpora are ingested with a source name; its document ids carry it as a prefix.
    beir_doc_id_prefix: str | None = None
    # Extra questions the LLM writes from indexed chunks (marked synthetic); 0 = golden questions only.
    synthesize_questions: int | None = None


@dg.asset(
    group_name=GROUP,
    kinds={"python"},
    owners=OWNERS,
    code_version="1",
    # Built on first sight and refreshed with the chunks, so the metrics below can follow the index.
    automation_condition=dg.AutomationCondition.eager(),
)
def rag_eval_set(
    context: dg.AssetExecutionContext,
    config: EvalSetConfig,
    evaluation: EvaluationResource,
    llm: LLMResource,
    # Synthetic questions are written from these chunks. Optional: the golden set alone needs no index,
    # and loading it reads only the table's small handle, never its rows.
    document_chunks: ParquetTable | None,
) -> dg.Output[list[EvalQuestion]]:
    """The questions the knowledge base is judged on: question, reference answer, reference contexts
    and the documents that should be retrieved. Golden ones (bring your own with `RAG_EVAL_SET`), plus
    optionally questions the LLM writes from indexed chunks, marked synthetic."""
    location = evaluation.eval_set if config.location is None else config.location
    prefix = evaluation.doc_id_prefix if config.beir_doc_id_prefix is None else config.beir_doc_id_prefix
    synthesize = evaluation.synthesize_questions if config.synthesize_questions is None else config.synthesize_questions
    questions, description = load_eval_set(location, beir_doc_id_prefix=prefix)
    context.log.info(f"{len(questions)} questions from {description}")
    if synthesize > 0:
        synthetic = _synthesize(context, llm, document_chunks, synthesize)
        questions = [*questions, *synthetic]
        description += f" + {len(synthetic)} synthetic"
    return dg.Output(
        questions,
        metadata={
            # The UI's row count: one row per question.
            **table_metadata(len(questions)),
            "questions": len(questions),
            "with_reference_answer": sum(1 for q in questions if q.reference_answer),
            "with_reference_contexts": sum(1 for q in questions if q.reference_contexts),
            "synthetic": sum(1 for q in questions if q.synthetic),
            "source": description,
        },
    )


def _synthesize(
    context: dg.AssetExecutionContext, llm: LLMResource, table: ParquetTable | None, count: int
) -> list[EvalQuestion]:
    if table is None:
        raise FileNotFoundError("synthesize_questions needs document_chunks: materialize the ingestion first")
    chunks = pick_chunks(list(table.iter_rows(columns=["chunk_id", "doc_id", "text"])), count)
    replies = asyncio.run(_answer(context, llm, question_prompts(chunks), max_tokens=64))
    questions, problems = synthetic_questions(chunks, replies)
    for problem in problems:
        context.log.warning(f"no synthetic question from {problem}")
    return questions


class QualityConfig(dg.Config):
    top_k_contexts: int = 3
    # Generating answers costs LLM calls: 0 skips the answer metrics (retrieval metrics always run).
    # None = the `evaluation` resource's (RAG_EVAL_MAX_ANSWERED).
    max_answered_questions: int | None = None
    answer_max_tokens: int = 128
    max_context_chars: int = 3000
    # LLM-judged ragas metrics (faithfulness, answer relevancy, LLM context precision/recall) run only
    # with a judge: the `judge` resource (RAGAS_JUDGE_*), never run config, so its key stays a secret.


@dg.asset(
    group_name=GROUP,
    kinds={"qdrant", "python"},
    owners=OWNERS,
    code_version="1",
    deps=["document_embeddings"],
    pool="qdrant",
    # Re-evaluated whenever the index (or the evaluation set) changes.
    automation_condition=dg.AutomationCondition.eager(),
)
def rag_quality_metrics(
    context: dg.AssetExecutionContext,
    config: QualityConfig,
    qdrant: QdrantResource,
    embedding_model: EmbeddingModelResource,
    llm: LLMResource,
    evaluation: EvaluationResource,
    judge: JudgeResource,
    data_folder: DataFolderResource,
    rag_eval_set: list[EvalQuestion],
    # Reference passages are aligned to the chunks holding them. Optional, and only the table's handle
    # is loaded: rows are read only when some answered question has reference contexts.
    document_chunks: ParquetTable | None,
) -> dg.MaterializeResult:
    """How well the knowledge base retrieves and answers: nDCG@10, MRR@10, recall@k and hit rate@k
    from Qdrant search, and ragas metrics on answers generated over the retrieved contexts.

    One number per metric in the metadata (the UI plots them over time), a `ragas_score` summary, the
    per-question results as a JSONL artifact, and the worst questions as a table.
    """
    from ai_assets.lib.evaluation.ragas_metrics import (
        ERRORS_KEY,
        QuestionSample,
        merge_rows,
        metric_means,
        ragas_score,
        score_with_judge,
        score_without_llm,
    )

    started = time.perf_counter()
    questions = rag_eval_set
    store = qdrant.get_store(context.log)
    vectors = embedding_model.encode([q.question for q in questions])
    ranked = search_documents(store, qdrant.alias, vectors, top_documents=100)
    rankings = {q.id: [doc for doc, _ in docs] for q, docs in zip(questions, ranked, strict=True)}
    qrels = {q.id: q.relevant for q in questions if q.relevant}
    retrieval = retrieval_report(rankings, qrels)
    per_question = per_query_retrieval(rankings, qrels)
    retrieval_s = time.perf_counter() - started
    context.log.info(f"retrieval over {len(questions)} questions in {retrieval_s:.1f} s: {retrieval}")
    indexed = indexed_doc_ids(store, qdrant.alias)
    unindexed = unindexed_judgements(questions, indexed)
    for line in describe(unindexed, indexed):
        context.log.warning(line)

    max_answered = (
        evaluation.max_answered_questions if config.max_answered_questions is None else config.max_answered_questions
    )
    answered = questions[: max(max_answered, 0)]
    contexts = search_chunks(store, qdrant.alias, vectors[: len(answered)], config.top_k_contexts) if answered else []
    # Every read of the index is done: release the embedded store's folder before minutes of LLM calls,
    # so ingestion runs waiting on its lock can go ahead.
    qdrant.close()

    # Reference passages as the chunks that contain them, so context precision/recall mean something.
    references = {r for q in answered for r in q.reference_contexts}
    aligned = (
        align_reference_contexts(references, (r["text"] for r in document_chunks.iter_rows(columns=["text"])))
        if references and document_chunks is not None
        else {}
    )

    answer_metrics: dict[str, float] = {}
    rows: dict[str, dict] = {
        q.id: {"id": q.id, "question": q.question, **per_question.get(q.id, {})} for q in questions
    }
    if answered:
        prompts = [
            build_prompt(q.question, [text for _, text, _ in hits], config.max_context_chars)
            for q, hits in zip(answered, contexts, strict=True)
        ]
        answers = asyncio.run(_answer(context, llm, prompts, config.answer_max_tokens))
        samples = [
            QuestionSample(
                question=q.question,
                answer=answer or "",
                contexts=[text for _, text, _ in hits],
                reference=q.reference_answer,
                reference_contexts=[aligned.get(r, r) for r in q.reference_contexts] or None,
            )
            for q, hits, (answer, _) in zip(answered, contexts, answers, strict=True)
        ]
        scores = score_without_llm(samples, embedding_model.encode)
        if judge.configured:
            scores = merge_rows(scores, score_with_judge(samples, judge.judge_config(), embedding_model.encode))
        for q, (answer, error), score in zip(answered, answers, scores, strict=True):
            rows[q.id].update({"answer": answer, "answer_error": error, **score})
        answer_metrics = metric_means(scores)
        summary = ragas_score(scores)
        if math.isfinite(summary):  # NaN when no ragas metric had a value: nothing to summarise
            answer_metrics["ragas_score"] = summary
        answer_metrics["answer_failures"] = float(sum(1 for a, _ in answers if a is None))
        # Malformed judge output and metric failures are recorded per question, never raised.
        answer_metrics["metric_errors"] = float(sum(len(s.get(ERRORS_KEY, {})) for s in scores))

    artifact = data_folder.evaluation_dir / f"rag_quality_{context.run.run_id}.jsonl"
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_text("".join(json.dumps(row, default=str) + "\n" for row in rows.values()))
    metrics = {**retrieval, **answer_metrics}
    return dg.MaterializeResult(
        metadata={
            **{name: round(value, 5) for name, value in metrics.items()},
            "questions": len(questions),
            "questions_answered": len(answered),
            # Judged documents the index lacks score 0 whatever the retriever does: a wrong id prefix or
            # a missing source, not bad retrieval.
            "relevant_docs_not_indexed": sum(len(u.doc_ids) for u in unindexed),
            "questions_with_unindexed_relevant_docs": len(unindexed),
            "reference_contexts_aligned_to_chunks": len(aligned),
            "reference_contexts": len(references),
            "collection_alias": qdrant.alias,
            "model": embedding_model.name,
            "answer_model": llm.default_model if answered else "none",
            "judge_model": judge.model if judge.configured else "none (LLM-judged metrics skipped)",
            "retrieval_s": round(retrieval_s, 3),
            "duration_s": round(time.perf_counter() - started, 3),
            # All metrics in one entry too: the checks compare runs through it.
            "metrics": dg.MetadataValue.json({k: round(v, 5) for k, v in metrics.items()}),
            "per_question": dg.MetadataValue.path(str(artifact)),
            "worst_questions": _worst_table(list(rows.values()), rankings, qrels),
        }
    )


async def _answer(context: dg.AssetExecutionContext, llm: LLMResource, prompts, max_tokens: int):
    # Supervised: an embedded server that dies mid-way is restarted once, a second death fails the step.
    return await answer_with(llm, context.log, prompts, max_tokens)


WORST_QUESTION_COLUMNS = [
    dg.TableColumn("id"),
    dg.TableColumn("question"),
    dg.TableColumn("ndcg_at_10", "float", description="empty for a question without judged documents"),
    dg.TableColumn(
        "first_relevant_rank", "int", description="1-based rank of the first relevant document in the top 100"
    ),
    dg.TableColumn("answer", description="the generated answer, when this question was answered"),
    dg.TableColumn("answer_error", description="why no answer was generated"),
]


def _worst_table(
    rows: list[dict],
    rankings: dict[str, list[str]],
    qrels: dict[str, dict[str, float]],
    limit: int = 10,
) -> dg.TableMetadataValue:
    """The `limit` questions with the lowest nDCG@10 (unjudged ones count as 0), worst first."""
    ordered = sorted(rows, key=lambda r: (r.get("ndcg_at_10", 0.0), r["id"]))[:limit]
    records = []
    for r in ordered:
        relevance = qrels.get(r["id"], {})
        ranked = rankings.get(r["id"], [])
        records.append(
            {
                "id": r["id"],
                "question": r["question"],
                "ndcg_at_10": round(r["ndcg_at_10"], 4) if "ndcg_at_10" in r else None,
                "first_relevant_rank": next((i for i, doc in enumerate(ranked, 1) if relevance.get(doc, 0) > 0), None),
                "answer": r.get("answer"),
                "answer_error": r.get("answer_error"),
            }
        )
    return preview_table(WORST_QUESTION_COLUMNS, records, width=200)
