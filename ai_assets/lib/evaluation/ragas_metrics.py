"""Answer-quality metrics for RAG with ragas 0.4.3, offline by default.

Two entry points, both returning one row per question, in input order:

* `score_without_llm` needs no model server: ragas' non-LLM metrics, plus semantic similarity with
  OUR embedding function (the project's local sentence-transformers model), so it runs offline.
* `score_with_judge` asks an OpenAI-compatible judge LLM (ragas' `llm_factory` over an
  `openai.AsyncOpenAI` client pointed at `JudgeConfig.base_url`); only call it when a judge is
  configured.

A row is `{metric_name: float | None, ..., "errors": {metric_name: message}}`:

* a float is the metric's value, higher is better: in [0, 1], except the two embedding cosines
  (semantic_similarity, answer_relevancy), which ragas does not clip and can dip slightly below 0;
* `None` without an entry in `errors`: the metric does not apply (e.g. the question has no
  `reference`, or no `reference_contexts`);
* `None` with an entry in `errors`: the metric failed on this question (an exception, a malformed
  judge answer, a NaN result). Failures are recorded, never raised.

ragas is imported lazily (it takes ~1.5 s and starts an analytics thread), and
RAGAS_DO_NOT_TRACK=true is set first, so ragas never phones home; nothing here imports Dagster.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ai_assets.lib.llm.retry import redact

if TYPE_CHECKING:
    from ragas.embeddings.base import BaseRagasEmbedding

ERRORS_KEY = "errors"

# Metric names, as they appear as keys in each row.
CONTEXT_PRECISION_NON_LLM = "non_llm_context_precision_with_reference"
CONTEXT_RECALL_NON_LLM = "non_llm_context_recall"
SEMANTIC_SIMILARITY = "semantic_similarity"
STRING_SIMILARITY = "non_llm_string_similarity"
ROUGE_L = "rouge_l"
NON_LLM_METRICS: tuple[str, ...] = (
    CONTEXT_PRECISION_NON_LLM,
    CONTEXT_RECALL_NON_LLM,
    SEMANTIC_SIMILARITY,
    STRING_SIMILARITY,
    ROUGE_L,
)

FAITHFULNESS = "faithfulness"
ANSWER_RELEVANCY = "answer_relevancy"
CONTEXT_PRECISION_LLM = "llm_context_precision_with_reference"
CONTEXT_RECALL_LLM = "llm_context_recall"
JUDGE_METRICS: tuple[str, ...] = (FAITHFULNESS, ANSWER_RELEVANCY, CONTEXT_PRECISION_LLM, CONTEXT_RECALL_LLM)

ALL_METRICS: tuple[str, ...] = NON_LLM_METRICS + JUDGE_METRICS

_MAX_ERROR_CHARS = 500

Row = dict[str, Any]  # metric name -> float | None, plus ERRORS_KEY -> dict[str, str]


@dataclass
class QuestionSample:
    """One evaluated question: what was asked, answered and retrieved, and what should have been.

    `contexts` are the retrieved passages, best first. `reference` is the gold answer and
    `reference_contexts` the gold passages; metrics that need them are None when they are absent.
    """

    question: str
    answer: str
    contexts: list[str]
    reference: str | None = None
    reference_contexts: list[str] | None = None


@dataclass(frozen=True)
class JudgeConfig:
    """An OpenAI-compatible chat-completions endpoint used as the judge LLM.

    `max_attempts` is instructor's budget per structured call: after an answer that does not parse
    or validate, it re-asks (with the validation error) up to this many attempts in all.
    `http_retries` is the openai SDK's own retry count for 429/5xx/connection errors.
    `max_in_flight` bounds concurrent (question, metric) evaluations, hence concurrent requests.
    """

    base_url: str
    api_key: str = field(repr=False)
    model: str
    max_tokens: int = 1024
    temperature: float = 0.01
    max_in_flight: int = 4
    timeout_s: float = 120.0  # per HTTP request
    max_attempts: int = 3
    http_retries: int = 2
    answer_relevancy_questions: int = 3  # ragas' "strictness": questions generated per answer


# --- shared plumbing --------------------------------------------------------------------------------


@functools.cache
def _ragas() -> None:
    """Import ragas once, with its usage tracking switched off before its first import."""
    os.environ["RAGAS_DO_NOT_TRACK"] = "true"
    import ragas  # noqa: F401


def _empty_row(names: Iterable[str]) -> Row:
    row: Row = {name: None for name in names}
    row[ERRORS_KEY] = {}
    return row


def _describe(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    # The judge's key is redacted as batch inference does it: whole, without its prefix, in pieces.
    message = redact(f"{type(exc).__name__}: {exc}".strip(), secrets)
    message = " ".join(message.split())  # one line
    return message if len(message) <= _MAX_ERROR_CHARS else message[: _MAX_ERROR_CHARS - 1] + "…"


def _finite(value: Any) -> float:
    """The metric's value as a float; NaN/inf (ragas' "undefined") is a failure, not a score."""
    score = float(getattr(value, "value", value))
    if not math.isfinite(score):
        raise ValueError(f"metric returned {score}")
    return score


async def _record(
    row: Row,
    name: str,
    compute: Callable[[], Awaitable[Any]],
    *,
    timeout_s: float | None = None,
    secrets: Sequence[str] = (),
) -> None:
    """Run one metric on one question, storing its value or its error in `row`; never raises."""
    try:
        row[name] = _finite(await asyncio.wait_for(compute(), timeout=timeout_s))
    except Exception as exc:  # noqa: BLE001 - a failing metric must not take the others down
        row[name] = None
        row[ERRORS_KEY][name] = _describe(exc, secrets)


def _run(coro: Awaitable[Any]) -> Any:
    """Run a coroutine from sync code (Dagster assets are sync); in a thread if a loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def ragas_embeddings(embed: Callable[[list[str]], np.ndarray]) -> BaseRagasEmbedding:
    """Wrap `embed` (texts -> one vector per row) as a ragas 0.4 "modern" embeddings object.

    Vectors are memoised by text, and `prime()` embeds many texts in one batch, so scoring N
    questions costs one batched forward pass instead of 2N single-text calls.
    """
    return _embeddings_class()(embed)


@functools.cache
def _embeddings_class() -> type:
    _ragas()
    from ragas.embeddings.base import BaseRagasEmbedding

    class FunctionEmbeddings(BaseRagasEmbedding):
        def __init__(self, embed: Callable[[list[str]], np.ndarray]) -> None:
            super().__init__(cache=None)
            self._embed = embed
            self._memo: dict[str, list[float]] = {}

        def prime(self, texts: Iterable[str]) -> None:
            self.embed_texts(list(texts))

        def embed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
            if missing:
                vectors = np.asarray(self._embed(missing), dtype=np.float64)
                if vectors.ndim != 2 or vectors.shape[0] != len(missing):
                    raise ValueError(
                        f"embed() returned shape {vectors.shape} for {len(missing)} texts; expected one vector per text"
                    )
                self._memo.update(zip(missing, vectors.tolist(), strict=True))
            return [self._memo[t] for t in texts]

        def embed_text(self, text: str, **kwargs: Any) -> list[float]:
            return self.embed_texts([text])[0]

        # The embedding model is local and fast: calling it inline is simpler than a thread hop.
        async def aembed_texts(self, texts: list[str], **kwargs: Any) -> list[list[float]]:
            return self.embed_texts(texts)

        async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
            return self.embed_text(text)

    return FunctionEmbeddings


# --- without an LLM ---------------------------------------------------------------------------------


def score_without_llm(
    samples: Sequence[QuestionSample],
    embed: Callable[[list[str]], np.ndarray],
) -> list[Row]:
    """ragas 0.4.3's non-LLM metrics, one row per sample (keys: `NON_LLM_METRICS` and `errors`).

    * non_llm_context_precision_with_reference / non_llm_context_recall (ragas
      `NonLLMContextPrecisionWithReference` / `NonLLMContextRecall`): a retrieved passage "matches" a
      reference passage when their normalised Levenshtein similarity is >= 0.5 (precision) / > 0.5
      (recall). Precision is average precision of the matches over the retrieved ranking; recall is
      the share of reference passages matched. None when the sample has no `reference_contexts`.
      Nothing retrieved gives recall 0.0 (ragas itself would raise on the empty `max()`).
    * semantic_similarity (ragas `SemanticSimilarity`): cosine of `embed(answer)` and
      `embed(reference)`.
    * non_llm_string_similarity (ragas `NonLLMStringSimilarity`): 1 - normalised Levenshtein
      distance between answer and reference.
    * rouge_l (ragas `RougeScore`, rougeL F-measure with stemming) of answer vs reference.

    The last three are None when the sample has no `reference`.
    """
    return _run(_ascore_without_llm(samples, embed))


async def _ascore_without_llm(samples: Sequence[QuestionSample], embed: Callable[[list[str]], np.ndarray]) -> list[Row]:
    _ragas()
    from ragas.dataset_schema import SingleTurnSample
    from ragas.metrics._context_precision import NonLLMContextPrecisionWithReference
    from ragas.metrics._context_recall import NonLLMContextRecall
    from ragas.metrics.collections import NonLLMStringSimilarity, RougeScore, SemanticSimilarity

    embeddings = ragas_embeddings(embed)
    try:  # one batch for all texts; on failure each question retries alone and records its error
        embeddings.prime(t for s in samples if s.reference is not None for t in (s.answer, s.reference))
    except Exception:  # noqa: BLE001
        pass
    precision = NonLLMContextPrecisionWithReference()
    recall = NonLLMContextRecall()
    semantic = SemanticSimilarity(embeddings=embeddings)
    string = NonLLMStringSimilarity()
    rouge = RougeScore(name=ROUGE_L, rouge_type="rougeL", mode="fmeasure")

    rows: list[Row] = []
    for sample in samples:
        row = _empty_row(NON_LLM_METRICS)
        if sample.reference_contexts:
            pair = SingleTurnSample(
                retrieved_contexts=list(sample.contexts), reference_contexts=list(sample.reference_contexts)
            )
            await _record(row, CONTEXT_PRECISION_NON_LLM, lambda pair=pair: precision.single_turn_ascore(pair))
            if sample.contexts:
                await _record(row, CONTEXT_RECALL_NON_LLM, lambda pair=pair: recall.single_turn_ascore(pair))
            else:
                row[CONTEXT_RECALL_NON_LLM] = 0.0
        if sample.reference is not None:
            kwargs = {"reference": sample.reference, "response": sample.answer}
            await _record(row, SEMANTIC_SIMILARITY, lambda kw=kwargs: semantic.ascore(**kw))
            await _record(row, STRING_SIMILARITY, lambda kw=kwargs: string.ascore(**kw))
            await _record(row, ROUGE_L, lambda kw=kwargs: rouge.ascore(**kw))
        rows.append(row)
    return rows


# --- with a judge LLM -------------------------------------------------------------------------------


def score_with_judge(
    samples: Sequence[QuestionSample],
    judge: JudgeConfig,
    embed: Callable[[list[str]], np.ndarray],
) -> list[Row]:
    """ragas 0.4.3's LLM-judged metrics, one row per sample (keys: `JUDGE_METRICS` and `errors`).

    * faithfulness (ragas `Faithfulness`): share of the answer's statements the judge finds
      supported by the retrieved contexts.
    * answer_relevancy (ragas `AnswerRelevancy`): the judge writes questions the answer would answer;
      mean cosine (with `embed`) between them and the real question, 0 if the answer is noncommittal.
    * llm_context_precision_with_reference (ragas `ContextPrecisionWithReference`): average
      precision of the judge's per-passage "useful for the reference answer" verdicts.
    * llm_context_recall (ragas `ContextRecall`): share of the reference's statements the judge can
      attribute to the retrieved contexts.

    The last two are None when the sample has no `reference`. A malformed or failed judge answer
    (after instructor's re-asks) is recorded in `errors`, never raised; so is an empty `answer` or
    empty `contexts` where a metric needs them.
    """
    return _run(_ascore_with_judge(samples, judge, embed))


async def _ascore_with_judge(
    samples: Sequence[QuestionSample],
    judge: JudgeConfig,
    embed: Callable[[list[str]], np.ndarray],
) -> list[Row]:
    if judge.max_in_flight < 1 or judge.max_attempts < 1:
        raise ValueError(f"max_in_flight and max_attempts must be >= 1, got {judge}")
    _ragas()
    rows = [_empty_row(JUDGE_METRICS) for _ in samples]
    with _quiet_instructor_retries():
        await _judge_all(rows, samples, judge, embed)
    return rows


@contextlib.contextmanager
def _quiet_instructor_retries() -> Iterator[None]:
    """instructor logs every failed attempt at ERROR, whole prompt included; the rows record the
    failure already, so those lines are only noise (and retrieved text) in the run's stderr."""
    retry_logger = logging.getLogger("instructor.v2.retry")
    previous = retry_logger.level
    retry_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        retry_logger.setLevel(previous)


async def _judge_all(
    rows: list[Row],
    samples: Sequence[QuestionSample],
    judge: JudgeConfig,
    embed: Callable[[list[str]], np.ndarray],
) -> None:
    import openai
    from ragas.llms import llm_factory
    from ragas.metrics.collections import AnswerRelevancy, ContextPrecisionWithReference, ContextRecall, Faithfulness

    client = openai.AsyncOpenAI(
        base_url=judge.base_url, api_key=judge.api_key, max_retries=judge.http_retries, timeout=judge.timeout_s
    )
    # The SDK fills these from OPENAI_ORG_ID / OPENAI_PROJECT_ID, which belong to the inference provider
    # (and hold "" when unset): the judge is another endpoint and gets neither header.
    client.organization = None
    client.project = None
    async with client:
        llm = llm_factory(
            judge.model,
            provider="openai",
            client=client,
            max_tokens=judge.max_tokens,
            temperature=judge.temperature,
            max_retries=judge.max_attempts - 1,  # instructor counts re-asks after the first attempt
        )
        embeddings = ragas_embeddings(embed)
        metrics: dict[str, Any] = {
            FAITHFULNESS: Faithfulness(llm=llm),
            ANSWER_RELEVANCY: AnswerRelevancy(
                llm=llm, embeddings=embeddings, strictness=judge.answer_relevancy_questions
            ),
            CONTEXT_PRECISION_LLM: ContextPrecisionWithReference(llm=llm),
            CONTEXT_RECALL_LLM: ContextRecall(llm=llm),
        }
        gate = asyncio.Semaphore(judge.max_in_flight)

        def inputs(name: str, s: QuestionSample) -> dict[str, Any] | None:
            if name == FAITHFULNESS:
                return {"user_input": s.question, "response": s.answer, "retrieved_contexts": list(s.contexts)}
            if name == ANSWER_RELEVANCY:
                return {"user_input": s.question, "response": s.answer}
            if s.reference is None:
                return None  # not applicable
            return {"user_input": s.question, "reference": s.reference, "retrieved_contexts": list(s.contexts)}

        async def one(row: Row, name: str, kwargs: dict[str, Any]) -> None:
            async with gate:
                await _record(row, name, lambda: metrics[name].ascore(**kwargs), secrets=(judge.api_key,))

        tasks = []
        for row, sample in zip(rows, samples, strict=True):
            for name in JUDGE_METRICS:
                kwargs = inputs(name, sample)
                if kwargs is not None:
                    tasks.append(one(row, name, kwargs))
        await asyncio.gather(*tasks)


# --- summary ----------------------------------------------------------------------------------------


def merge_rows(*per_question: Sequence[Row]) -> list[Row]:
    """Combine e.g. `score_without_llm` and `score_with_judge` rows question by question."""
    if len({len(rows) for rows in per_question}) > 1:
        raise ValueError("every list of rows must have one row per question, in the same order")
    merged: list[Row] = []
    for rows in zip(*per_question, strict=True):
        out: Row = {ERRORS_KEY: {}}
        for row in rows:
            out.update({k: v for k, v in row.items() if k != ERRORS_KEY})
            out[ERRORS_KEY].update(row.get(ERRORS_KEY, {}))
        merged.append(out)
    return merged


def metric_means(per_question: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per metric (of `ALL_METRICS`), the mean over the questions where it has a value.

    Metrics with no value on any question are left out.
    """
    means: dict[str, float] = {}
    for name in ALL_METRICS:
        values = [float(row[name]) for row in per_question if row.get(name) is not None]
        if values:
            means[name] = sum(values) / len(values)
    return means


def ragas_score(per_question: Sequence[Mapping[str, Any]]) -> float:
    """One headline number (in [0, 1] but for a slightly negative cosine): the unweighted mean of
    `metric_means(per_question)`.

    I.e. first each metric is averaged over the questions where it has a value (None, whether not
    applicable or failed, is skipped, not counted as 0), then those per-metric means are averaged,
    each metric weighing the same however many questions it covers. Keys other than
    `ALL_METRICS` (e.g. `errors`) are ignored. NaN when no metric has any value.

    Compare it only between runs with the same metric set: adding the judge metrics changes
    what it averages. Report the per-metric means and error counts alongside it.
    """
    means = metric_means(per_question)
    return sum(means.values()) / len(means) if means else math.nan
