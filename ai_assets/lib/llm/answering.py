"""Answer evaluation questions from retrieved contexts with an OpenAI-compatible chat model.

The requests go through the batch-inference engine (`ai_assets.lib.llm.engine.run_batch`), so
answering gets the same bounded concurrency, retry/backoff policy, error classification and
API-key scrubbing as batch inference, with a throwaway ledger: answers are not resumed across runs,
but within one step they are: when the embedded server dies mid-way, `answer_with` restarts it once
and sends only the prompts it had not answered.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai

from ai_assets.lib.llm.engine import run_batch
from ai_assets.lib.llm.items import InferenceItem
from ai_assets.lib.llm.ledger import ResultLedger
from ai_assets.lib.llm.openai_call import make_openai_call, warm_up_connections
from ai_assets.lib.llm.retry import RetryPolicy

if TYPE_CHECKING:
    # Types only: this layer runs requests; the resource (served model, restarts) is handed in.
    import dagster as dg

    from ai_assets.resources.llm import LLMResource

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
    items = _items(prompts, max_tokens, temperature)
    with _throwaway_ledger() as ledger:
        if items:
            await run_batch(
                items,
                make_openai_call(client, model),
                ledger=ledger,
                max_in_flight=max_in_flight,
                retry=retry or RetryPolicy(),
                secrets=[client.api_key] if client.api_key else [],
            )
        return _results(items, ledger)


async def answer_with(
    llm: LLMResource,
    log: dg.DagsterLogManager | None,
    prompts: Sequence[Sequence[dict[str, Any]]],
    max_tokens: int,
    *,
    temperature: float | None = 0.0,
    retry: RetryPolicy | None = None,
) -> list[tuple[str | None, str | None]]:
    """`answer_questions` with `llm`'s client, model, concurrency and attempts (default
    `RetryPolicy(max_attempts=llm.max_attempts)`).

    With the embedded model, a server that dies mid-way is restarted once and only the prompts it had
    not answered are sent again; a second death raises `EmbeddedServerDied` with the explanation.
    """
    items = _items(prompts, max_tokens, temperature)
    with _throwaway_ledger() as ledger:
        if items:

            async def batch(client: openai.AsyncOpenAI) -> None:
                await warm_up_connections(client, min(llm.max_in_flight, len(items)))
                await run_batch(
                    items,
                    llm.guard(make_openai_call(client, llm.default_model)),
                    ledger=ledger,
                    max_in_flight=llm.max_in_flight,
                    retry=retry or RetryPolicy(max_attempts=llm.max_attempts),
                    secrets=[llm.api_key] if llm.api_key else [],
                )

            await llm.supervised(log, batch)
        return _results(items, ledger)


def _items(
    prompts: Sequence[Sequence[dict[str, Any]]], max_tokens: int, temperature: float | None
) -> list[InferenceItem]:
    return [
        InferenceItem(
            id=str(index),
            messages=tuple(messages),
            line=index + 1,
            max_tokens=max_tokens,
            temperature=temperature,
        )
        for index, messages in enumerate(prompts)
    ]


@contextmanager
def _throwaway_ledger() -> Iterator[ResultLedger]:
    with tempfile.TemporaryDirectory(prefix="answers-") as folder:
        with ResultLedger(Path(folder) / "answers.jsonl") as ledger:
            yield ledger


def _results(items: Sequence[InferenceItem], ledger: ResultLedger) -> list[tuple[str | None, str | None]]:
    rows = ledger.load()
    return [(rows[item.id].output, None) if rows[item.id].succeeded else (None, rows[item.id].error) for item in items]
