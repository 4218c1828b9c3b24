"""Answering questions from contexts: prompt building, and the real AsyncOpenAI client against a real local server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest

from ai_assets.lib.llm.answering import SYSTEM_PROMPT, answer_questions, build_prompt
from ai_assets.lib.llm.retry import RetryPolicy
from ai_assets_tests.inference.openai_server import FakeOpenAIServer

API_KEY = "sk-test-AnswerSecret0123456789"
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency_s=0.02) as srv:
        yield srv


def test_prompt_numbers_passages_in_order_and_cuts_at_the_character_budget() -> None:
    messages = build_prompt("  Who?  ", ["a" * 50, "  " + "b" * 50, "c" * 50], max_context_chars=70)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == SYSTEM_PROMPT
    user = messages[1]["content"]
    assert f"[1] {'a' * 50}\n\n[2] {'b' * 20}\n\nQuestion: Who?" in user
    assert "b" * 21 not in user and "[3]" not in user
    assert user.endswith("Answer:")


def test_prompt_without_room_or_passages_says_so() -> None:
    assert "(no passages)" in build_prompt("Q", ["some text"], max_context_chars=0)[1]["content"]
    assert "(no passages)" in build_prompt("Q", ["   ", ""], max_context_chars=100)[1]["content"]
    with pytest.raises(ValueError, match="max_context_chars"):
        build_prompt("Q", [], max_context_chars=-1)


def _answer(
    server: FakeOpenAIServer, prompts: list[list[dict[str, str]]], **kwargs: object
) -> list[tuple[str | None, str | None]]:
    async def go() -> list[tuple[str | None, str | None]]:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=10) as client:
            return await answer_questions(client, "answer-model", prompts, max_in_flight=2, max_tokens=64, **kwargs)  # type: ignore[arg-type]

    return asyncio.run(go())


def test_one_result_per_question_in_order_failures_recorded_not_raised(server: FakeOpenAIServer) -> None:
    questions = ["capital of France?", "[fail:400] bad one", "[fail:500:1] flaky one", "[fail:401] bad key", "last"]
    prompts = [build_prompt(q, ["Paris is the capital of France."], max_context_chars=500) for q in questions]

    results = _answer(server, prompts, retry=FAST)

    assert len(results) == len(questions)
    for (answer, error), prompt in zip(results, prompts, strict=True):
        assert (answer is None) != (error is None)  # exactly one is set
        if answer is not None:
            assert answer == f"echo: {prompt[1]['content']}"  # the fake echoes the last user message
    assert results[0][0] is not None and results[4][0] is not None
    assert results[2][0] is not None  # a 500 is retried, then succeeds
    assert results[1][1] is not None and results[1][1].startswith("bad_request (HTTP 400)")
    assert results[3][1] is not None and "HTTP 401" in results[3][1]
    assert API_KEY not in results[3][1]  # the fake echoes the Authorization header; it must be scrubbed
    assert server.max_in_flight <= 2
    assert server.total_requests == len(questions) + 1  # one retry, for the 500; 4xx are final


def test_no_questions_no_requests(server: FakeOpenAIServer) -> None:
    assert _answer(server, []) == []
    assert server.total_requests == 0
