"""The one place that talks to the OpenAI SDK: item in, `CallResult` out, exceptions left to `retry`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import openai

from ai_assets.inference.items import CallResult, InferenceItem
from ai_assets.inference.retry import MalformedResponseError


def make_openai_call(client: openai.AsyncOpenAI, default_model: str) -> Callable[[InferenceItem], Awaitable[CallResult]]:
    """A `call` for `run_batch`: one non-streaming chat completion per item, no retries of its own.

    The client should be built with `max_retries=0` (the engine retries, with its own accounting).
    Missing `usage` counts as 0 tokens (some compatible servers omit it); a null message content
    (e.g. a tool call or refusal) becomes "". A 2xx body that is not a chat completion raises
    `MalformedResponseError`, which the engine treats as retryable.
    """

    async def call(item: InferenceItem) -> CallResult:
        response = await client.chat.completions.create(**item.request_kwargs(default_model))
        return _to_result(response, item.model or default_model)

    return call


def _to_result(response: Any, requested_model: str) -> CallResult:
    # Without strict validation the SDK builds models with `construct()`, so a JSON body of the
    # wrong shape comes back as an object with missing attributes, or as a bare str for a
    # non-JSON content type. Check the shape here so it is retried instead of crashing the batch.
    try:
        choice = response.choices[0]
        message = choice.message
        content = message.content if message is not None else None
        usage = getattr(response, "usage", None)
        prompt_tokens = (getattr(usage, "prompt_tokens", None) or 0) if usage is not None else 0
        completion_tokens = (getattr(usage, "completion_tokens", None) or 0) if usage is not None else 0
        model = getattr(response, "model", None) or requested_model
        finish_reason = getattr(choice, "finish_reason", None)
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        raise MalformedResponseError(
            f"response is not a chat completion ({type(response).__name__}: {type(exc).__name__}: {exc})"
        ) from exc
    if content is not None and not isinstance(content, str):
        raise MalformedResponseError(f"message content is {type(content).__name__}, not a string")
    return CallResult(
        output=content or "",
        model=str(model),
        finish_reason=str(finish_reason) if finish_reason is not None else None,
        prompt_tokens=int(prompt_tokens),
        completion_tokens=int(completion_tokens),
    )
