"""Evaluation sets: the bundled golden set against the real sample corpus, SciFact's BEIR layout,
and the error messages a user gets for a broken file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from ai_assets.lib.evaluation.eval_set import (
    SAMPLE_GOLDEN_SET,
    EvalQuestion,
    EvalSetError,
    load_beir,
    load_eval_set,
    load_golden_jsonl,
)
from ai_assets.lib.ingestion.sources import Document, HttpSettings, SourceSpec, read_source
from ai_assets.resources.sources import sample_corpus_path
from ai_assets_tests.corpora import SCIFACT

SAMPLE_CORPUS = sample_corpus_path()


def _ingested(spec: SourceSpec, tmp_path: Path) -> dict[str, Document]:
    items = list(read_source(spec, http=HttpSettings(), cache_dir=tmp_path / "cache"))
    assert all(isinstance(item, Document) for item in items), [i for i in items if not isinstance(i, Document)]
    return {doc.doc_id: doc for doc in items}


# ---------------------------------------------------------------------------
# The bundled golden set
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden() -> list[EvalQuestion]:
    return load_golden_jsonl(SAMPLE_GOLDEN_SET)


def test_bundled_golden_set_has_30_complete_questions(golden: list[EvalQuestion]) -> None:
    assert len(golden) == 30
    assert [q.id for q in golden] == [f"gs-{i:03d}" for i in range(1, 31)]
    for q in golden:
        assert q.question.endswith("?"), q.id
        assert q.reference_answer, q.id
        assert 1 <= len(q.reference_contexts) <= 2, q.id
        assert 1 <= len(q.relevant) <= 2, q.id
        assert set(q.relevant.values()) == {1.0}, q.id
        assert not q.synthetic


def test_golden_doc_ids_exist_on_disk_and_cover_all_four_folders(golden: list[EvalQuestion]) -> None:
    docs = {doc for q in golden for doc in q.relevant}
    for doc in docs:
        source, _, relative = doc.partition("/")
        assert source == "sample_corpus", doc
        assert (SAMPLE_CORPUS / relative).is_file(), doc
    primary_folders = Counter(next(iter(q.relevant)).split("/")[1] for q in golden)
    assert set(primary_folders) == {"concepts", "how-to", "operations", "reference"}
    assert min(primary_folders.values()) >= 5, primary_folders


def test_golden_doc_ids_are_the_ids_ingestion_writes(golden: list[EvalQuestion], tmp_path: Path) -> None:
    # The sample corpus ingested as a folder source named `sample_corpus`, as the default config does.
    indexed = _ingested(SourceSpec("sample_corpus", str(SAMPLE_CORPUS), "path"), tmp_path)
    assert len(indexed) == 32
    missing = {doc for q in golden for doc in q.relevant} - set(indexed)
    assert not missing


def test_every_reference_context_is_verbatim_in_one_of_its_pages(golden: list[EvalQuestion], tmp_path: Path) -> None:
    indexed = _ingested(SourceSpec("sample_corpus", str(SAMPLE_CORPUS), "path"), tmp_path)
    for q in golden:
        pages = {doc: (SAMPLE_CORPUS / doc.split("/", 1)[1]).read_text(encoding="utf-8") for doc in q.relevant}
        for context in q.reference_contexts:
            assert any(context in page for page in pages.values()), (q.id, context)
            # ... and survives ingestion's normalisation, so it is in what the index holds.
            assert any(context in indexed[doc].text for doc in q.relevant), (q.id, context)
        # Each page named backs at least one context: no page is listed without evidence.
        for doc, page in pages.items():
            assert any(context in page for context in q.reference_contexts), (q.id, doc)


def test_questions_do_not_copy_their_reference_sentences(golden: list[EvalQuestion]) -> None:
    # Copied wording makes retrieval artificially easy (see the evaluate-retrieval guide).
    for q in golden:
        for context in q.reference_contexts:
            assert q.question.rstrip("?") not in context, q.id


def test_empty_location_is_the_bundled_set(golden: list[EvalQuestion]) -> None:
    questions, description = load_eval_set("")
    assert questions == golden
    assert description == "bundled golden set sample_corpus.jsonl (30 questions)"
    assert load_eval_set("   ")[0] == golden


def test_load_eval_set_reads_a_jsonl_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"id": "q1", "question": "Why?", "relevant_doc_ids": ["docs/a.md"]}) + "\n")
    questions, description = load_eval_set(str(path))
    assert questions == [EvalQuestion("q1", "Why?", None, (), {"docs/a.md": 1.0})]
    assert description == f"golden set {path} (1 questions)"


# ---------------------------------------------------------------------------
# Golden JSONL format
# ---------------------------------------------------------------------------


def test_graded_relevance_optional_fields_crlf_bom_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "graded.jsonl"
    lines = [
        json.dumps(
            {
                "id": "a",
                "question": " Which? ",
                "relevance": {"d1": 2, "d2": 1, "d3": 0},
                "reference_answer": "",
                "synthetic": True,
                "notes": "ignored",
            }
        ),
        "",
        json.dumps(
            {
                "id": "b",
                "question": "What?",
                "relevant_doc_ids": ["d2", "d4"],
                "reference_answer": "It.",
                "reference_contexts": ["x", "y"],
            }
        ),
    ]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    a, b = load_golden_jsonl(path)
    assert a == EvalQuestion("a", "Which?", None, (), {"d1": 2.0, "d2": 1.0, "d3": 0.0}, synthetic=True)
    assert b == EvalQuestion("b", "What?", "It.", ("x", "y"), {"d2": 1.0, "d4": 1.0})


def _write(tmp_path: Path, *records: object) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(EvalSetError) as caught:
        load_golden_jsonl(path)
    assert caught.value.source == str(path)
    return caught.value.problems


def test_every_problem_is_reported_with_path_line_and_field(tmp_path: Path) -> None:
    good = {"id": "q1", "question": "Ok?", "relevant_doc_ids": ["d"]}
    path = _write(
        tmp_path,
        good,  # 1
        {"id": "q2", "relevant_doc_ids": ["d"]},  # 2 no question
        {"id": "q1", "question": "Again?", "relevant_doc_ids": ["d"]},  # 3 duplicate id
        {"id": "q4", "question": "List?", "relevant_doc_ids": "d"},  # 4 not a list
        {"id": "q5", "question": "Ints?", "relevant_doc_ids": ["d", 7]},  # 5 not strings
        "{not json",  # 6
        {"id": 6, "question": "", "relevant_doc_ids": ["d"]},  # 7 two problems
        {"id": "q8", "question": "Where?"},  # 8 no judgements
        {"id": "q9", "question": "Grade?", "relevance": {"d": "high"}},  # 9
        {"id": "q10", "question": "Zero?", "relevance": {"d": 0}},  # 10
        {"id": "q11", "question": "Both?", "relevant_doc_ids": ["d"], "relevance": {"d": 1}},  # 11
        {"id": "q12", "question": "Ctx?", "relevant_doc_ids": ["d"], "reference_contexts": "x"},  # 12
        ["a list"],  # 13
        {"id": "q14", "question": "Syn?", "relevant_doc_ids": ["d"], "synthetic": "yes"},  # 14
        {"id": "q15", "question": "Twice?", "relevant_doc_ids": ["d", "d"]},  # 15
    )
    assert _problems(path) == [
        f"{path}:2: question: missing",
        f"{path}:3: id: duplicate id 'q1' (first on line 1)",
        f"{path}:4: relevant_doc_ids: expected a list of non-empty strings, got a string",
        f"{path}:5: relevant_doc_ids: expected a list of non-empty strings, got a list containing 7",
        f"{path}:6: line: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{path}:7: id: expected a string, got a number",
        f"{path}:7: question: is empty",
        f"{path}:8: relevant_doc_ids: missing (or give relevance: {{doc id: grade}})",
        f"{path}:9: relevance: grade of 'd' must be a finite number, got \"high\"",
        f"{path}:10: relevance: names no relevant document (a grade > 0)",
        f"{path}:11: relevant_doc_ids: give either relevant_doc_ids or relevance, not both",
        f"{path}:12: reference_contexts: expected a list of non-empty strings, got a string",
        f"{path}:13: line: expected a JSON object, got a list",
        f"{path}:14: synthetic: expected true or false, got a string",
        f"{path}:15: relevant_doc_ids: lists 'd' twice",
    ]


def test_error_message_lists_problems_and_is_a_value_error(tmp_path: Path) -> None:
    path = _write(tmp_path, *({"id": f"q{i}", "relevant_doc_ids": ["d"]} for i in range(25)))
    with pytest.raises(ValueError) as caught:
        load_golden_jsonl(path)
    message = str(caught.value)
    assert message.splitlines()[0] == f"25 problem(s) in evaluation set {path}:"
    assert f"  {path}:20: question: missing" in message.splitlines()
    assert f"{path}:21:" not in message
    assert message.splitlines()[-1] == "  ... and 5 more"


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert _problems(empty) == [f"{empty}: contains no questions"]
    missing = tmp_path / "missing.jsonl"
    assert _problems(missing) == [f"{missing}: cannot read: No such file or directory"]


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": "a", "question": "Ok?", "relevant_doc_ids": ["d"]}\n{"id": "caf\xe9"}\n')
    assert _problems(path) == [f"{path}:2: line: not valid UTF-8 (invalid continuation byte, column 12)"]


def test_a_beir_file_passed_as_golden_set_gets_a_hint(tmp_path: Path) -> None:
    folder = _beir_folder(tmp_path)
    problems = _problems(folder / "queries.jsonl")
    assert problems[0] == f"{folder / 'queries.jsonl'}:1: id: missing"
    assert (
        problems[-1] == f"{folder / 'queries.jsonl'}: hint: {folder} looks like a BEIR folder; pass the folder instead"
    )


def test_load_eval_set_rejects_unknown_locations(tmp_path: Path) -> None:
    with pytest.raises(EvalSetError, match="no such file or folder"):
        load_eval_set(str(tmp_path / "nope.jsonl"))
    (tmp_path / "qrels.tsv").write_text("q\td\t1\n")
    with pytest.raises(EvalSetError, match="expected a golden .jsonl file or a BEIR folder"):
        load_eval_set(str(tmp_path / "qrels.tsv"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(EvalSetError, match="must be a BEIR folder with queries.jsonl and qrels/test.tsv"):
        load_eval_set(str(tmp_path / "plain"))


# ---------------------------------------------------------------------------
# BEIR
# ---------------------------------------------------------------------------


def _beir_folder(tmp_path: Path, qrels: str | None = None, queries: list[str] | None = None) -> Path:
    folder = tmp_path / "tinybeir"
    (folder / "qrels").mkdir(parents=True)
    lines = (
        queries
        if queries is not None
        else [
            json.dumps({"_id": "q1", "text": "first claim"}),
            json.dumps({"_id": "q2", "text": "unjudged claim"}),
            json.dumps({"_id": "q3", "text": " third claim ", "metadata": {}}),
        ]
    )
    (folder / "queries.jsonl").write_text("\n".join(lines) + "\n")
    rows = qrels if qrels is not None else "query-id\tcorpus-id\tscore\r\nq3\td9\t2\r\nq1\td1\t1\r\nq1\td2\t0\r\n"
    (folder / "qrels" / "test.tsv").write_bytes(rows.encode())
    return folder


def test_beir_keeps_judged_queries_in_query_order_with_prefixed_graded_ids(tmp_path: Path) -> None:
    folder = _beir_folder(tmp_path)
    assert load_beir(folder, doc_id_prefix="tiny#") == [
        EvalQuestion("q1", "first claim", None, (), {"tiny#d1": 1.0, "tiny#d2": 0.0}),
        EvalQuestion("q3", "third claim", None, (), {"tiny#d9": 2.0}),
    ]
    assert load_beir(folder)[1].relevant == {"d9": 2.0}


def test_beir_through_load_eval_set_defaults_the_prefix_to_the_folder_name(tmp_path: Path) -> None:
    folder = _beir_folder(tmp_path)
    questions, description = load_eval_set(str(folder))
    assert [q.relevant for q in questions] == [{"tinybeir#d1": 1.0, "tinybeir#d2": 0.0}, {"tinybeir#d9": 2.0}]
    assert description == "BEIR tinybeir split test (2 queries, 3 judgements, doc ids tinybeir#<corpus-id>)"
    # A source name gets the record separator; a full prefix is kept.
    assert load_eval_set(str(folder), beir_doc_id_prefix="kb")[0][1].relevant == {"kb#d9": 2.0}
    assert load_eval_set(str(folder), beir_doc_id_prefix="kb#")[0][1].relevant == {"kb#d9": 2.0}


def test_beir_problems_name_path_line_and_column(tmp_path: Path) -> None:
    qrels = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t1\nq1\td2\nq1\td3\tmaybe\nq7\td1\t1\n\td1\t1\nq8\td1\t1\n"
    queries = [json.dumps({"_id": "q1", "text": "ok"}), json.dumps({"_id": "q7"}), "[]"]
    folder = _beir_folder(tmp_path, qrels=qrels, queries=queries)
    tsv, jsonl = folder / "qrels" / "test.tsv", folder / "queries.jsonl"
    with pytest.raises(EvalSetError) as caught:
        load_beir(folder)
    assert caught.value.problems == [
        f"{tsv}:3: corpus-id: query 'q1' judges 'd1' twice",
        f"{tsv}:4: line: expected 3 tab-separated columns (query-id, corpus-id, score), got 2",
        f"{tsv}:5: score: expected a number, got 'maybe'",
        f"{tsv}:7: query-id: is empty",
        f"{jsonl}:2: text: expected a non-empty string, got null",
        f"{jsonl}:3: line: expected a JSON object, got a list",
        f"{tsv}:8: query-id: 'q8' is not in queries.jsonl",
    ]


def test_beir_missing_split(tmp_path: Path) -> None:
    folder = _beir_folder(tmp_path)
    with pytest.raises(EvalSetError) as caught:
        load_beir(folder, split="dev")
    assert caught.value.problems == [f"{folder / 'qrels' / 'dev.tsv'}: cannot read: No such file or directory"]


def test_scifact_test_split(tmp_path: Path) -> None:
    questions = load_beir(SCIFACT, split="test", doc_id_prefix="scifact#")
    assert len(questions) == 300
    assert sum(len(q.relevant) for q in questions) == 339
    assert len({q.id for q in questions}) == 300
    assert all(doc.startswith("scifact#") for q in questions for doc in q.relevant)
    assert all(grade == 1.0 for q in questions for grade in q.relevant.values())
    first = questions[0]
    assert (first.id, first.question) == ("1", "0-dimensional biomaterials show inductive properties.")
    assert first.relevant == {"scifact#31715818": 1.0}
    # Every judged document is a corpus record, named as ingestion names the records of a single-file
    # source called `scifact`.
    corpus_ids = {json.loads(line)["_id"] for line in (SCIFACT / "corpus.jsonl").open(encoding="utf-8")}
    assert {doc.removeprefix("scifact#") for q in questions for doc in q.relevant} <= corpus_ids
    spec = SourceSpec("scifact", str(SCIFACT / "corpus.jsonl"), "path")
    first_document = next(iter(read_source(spec, http=HttpSettings(), cache_dir=tmp_path)))
    assert isinstance(first_document, Document)
    assert first_document.doc_id == "scifact#" + json.loads((SCIFACT / "corpus.jsonl").open().readline())["_id"]


def test_scifact_via_load_eval_set(tmp_path: Path) -> None:
    questions, description = load_eval_set(str(SCIFACT), beir_doc_id_prefix="scifact")
    assert len(questions) == 300
    assert description == "BEIR scifact split test (300 queries, 339 judgements, doc ids scifact#<corpus-id>)"
    train, _ = load_eval_set(str(SCIFACT), split="train")
    assert (len(train), sum(len(q.relevant) for q in train)) == (809, 919)
