"""Answer evaluation questions from retrieved contexts with an OpenAI-compatible chat model.

The requests go through the batch-inference engine (`ai_assets.inference.engine.run_batch`), so
answering gets the same bounded concurrency, retry/backoff policy, error classification and
API-key scrubbing as batch inference, with a throwaway ledger: answers are not resumed across runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openai

from ai_assets.inference.engine import run_batch
from ai_assets.inference.items import InferenceItem
from ai_assets.inference.ledger import ResultLedger
from ai_assets.inference.openai_call import make_openai_call
from ai_assets.inference.retry import RetryPolicy

SYSTEM_PROMPT = (
    "You answer questions using only the numbered context passages you are given. "
    "If the passages do not contain the answer, say that you don't know. "
    "Answer concisely, in plain text, without mentioning the passages."
)


def build_prompt(question: str, contexts: Sequence[str], max_context_chars: int) -> list[dict[str, str]]:
    """System + user chat messages asking the model to answer `question` from `contexts`.

    Contexts are kept in order (best first) as numbered passages until their text reaches
    `max_context_chars` in total; the passage that crosses the budget is cut, later ones dropped.
    """
    if max_context_chars < 0:
        raise ValueError(f"max_context_chars must be >= 0, got {max_context_chars}")
    passages: list[str] = []
    budget = max_context_chars
    for context in contexts:
        if budget <= 0:
            break
        text = context.strip()[:budget]
        if not text:
            continue
        budget -= len(text)
        passages.append(f"[{len(passages) + 1}] {text}")
    context_block = "\n\n".join(passages) if passages else "(no passages)"
    user = f"Context passages:\n\n{context_block}\n\nQuestion: {question.strip()}\nAnswer:"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


async def answer_questions(
    client: openai.AsyncOpenAI,
    model: str,
    prompts: Sequence[Sequence[dict[str, Any]]],
    max_in_flight: int,
    max_tokens: int,
    *,
    temperature: float | None = 0.0,
    retry: RetryPolicy | None = None,
) -> list[tuple[str | None, str | None]]:
    """One `(answer, error)` per prompt, in order: exactly one of the two is set.

    Failures (after `retry`'s attempts; default `RetryPolicy()`) are recorded as the error string,
    never raised. Build `client` with `max_retries=0`: the engine does the retrying.
    """
    items = [
        InferenceItem(
            id=str(index),
            messages=tuple(messages),
            line=index + 1,
            max_tokens=max_tokens,
            temperature=temperature,
        )
        for index, messages in enumerate(prompts)
    ]
    if not items:
        return []
    with tempfile.TemporaryDirectory(prefix="answers-") as folder:
        with ResultLedger(Path(folder) / "answers.jsonl") as ledger:
            await run_batch(
                items,
                make_openai_call(client, model),
                ledger=ledger,
                max_in_flight=max_in_flight,
                retry=retry or RetryPolicy(),
                secrets=[client.api_key] if client.api_key else [],
            )
            rows = ledger.load()
    return [(rows[item.id].output, None) if rows[item.id].succeeded else (None, rows[item.id].error) for item in items]
