"""Judged documents missing from the index are counted and named, with the id probably meant."""

from __future__ import annotations

import uuid
from pathlib import Path

from ai_assets.lib.evaluation.coverage import closest_indexed, describe, indexed_doc_ids, unindexed_judgements
from ai_assets.lib.evaluation.eval_set import EvalQuestion
from ai_assets.lib.vector_store.edge import EdgeStore


def question(qid: str, *docs: str, grades: dict[str, float] | None = None) -> EvalQuestion:
    return EvalQuestion(qid, f"question {qid}?", None, (), grades or {doc: 1.0 for doc in docs})


def test_only_questions_with_missing_relevant_docs_are_reported_in_order() -> None:
    indexed = {"corpus#1", "corpus#2", "docs/guide.md"}
    questions = [
        question("q1", "corpus#1"),
        question("q2", "scifact#2", "corpus#1"),
        question("q3", grades={"corpus#9": 0.0, "docs/guide.md": 2.0}),  # grade 0 is not relevant
        question("q4", "docs/gone.md"),
    ]
    found = unindexed_judgements(questions, indexed)
    assert [(j.question_id, j.doc_ids, j.relevant) for j in found] == [
        ("q2", ("scifact#2",), 2),
        ("q4", ("docs/gone.md",), 1),
    ]


def test_the_intended_id_is_guessed_from_the_same_tail_or_a_close_spelling() -> None:
    indexed = {"corpus#2", "corpus#20", "docs/guide.md"}
    assert closest_indexed("scifact#2", indexed) == "corpus#2"  # wrong source prefix
    assert closest_indexed("docs/guid.md", indexed) == "docs/guide.md"  # typo
    assert closest_indexed("elsewhere/nothing-alike.txt", indexed) is None


def test_description_names_question_doc_and_guess_and_caps_the_lines() -> None:
    indexed = {f"corpus#{i}" for i in range(30)}
    found = unindexed_judgements([question(f"q{i}", f"scifact#{i}") for i in range(12)], indexed)
    lines = describe(found, indexed, limit=10)
    assert len(lines) == 11 and lines[-1].startswith("... and 2 more question(s)")
    assert lines[0] == (
        "question q0: 1 of its 1 relevant document(s) are not in the index, so they score 0: "
        "'scifact#0' (indexed: 'corpus#0'?)"
    )


def test_indexed_doc_ids_pages_through_a_real_collection(tmp_path: Path) -> None:
    with EdgeStore(tmp_path / "qdrant") as store:
        store.create_collection("c", 2)
        ids = [str(uuid.UUID(int=i + 1)) for i in range(51)]
        payloads = [{"doc_id": f"doc-{i % 7}"} for i in range(50)] + [{}]
        store.upsert("c", ids, [[1.0, float(i)] for i in range(51)], payloads)
        assert indexed_doc_ids(store, "c", page_size=8) == {f"doc-{i}" for i in range(7)}
