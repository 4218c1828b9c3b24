"""Evaluation sets for the RAG pipeline: golden JSONL files and BEIR-style benchmark folders.

Free of Dagster. Every loader returns :class:`EvalQuestion` values whose ``relevant`` maps the *indexed*
document ids (as the ingestion pipeline writes them, e.g. ``sample_corpus/how-to/x.md`` or
``scifact#4983``) to a graded judgement, so they can be passed to :mod:`ai_assets.lib.evaluation.metrics`
directly. Bad input raises :class:`EvalSetError` listing every problem with its ``path:line``.

Golden JSONL (one object per line; blank lines are skipped)::

    {"id": "gs-001", "question": "...", "reference_answer": "...",
     "reference_contexts": ["a sentence copied from the page"],
     "relevant_doc_ids": ["sample_corpus/concepts/hnsw-approximate-search.md"]}

``id``, ``question`` and exactly one of ``relevant_doc_ids`` (each gets relevance 1.0) or
``relevance`` (``{"doc id": grade}``, a number; > 0 is relevant) are required; ``reference_answer``
(string or null), ``reference_contexts`` (list of strings) and ``synthetic`` (bool) are optional, and
any other field is ignored.

BEIR folder: ``queries.jsonl`` (``{"_id", "text"}``) and ``qrels/<split>.tsv`` (``query-id``,
``corpus-id``, ``score``; optional header; LF or CRLF).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_assets.lib.json_values import json_type

__all__ = [
    "SAMPLE_GOLDEN_SET",
    "EvalQuestion",
    "EvalSetError",
    "load_beir",
    "load_eval_set",
    "load_golden_jsonl",
]

GOLDEN_SETS_DIR = Path(__file__).resolve().parents[2] / "data" / "golden_sets"
#: 30 hand-written questions about ``ai_assets/data/sample_corpus`` (source name ``sample_corpus``).
SAMPLE_GOLDEN_SET = GOLDEN_SETS_DIR / "sample_corpus.jsonl"

_UTF8_BOM = b"\xef\xbb\xbf"
# Problems listed in an exception message; all of them stay in `EvalSetError.problems`.
_MAX_LISTED_PROBLEMS = 20


class EvalSetError(ValueError):
    """An evaluation set cannot be read. ``problems`` holds one ``path:line: field: message`` each."""

    def __init__(self, source: str | os.PathLike[str], problems: list[str]) -> None:
        self.source = str(source)
        self.problems = list(problems)
        shown = self.problems[:_MAX_LISTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        lines = [f"{len(self.problems)} problem(s) in evaluation set {self.source}:", *(f"  {p}" for p in shown)]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class EvalQuestion:
    """One evaluation question.

    ``relevant`` maps an indexed document id to its graded relevance (> 0 is relevant, trec_eval
    style). The dataclass is frozen but, because of that dict, not hashable.
    """

    id: str
    question: str
    reference_answer: str | None
    reference_contexts: tuple[str, ...]
    relevant: dict[str, float]
    synthetic: bool = False


# ---------------------------------------------------------------------------
# Golden JSONL
# ---------------------------------------------------------------------------


def load_golden_jsonl(path: str | os.PathLike[str]) -> list[EvalQuestion]:
    """Read a golden-question JSONL file (format in the module docstring), in file order.

    Raises:
        EvalSetError: the file cannot be read, has no question, or any line is invalid; the message
            names ``path:line`` and the field of every problem, not only the first.
    """
    path = Path(path)
    data = _read_bytes(path)
    problems: list[str] = []
    questions: list[EvalQuestion] = []
    first_line_of: dict[str, int] = {}
    for line_number, where, record in _jsonl_objects(data, path, problems):
        question = _golden_question(record, where, problems)
        if question is None:
            continue
        if question.id in first_line_of:
            problems.append(f"{where}: id: duplicate id {question.id!r} (first on line {first_line_of[question.id]})")
            continue
        first_line_of[question.id] = line_number
        questions.append(question)
    if not questions and not problems:
        problems.append(f"{path}: contains no questions")
    if problems:
        if (path.parent / "qrels").is_dir():
            problems.append(f"{path}: hint: {path.parent} looks like a BEIR folder; pass the folder instead")
        raise EvalSetError(path, problems)
    return questions


def _golden_question(record: dict[str, Any], where: str, problems: list[str]) -> EvalQuestion | None:
    before = len(problems)

    def problem(field: str, message: str) -> None:
        problems.append(f"{where}: {field}: {message}")

    qid = _required_text(record, "id", problem)
    question = _required_text(record, "question", problem)

    answer = record.get("reference_answer")
    if answer is not None and not isinstance(answer, str):
        problem("reference_answer", f"expected a string or null, got {_json_type(answer)}")

    contexts = record.get("reference_contexts", [])
    if contexts is None:
        contexts = []
    if not _is_list_of_strings(contexts):
        problem("reference_contexts", f"expected a list of non-empty strings, got {_describe_list(contexts)}")
        contexts = []

    synthetic = record.get("synthetic", False)
    if not isinstance(synthetic, bool):
        problem("synthetic", f"expected true or false, got {_json_type(synthetic)}")

    relevant = _relevance(record, problem)

    if len(problems) > before:
        return None
    assert qid is not None and question is not None and relevant is not None
    return EvalQuestion(
        id=qid,
        question=question,
        reference_answer=answer if answer and answer.strip() else None,
        reference_contexts=tuple(contexts),
        relevant=relevant,
        synthetic=synthetic,
    )


def _relevance(record: dict[str, Any], problem: Any) -> dict[str, float] | None:
    has_ids, has_grades = "relevant_doc_ids" in record, "relevance" in record
    if has_ids and has_grades:
        problem("relevant_doc_ids", "give either relevant_doc_ids or relevance, not both")
        return None
    if not has_ids and not has_grades:
        problem("relevant_doc_ids", "missing (or give relevance: {doc id: grade})")
        return None

    relevant: dict[str, float] = {}
    if has_ids:
        ids = record["relevant_doc_ids"]
        if not _is_list_of_strings(ids):
            problem("relevant_doc_ids", f"expected a list of non-empty strings, got {_describe_list(ids)}")
            return None
        for doc in ids:
            if doc in relevant:
                problem("relevant_doc_ids", f"lists {doc!r} twice")
                return None
            relevant[doc] = 1.0
        field = "relevant_doc_ids"
    else:
        grades = record["relevance"]
        if not isinstance(grades, dict):
            problem("relevance", f"expected an object of doc id -> grade, got {_json_type(grades)}")
            return None
        for doc, grade in grades.items():
            if not doc.strip():
                problem("relevance", "a document id is empty")
                return None
            if isinstance(grade, bool) or not isinstance(grade, (int, float)) or not math.isfinite(grade):
                problem("relevance", f"grade of {doc!r} must be a finite number, got {json.dumps(grade)}")
                return None
            relevant[doc] = float(grade)
        field = "relevance"
    if not any(grade > 0 for grade in relevant.values()):
        problem(field, "names no relevant document (a grade > 0)")
        return None
    return relevant


def _required_text(record: dict[str, Any], field: str, problem: Any) -> str | None:
    if field not in record or record[field] is None:
        problem(field, "missing")
        return None
    value = record[field]
    if not isinstance(value, str):
        problem(field, f"expected a string, got {_json_type(value)}")
        return None
    if not value.strip():
        problem(field, "is empty")
        return None
    return value.strip()


# ---------------------------------------------------------------------------
# BEIR
# ---------------------------------------------------------------------------


def load_beir(folder: str | os.PathLike[str], split: str = "test", doc_id_prefix: str = "") -> list[EvalQuestion]:
    """Read the queries of a BEIR folder that have judgements in ``qrels/<split>.tsv``.

    Questions come in ``queries.jsonl`` order; queries without any qrels row are left out, as in
    BEIR's own loader. A query's ``relevant`` maps ``doc_id_prefix + corpus-id`` to the ``score``
    column (kept as given, 0 included; metrics count only > 0). ``doc_id_prefix`` turns corpus ids
    into the ids the ingestion indexed, e.g. ``"scifact#"`` for a corpus ingested as source
    ``scifact``.

    Raises:
        EvalSetError: a missing file, a malformed line, a judgement given twice, or qrels naming a
            query that ``queries.jsonl`` lacks; every problem with its ``path:line``.
    """
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    queries_path = folder / "queries.jsonl"
    problems: list[str] = []
    qrels = _read_qrels(qrels_path, doc_id_prefix, problems)
    texts, listed = _read_queries(queries_path, set(qrels), problems)
    for qid, (line_number, _) in qrels.items():
        if qid not in listed:
            problems.append(f"{qrels_path}:{line_number}: query-id: {qid!r} is not in {queries_path.name}")
    if not qrels and not problems:
        problems.append(f"{qrels_path}: contains no judgements")
    if problems:
        raise EvalSetError(folder, problems)
    return [
        EvalQuestion(id=qid, question=text, reference_answer=None, reference_contexts=(), relevant=qrels[qid][1])
        for qid, text in texts.items()
    ]


def _read_qrels(path: Path, prefix: str, problems: list[str]) -> dict[str, tuple[int, dict[str, float]]]:
    """query id -> (first line, {prefixed doc id: score})."""
    try:
        data = _read_bytes(path)
    except EvalSetError as error:
        problems.extend(error.problems)
        return {}
    qrels: dict[str, tuple[int, dict[str, float]]] = {}
    seen_content = False
    for line_number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            line = raw.decode("utf-8-sig" if not seen_content else "utf-8")
        except UnicodeDecodeError as error:
            problems.append(f"{where}: line: not valid UTF-8 ({error.reason}, column {error.start + 1})")
            continue
        columns = line.split("\t")
        first, seen_content = not seen_content, True
        if first and len(columns) == 3 and not _is_number(columns[2]):
            continue  # the header, e.g. query-id<TAB>corpus-id<TAB>score
        if len(columns) != 3:
            problems.append(
                f"{where}: line: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(columns)}"
            )
            continue
        qid, doc, raw_score = (column.strip() for column in columns)
        if not qid or not doc:
            problems.append(f"{where}: {'query-id' if not qid else 'corpus-id'}: is empty")
            continue
        if not _is_number(raw_score):
            problems.append(f"{where}: score: expected a number, got {raw_score!r}")
            continue
        score = float(raw_score)
        _, judged = qrels.setdefault(qid, (line_number, {}))
        if prefix + doc in judged:
            problems.append(f"{where}: corpus-id: query {qid!r} judges {doc!r} twice")
            continue
        judged[prefix + doc] = score
    return qrels


def _read_queries(path: Path, wanted: set[str], problems: list[str]) -> tuple[dict[str, str], set[str]]:
    """Texts of the wanted query ids in file order, and every id the file lists (valid or not)."""
    listed: set[str] = set()
    try:
        data = _read_bytes(path)
    except EvalSetError as error:
        problems.extend(error.problems)
        return {}, wanted  # one problem for the file, not one per query
    texts: dict[str, str] = {}
    for _, where, record in _jsonl_objects(data, path, problems):
        qid = record.get("_id")
        if isinstance(qid, int) and not isinstance(qid, bool):
            qid = str(qid)
        if not isinstance(qid, str) or not qid.strip():
            problems.append(f"{where}: _id: expected a non-empty string, got {json.dumps(qid)}")
            continue
        qid = qid.strip()
        listed.add(qid)
        if qid not in wanted:
            continue  # another split's query: not validated further
        if qid in texts:
            problems.append(f"{where}: _id: duplicate query id {qid!r}")
            continue
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{where}: text: expected a non-empty string, got {_json_type(text)}")
            continue
        texts[qid] = text.strip()
    return texts, listed


# ---------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------


def load_eval_set(
    location: str, *, split: str = "test", beir_doc_id_prefix: str = ""
) -> tuple[list[EvalQuestion], str]:
    """Load an evaluation set and describe it in a few words (for logs and asset metadata).

    ``location`` is a golden ``.jsonl`` file, a BEIR folder (one with ``queries.jsonl``), or empty
    for the bundled :data:`SAMPLE_GOLDEN_SET`. For a BEIR folder, ``beir_doc_id_prefix`` is the
    source name the corpus was ingested under (``scifact``) or the full prefix (``scifact#``): a
    missing ``#`` is added, since a JSONL record's doc id is ``<source doc id>#<_id>``. Empty means
    the folder's name, e.g. ``scifact#`` for ``.../datasets/scifact``. ``split`` picks the qrels file.

    Raises:
        EvalSetError: the location is neither, or its content is invalid.
    """
    location = location.strip()
    if not location:
        questions = load_golden_jsonl(SAMPLE_GOLDEN_SET)
        return questions, f"bundled golden set {SAMPLE_GOLDEN_SET.name} ({len(questions)} questions)"

    path = Path(os.path.expanduser(location))
    if path.is_dir():
        if not (path / "queries.jsonl").is_file():
            raise EvalSetError(
                path, [f"{path}: a folder must be a BEIR folder with queries.jsonl and qrels/{split}.tsv"]
            )
        prefix = beir_doc_id_prefix.strip() or path.resolve().name
        if not prefix.endswith("#"):
            prefix += "#"
        questions = load_beir(path, split=split, doc_id_prefix=prefix)
        judgements = sum(len(q.relevant) for q in questions)
        return questions, (
            f"BEIR {path.resolve().name} split {split} ({len(questions)} queries, {judgements} judgements, "
            f"doc ids {prefix}<corpus-id>)"
        )
    if path.is_file():
        if path.suffix.lower() != ".jsonl":
            raise EvalSetError(path, [f"{path}: expected a golden .jsonl file or a BEIR folder"])
        questions = load_golden_jsonl(path)
        return questions, f"golden set {path} ({len(questions)} questions)"
    raise EvalSetError(path, [f"{path}: no such file or folder (expected a golden .jsonl file or a BEIR folder)"])


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise EvalSetError(path, [f"{path}: cannot read: {error.strerror or error}"]) from error


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _jsonl_objects(data: bytes, path: Path, problems: list[str]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, "path:line", object) for each JSON-object line; blank lines skipped, a leading BOM
    and CRLF endings tolerated, bad lines reported into `problems`."""
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    for line_number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        where = f"{path}:{line_number}"
        record = _json_object(raw, where, problems)
        if record is not None:
            yield line_number, where, record


def _json_object(raw: bytes, where: str, problems: list[str]) -> dict[str, Any] | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        problems.append(f"{where}: line: not valid UTF-8 ({error.reason}, column {error.start + 1})")
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        problems.append(f"{where}: line: invalid JSON: {error.msg} (column {error.colno})")
        return None
    if not isinstance(record, dict):
        problems.append(f"{where}: line: expected a JSON object, got {_json_type(record)}")
        return None
    return record


def _is_list_of_strings(value: Any) -> bool:
    """A list whose items are all non-blank strings (an empty list passes)."""
    return isinstance(value, list) and all(isinstance(item, str) and item.strip() for item in value)


def _describe_list(value: Any) -> str:
    if not isinstance(value, list):
        return _json_type(value)
    bad = next((item for item in value if not isinstance(item, str) or not item.strip()), None)
    return f"a list containing {json.dumps(bad)}"


# Golden-set authors think in Python terms ("a list"); the type dispatch itself is shared.
_WORDING = {
    "boolean": "a boolean",
    "number": "a number",
    "string": "a string",
    "array": "a list",
    "object": "an object",
}


def _json_type(value: Any) -> str:
    name = json_type(value)
    return _WORDING.get(name, name)
