"""Judged documents the index does not hold: they can never be retrieved, so every metric scores them 0.

A wrong document-id prefix (a BEIR folder ingested under another source name), a renamed file or a source
left out of `AI_ASSETS_SOURCES` looks exactly like bad retrieval in the numbers; this names it instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ai_assets.lib.evaluation.eval_set import EvalQuestion

if TYPE_CHECKING:
    from ai_assets.lib.vector_store import VectorStore


@dataclass(frozen=True)
class UnindexedJudgement:
    """A question whose relevant documents include some the index has never seen."""

    question_id: str
    doc_ids: tuple[str, ...]
    relevant: int  # how many relevant documents the question has in all


def indexed_doc_ids(store: VectorStore, collection: str, page_size: int = 4096) -> set[str]:
    """Every `doc_id` with at least one point in `collection` (an alias works too)."""
    found = {str(payload.get("doc_id", "")) for _, payload in store.iter_points(collection, ["doc_id"], page_size)}
    found.discard("")
    return found


def unindexed_judgements(questions: Sequence[EvalQuestion], indexed: set[str]) -> list[UnindexedJudgement]:
    """Questions judged relevant to documents missing from `indexed`, in evaluation-set order."""
    found: list[UnindexedJudgement] = []
    for question in questions:
        relevant = [doc for doc, grade in question.relevant.items() if grade > 0]
        missing = tuple(doc for doc in relevant if doc not in indexed)
        if missing:
            found.append(UnindexedJudgement(question.id, missing, len(relevant)))
    return found


def closest_indexed(doc_id: str, indexed: Iterable[str]) -> str | None:
    """The indexed id most likely meant: same tail after the source prefix, else the closest spelling."""
    candidates = list(indexed)
    tail = _tail(doc_id)
    same_tail = sorted(c for c in candidates if _tail(c) == tail)
    if same_tail:
        return same_tail[0]
    close = difflib.get_close_matches(doc_id, candidates, n=1, cutoff=0.8)
    return close[0] if close else None


def describe(judgements: Sequence[UnindexedJudgement], indexed: set[str], limit: int = 10) -> list[str]:
    """One warning line per question (at most `limit`, then a count), with a guess at the intended id."""
    lines: list[str] = []
    for judgement in judgements[:limit]:
        shown = []
        for doc in judgement.doc_ids[:3]:
            guess = closest_indexed(doc, indexed)
            shown.append(f"{doc!r}" + (f" (indexed: {guess!r}?)" if guess else ""))
        more = len(judgement.doc_ids) - len(shown)
        lines.append(
            f"question {judgement.question_id}: {len(judgement.doc_ids)} of its {judgement.relevant} relevant "
            f"document(s) are not in the index, so they score 0: {', '.join(shown)}"
            + (f" and {more} more" if more > 0 else "")
        )
    if len(judgements) > limit:
        lines.append(f"... and {len(judgements) - limit} more question(s) with unindexed relevant documents")
    return lines


def _tail(doc_id: str) -> str:
    # Document ids are `<source>/<path>`, `<source>#<record id>` or a URL: the part after the source.
    for separator in ("#", "/"):
        if separator in doc_id:
            return doc_id.split(separator, 1)[1]
    return doc_id
