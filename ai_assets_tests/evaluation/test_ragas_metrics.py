"""ragas metrics for real: ragas 0.4.3's own metric classes, the project's embedding model, and a real
judge server on 127.0.0.1 (the inference fake, plus a wrapper of it that answers ragas' prompts)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from ai_assets.lib.evaluation.ragas_metrics import (
    ALL_METRICS,
    ANSWER_RELEVANCY,
    CONTEXT_PRECISION_LLM,
    CONTEXT_PRECISION_NON_LLM,
    CONTEXT_RECALL_LLM,
    CONTEXT_RECALL_NON_LLM,
    ERRORS_KEY,
    FAITHFULNESS,
    JUDGE_METRICS,
    NON_LLM_METRICS,
    ROUGE_L,
    SEMANTIC_SIMILARITY,
    STRING_SIMILARITY,
    JudgeConfig,
    QuestionSample,
    merge_rows,
    metric_means,
    ragas_score,
    score_with_judge,
    score_without_llm,
)
from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets_tests.inference import openai_server
from ai_assets_tests.inference.openai_server import FakeOpenAIServer

API_KEY = "sk-judge-Secret0123456789"

PARIS = "Paris is the capital and largest city of France."
EIFFEL = "The Eiffel Tower in Paris was completed in 1889 for the World's Fair."
BANANA = "Bananas are rich in potassium and grow in tropical climates."
QUESTION = "What is the capital of France?"
REFERENCE = "Paris is the capital of France."

PERFECT = QuestionSample(QUESTION, REFERENCE, [PARIS, EIFFEL], REFERENCE, [PARIS])
WRONG = QuestionSample(QUESTION, "Bananas grow in tropical climates.", [BANANA, EIFFEL], REFERENCE, [PARIS])
NO_REFERENCE = QuestionSample("Where is the Eiffel Tower?", "In Paris.", [EIFFEL], None, None)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def embed() -> Callable[[list[str]], np.ndarray]:
    return EmbeddingModelResource().encode


# --- without an LLM ---------------------------------------------------------------------------------


def test_non_llm_metrics_rank_a_perfect_answer_above_a_wrong_one(embed: Callable[[list[str]], np.ndarray]) -> None:
    perfect, wrong, no_reference = score_without_llm([PERFECT, WRONG, NO_REFERENCE], embed)

    for row in (perfect, wrong, no_reference):
        assert set(row) == {*NON_LLM_METRICS, ERRORS_KEY}
        assert row[ERRORS_KEY] == {}
    # Answer identical to the reference: every answer-vs-reference metric is (about) 1.
    assert perfect[SEMANTIC_SIMILARITY] == pytest.approx(1.0, abs=1e-5)
    assert perfect[STRING_SIMILARITY] == pytest.approx(1.0)
    assert perfect[ROUGE_L] == pytest.approx(1.0)
    for name in (SEMANTIC_SIMILARITY, STRING_SIMILARITY, ROUGE_L):
        assert perfect[name] > wrong[name], name
    assert wrong[SEMANTIC_SIMILARITY] < 0.5  # the real model sees bananas are not Paris
    assert wrong[ROUGE_L] < 0.2
    # The reference passage was retrieved (at rank 1) / was not retrieved at all.
    assert perfect[CONTEXT_RECALL_NON_LLM] == 1.0
    assert perfect[CONTEXT_PRECISION_NON_LLM] == pytest.approx(1.0)
    assert wrong[CONTEXT_RECALL_NON_LLM] == 0.0
    assert wrong[CONTEXT_PRECISION_NON_LLM] == pytest.approx(0.0)
    # No reference, no reference contexts: nothing applies, and that is not an error.
    assert all(no_reference[name] is None for name in NON_LLM_METRICS)


def test_context_precision_rewards_ranking_the_reference_passage_first(
    embed: Callable[[list[str]], np.ndarray],
) -> None:
    first, second, nothing = score_without_llm(
        [
            QuestionSample(QUESTION, REFERENCE, [PARIS, BANANA], None, [PARIS]),
            QuestionSample(QUESTION, REFERENCE, [BANANA, PARIS], None, [PARIS]),
            QuestionSample(QUESTION, REFERENCE, [], None, [PARIS, EIFFEL]),
        ],
        embed,
    )
    assert first[CONTEXT_PRECISION_NON_LLM] == pytest.approx(1.0)
    assert second[CONTEXT_PRECISION_NON_LLM] == pytest.approx(0.5)  # average precision: hit at rank 2
    assert first[CONTEXT_RECALL_NON_LLM] == second[CONTEXT_RECALL_NON_LLM] == 1.0
    assert nothing[CONTEXT_RECALL_NON_LLM] == 0.0 and nothing[CONTEXT_PRECISION_NON_LLM] == pytest.approx(0.0)
    assert all(row[ERRORS_KEY] == {} for row in (first, second, nothing))


def test_a_failing_metric_on_one_question_is_recorded_and_the_rest_still_scored(
    embed: Callable[[list[str]], np.ndarray],
) -> None:
    def picky_embed(texts: list[str]) -> np.ndarray:
        if any("POISON" in t for t in texts):
            raise RuntimeError("embedding backend refused the text")
        return embed(texts)

    poisoned = QuestionSample(QUESTION, "POISON answer", [PARIS], REFERENCE, [PARIS])
    good, bad = score_without_llm([PERFECT, poisoned], picky_embed)

    assert good[SEMANTIC_SIMILARITY] == pytest.approx(1.0, abs=1e-5) and good[ERRORS_KEY] == {}
    assert bad[SEMANTIC_SIMILARITY] is None
    assert bad[ERRORS_KEY] == {SEMANTIC_SIMILARITY: "RuntimeError: embedding backend refused the text"}
    # The other metrics of the failing question are unaffected.
    assert bad[CONTEXT_RECALL_NON_LLM] == 1.0 and bad[ROUGE_L] is not None and bad[STRING_SIMILARITY] is not None


def test_ragas_score_is_the_mean_of_the_per_metric_means() -> None:
    rows = [
        {SEMANTIC_SIMILARITY: 1.0, ROUGE_L: 0.5, FAITHFULNESS: None, ERRORS_KEY: {FAITHFULNESS: "boom"}},
        {SEMANTIC_SIMILARITY: 0.0, ROUGE_L: None, FAITHFULNESS: 0.25, ERRORS_KEY: {}},
        {SEMANTIC_SIMILARITY: 0.5, "not_a_metric": 100.0, ERRORS_KEY: {}},
    ]
    assert metric_means(rows) == {SEMANTIC_SIMILARITY: 0.5, ROUGE_L: 0.5, FAITHFULNESS: 0.25}
    assert ragas_score(rows) == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert math.isnan(ragas_score([{SEMANTIC_SIMILARITY: None, ERRORS_KEY: {}}]))
    assert math.isnan(ragas_score([]))


def test_merge_rows_joins_values_and_errors_question_by_question() -> None:
    a = [{ROUGE_L: 1.0, ERRORS_KEY: {}}, {ROUGE_L: None, ERRORS_KEY: {ROUGE_L: "x"}}]
    b = [{FAITHFULNESS: None, ERRORS_KEY: {FAITHFULNESS: "y"}}, {FAITHFULNESS: 0.5, ERRORS_KEY: {}}]
    assert merge_rows(a, b) == [
        {ROUGE_L: 1.0, FAITHFULNESS: None, ERRORS_KEY: {FAITHFULNESS: "y"}},
        {ROUGE_L: None, FAITHFULNESS: 0.5, ERRORS_KEY: {ROUGE_L: "x"}},
    ]
    with pytest.raises(ValueError, match="one row per question"):
        merge_rows(a, b[:1])


def test_ragas_is_imported_lazily_with_tracking_off() -> None:
    code = (
        "import sys, os\n"
        "import ai_assets.lib.evaluation.ragas_metrics as m, ai_assets.lib.llm.answering\n"
        "assert 'ragas' not in sys.modules and 'instructor' not in sys.modules, 'imported eagerly'\n"
        "assert 'RAGAS_DO_NOT_TRACK' not in os.environ\n"
        "m.score_without_llm([m.QuestionSample('q', 'a b', ['c'], 'a b', ['c'])], lambda t: [[1.0, 0.0]] * len(t))\n"
        "from ragas._analytics import do_not_track\n"
        "assert os.environ['RAGAS_DO_NOT_TRACK'] == 'true' and do_not_track()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAGAS_DO_NOT_TRACK"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


# --- with a judge -----------------------------------------------------------------------------------


def _judge(server: FakeOpenAIServer, **overrides: Any) -> JudgeConfig:
    settings: dict[str, Any] = {"max_attempts": 2, "http_retries": 0, "timeout_s": 10.0, "max_in_flight": 3}
    settings.update(overrides)
    return JudgeConfig(base_url=server.base_url, api_key=API_KEY, model="judge-model", **settings)


def test_malformed_judge_output_is_recorded_per_question_and_nothing_raises(
    embed: Callable[[list[str]], np.ndarray],
) -> None:
    # The inference fake answers every chat completion with "echo: <prompt>": never the JSON ragas
    # asks for. A "[fail:400]" in the question makes the prompts that quote it fail with HTTP 400.
    failing = QuestionSample("[fail:400] What is the capital of France?", REFERENCE, [PARIS], None, None)
    with FakeOpenAIServer() as server:
        rows = score_with_judge([PERFECT, failing, NO_REFERENCE], _judge(server), embed)
        requests = server.total_requests

    perfect, failed, no_reference = rows
    assert all(set(row) == {*JUDGE_METRICS, ERRORS_KEY} for row in rows)
    assert all(row[name] is None for row in rows for name in JUDGE_METRICS)
    assert set(perfect[ERRORS_KEY]) == set(JUDGE_METRICS)
    for name, output_model in (
        (FAITHFULNESS, "StatementGeneratorOutput"),
        (ANSWER_RELEVANCY, "AnswerRelevanceOutput"),
        (CONTEXT_PRECISION_LLM, "ContextPrecisionOutput"),
        (CONTEXT_RECALL_LLM, "ContextRecallOutput"),
    ):
        error = perfect[ERRORS_KEY][name]
        assert error.startswith("InstructorRetryException:") and output_model in error and "Invalid JSON" in error
        assert "\n" not in error and len(error) <= 500
    # Without a reference the context metrics do not apply: None, but not errors.
    assert set(failed[ERRORS_KEY]) == set(no_reference[ERRORS_KEY]) == {FAITHFULNESS, ANSWER_RELEVANCY}
    assert "Error code: 400" in failed[ERRORS_KEY][FAITHFULNESS]
    assert "Invalid JSON" in failed[ERRORS_KEY][ANSWER_RELEVANCY]  # its prompt quotes only the answer
    assert not any(API_KEY in e for row in rows for e in row[ERRORS_KEY].values())
    # max_attempts=2 per structured call; a 400 is not retried; each metric stops at its first failure:
    # PERFECT 4 metrics x 2, the failing question 1 (400) + 2, NO_REFERENCE 2 metrics x 2.
    assert requests == 8 + 3 + 4
    assert math.isnan(ragas_score(rows))


class _JudgeHandler(openai_server._Handler):
    """Answers ragas' structured prompts with valid, scripted JSON (chosen by the output schema that
    instructor puts in the system message), or with prose when a message contains "[malformed]"."""

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        fake: FakeJudgeServer = self.server.fake  # type: ignore[assignment]
        text = "\n".join(str(m.get("content", "")) for m in payload.get("messages", []))
        with fake._lock:
            fake.payloads.append(payload)
        content = "Sure! Looks faithful to me." if "[malformed]" in text else json.dumps(_verdict(text))
        self._send_json(
            200,
            {
                "id": "chatcmpl-judge",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": payload.get("model"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )


def _verdict(text: str) -> dict[str, Any]:
    def asks_for(model: str) -> bool:
        return f'"title": "{model}"' in text

    if asks_for("NLIStatementOutput"):  # one of the two statements is supported: faithfulness 0.5
        return {
            "statements": [
                {"statement": "Paris is the capital of France.", "reason": "stated", "verdict": 1},
                {"statement": "Paris has 40 million inhabitants.", "reason": "not stated", "verdict": 0},
            ]
        }
    if asks_for("StatementGeneratorOutput"):
        return {"statements": ["Paris is the capital of France.", "Paris has 40 million inhabitants."]}
    if asks_for("AnswerRelevanceOutput"):  # the very question asked: relevancy 1.0
        return {"question": QUESTION, "noncommittal": 0}
    if asks_for("ContextPrecisionOutput"):  # a passage marked [useful] is useful
        useful = "[useful]" in text.split('"context":', 1)[-1]
        return {"reason": "scripted", "verdict": int(useful)}
    if asks_for("ContextRecallOutput"):  # two of three reference statements attributed: recall 2/3
        return {
            "classifications": [
                {"statement": "a", "reason": "r", "attributed": 1},
                {"statement": "b", "reason": "r", "attributed": 0},
                {"statement": "c", "reason": "r", "attributed": 1},
            ]
        }
    raise AssertionError(f"unexpected judge prompt: {text[:300]}")


class FakeJudgeServer(FakeOpenAIServer):
    """The inference fake's HTTP server, with `_JudgeHandler` answering."""

    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[dict[str, Any]] = []

    def start(self) -> FakeJudgeServer:
        self._httpd = openai_server._HTTPServer(("127.0.0.1", 0), _JudgeHandler)
        self._httpd.fake = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self


@pytest.fixture
def judge_server() -> Iterator[FakeJudgeServer]:
    with FakeJudgeServer() as server:
        yield server


def test_a_well_formed_judge_yields_ragas_scores_and_a_malformed_question_does_not_spoil_them(
    judge_server: FakeJudgeServer, embed: Callable[[list[str]], np.ndarray]
) -> None:
    scored = QuestionSample(QUESTION, REFERENCE, [BANANA, f"[useful] {PARIS}"], REFERENCE, [PARIS])
    malformed = QuestionSample(f"[malformed] {QUESTION}", "[malformed] Paris.", [PARIS], REFERENCE, [PARIS])

    good, bad = score_with_judge([scored, malformed], _judge(judge_server), embed)

    assert good[ERRORS_KEY] == {}
    assert good[FAITHFULNESS] == pytest.approx(0.5)
    assert good[ANSWER_RELEVANCY] == pytest.approx(1.0, abs=1e-5)
    assert good[CONTEXT_PRECISION_LLM] == pytest.approx(0.5)  # the useful passage was ranked second
    assert good[CONTEXT_RECALL_LLM] == pytest.approx(2 / 3)
    assert all(bad[name] is None for name in JUDGE_METRICS)
    assert set(bad[ERRORS_KEY]) == set(JUDGE_METRICS)
    # The judge was asked through instructor's JSON mode, for the configured model.
    assert {p["model"] for p in judge_server.payloads} == {"judge-model"}
    assert all(p.get("response_format") == {"type": "json_object"} for p in judge_server.payloads)
    assert all(p.get("max_tokens") == 1024 for p in judge_server.payloads)

    merged = merge_rows(score_without_llm([scored, malformed], embed), [good, bad])
    assert set(merged[0]) == {*ALL_METRICS, ERRORS_KEY}
    assert 0.0 < ragas_score(merged) <= 1.0


def test_judge_errors_redact_the_key_also_without_its_prefix() -> None:
    from ai_assets.lib.evaluation.ragas_metrics import _describe

    bare = API_KEY.removeprefix("sk-")
    message = _describe(RuntimeError(f"401: invalid key {bare}; middle {bare[4:16]}"), secrets=(API_KEY,))
    assert bare not in message and bare[4:16] not in message and "***" in message
