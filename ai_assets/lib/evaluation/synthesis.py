"""Questions written by the LLM from indexed chunks: a cheap evaluation set where no golden one exists.

Each synthetic question is judged relevant to the document of the chunk it was written from, and the
chunk is its reference context. They are marked `synthetic` so reports can tell them from golden ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ai_assets.lib.evaluation.eval_set import EvalQuestion

QUESTION_PROMPT = (
    "Write one question that the passage below answers. The question must make sense without the "
    "passage. Reply with the question only.\n\nPassage:\n{passage}"
)


def pick_chunks(rows: Sequence[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """`count` chunks spread evenly over the index, in a stable order (by chunk id): the same index
    gives the same questions, so runs stay comparable."""
    ordered = sorted(rows, key=lambda r: r["chunk_id"])
    if count <= 0 or not ordered:
        return []
    step = max(len(ordered) / count, 1.0)
    return [ordered[int(i * step)] for i in range(min(count, len(ordered)))]


def question_prompts(chunks: Sequence[dict[str, Any]], max_chars: int = 2000) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": QUESTION_PROMPT.format(passage=c["text"][:max_chars])}] for c in chunks]


def synthetic_questions(
    chunks: Sequence[dict[str, Any]], answers: Sequence[tuple[str | None, str | None]]
) -> tuple[list[EvalQuestion], list[str]]:
    """Questions from the LLM's replies; a failed or empty reply is reported, not turned into a question."""
    questions, problems = [], []
    for chunk, (reply, error) in zip(chunks, answers, strict=True):
        text = (reply or "").strip().strip('"').strip()
        if not text:
            problems.append(f"chunk {chunk['chunk_id']}: {error or 'empty reply'}")
            continue
        digest = hashlib.sha256(chunk["chunk_id"].encode()).hexdigest()[:10]
        questions.append(
            EvalQuestion(
                id=f"synthetic-{digest}",
                question=text,
                reference_answer=None,
                reference_contexts=(chunk["text"],),
                relevant={chunk["doc_id"]: 1.0},
                synthetic=True,
            )
        )
    return questions, problems
