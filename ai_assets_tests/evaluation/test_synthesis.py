"""Synthetic questions: chosen chunks are stable, replies become questions, failures are reported."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from ai_assets.defs.evaluation.assets import rag_eval_set
from ai_assets.lib.evaluation.synthesis import pick_chunks, synthetic_questions
from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets.resources.llm import LLMResource
from ai_assets_tests.corpora import scifact_records, write_markdown_corpus
from ai_assets_tests.inference.openai_server import FakeOpenAIServer
from ai_assets_tests.ingestion.harness import ingest
from ai_assets_tests.resources import settings_resources


def chunk(i: int) -> dict:
    return {"chunk_id": f"c{i:02d}", "doc_id": f"docs/{i}.md", "text": f"passage {i}"}


def test_pick_chunks_spreads_evenly_in_a_stable_order() -> None:
    rows = [chunk(i) for i in reversed(range(10))]
    assert [c["chunk_id"] for c in pick_chunks(rows, 5)] == ["c00", "c02", "c04", "c06", "c08"]
    assert pick_chunks(rows, 5) == pick_chunks(list(reversed(rows)), 5)
    assert len(pick_chunks(rows, 50)) == 10 and pick_chunks(rows, 0) == []


def test_replies_become_synthetic_questions_and_failures_are_reported() -> None:
    chunks = [chunk(1), chunk(2), chunk(3)]
    questions, problems = synthetic_questions(
        chunks, [('"What is passage 1 about?"', None), (None, "rate_limit (HTTP 429): slow down"), ("  ", None)]
    )
    assert [q.question for q in questions] == ["What is passage 1 about?"]
    assert questions[0].synthetic and questions[0].relevant == {"docs/1.md": 1.0}
    assert questions[0].reference_contexts == ("passage 1",)
    assert problems == ["chunk c02: rate_limit (HTTP 429): slow down", "chunk c03: empty reply"]


def test_eval_set_adds_llm_written_questions(
    tmp_path: Path, data_dir: Path, instance: dg.DagsterInstance, embedding_model: EmbeddingModelResource
) -> None:
    write_markdown_corpus(tmp_path / "docs", scifact_records(3, offset=600))
    assert ingest(f"docs={tmp_path / 'docs'}", instance, embedding_model).success
    with FakeOpenAIServer() as server:
        result = dg.materialize(
            # The chunks come from the ingestion run above, loaded by the tables IO manager.
            [dg.AssetSpec("document_chunks").with_io_manager_key("table_io_manager"), rag_eval_set],
            instance=instance,
            resources={**settings_resources(), "llm": LLMResource(base_url=server.base_url, api_key="k")},
            run_config={"ops": {"rag_eval_set": {"config": {"synthesize_questions": 3}}}},
        )
        assert server.total_requests == 3
    questions = result.output_for_node("rag_eval_set")
    synthetic = [q for q in questions if q.synthetic]
    assert len(questions) == 30 + 3 and len(synthetic) == 3
    assert all(q.question and next(iter(q.relevant)).startswith("docs/") for q in synthetic)


def test_eval_set_needs_the_chunks_only_to_synthesize(data_dir: Path, instance: dg.DagsterInstance) -> None:
    # No ingestion yet: the golden set alone is built; synthetic questions say what is missing.
    def build(count: int) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [dg.AssetSpec("document_chunks").with_io_manager_key("table_io_manager"), rag_eval_set],
            instance=instance,
            resources={**settings_resources(), "llm": LLMResource(base_url="http://127.0.0.1:9", api_key="k")},
            run_config={"ops": {"rag_eval_set": {"config": {"synthesize_questions": count}}}},
            raise_on_error=False,
        )

    golden = build(0)
    assert golden.success and len(golden.output_for_node("rag_eval_set")) == 30
    synthesized = build(3)
    assert not synthesized.success
    (failure,) = [e for e in synthesized.all_events if e.is_step_failure]
    assert "synthesize_questions needs document_chunks" in failure.step_failure_data.error.to_string()
