"""The one place that talks to the OpenAI SDK: item in, `CallResult` out, exceptions left to `retry`.

Also `warm_up_connections`, which opens the client's connection pool before a batch starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import openai
from openai.types.chat import ChatCompletion

from ai_assets.lib.llm.items import CallResult, InferenceItem
from ai_assets.lib.llm.retry import MalformedResponseError

CHAT_COMPLETIONS_PATH = "/chat/completions"
# What `chat.completions.create()` sends: a bearer token, never the admin key.
_REQUEST_OPTIONS: dict[str, Any] = {"security": {"bearer_auth": True}}


def make_openai_call(
    client: openai.AsyncOpenAI, default_model: str
) -> Callable[[InferenceItem], Awaitable[CallResult]]:
    """A `call` for `run_batch`: one non-streaming chat completion per item, no retries of its own.

    The client should be built with `max_retries=0` (the engine retries, with its own accounting).
    Missing `usage` counts as 0 tokens (some compatible servers omit it); a null message content
    (e.g. a tool call or refusal) becomes "". A 2xx body that is not a chat completion raises
    `MalformedResponseError`, which the engine treats as retryable.

    The request goes through `client.post` — the same URL, headers, auth, timeout, response type
    and exceptions as `client.chat.completions.create` — but without `create()`'s walk of every
    message through the SDK's TypedDict transform. That walk renames aliased fields and encodes
    file objects; our items are JSON-ready dicts from a JSONL file, for which it changes nothing
    (test_openai_call compares both requests on the wire), and it cost 1.1 ms of CPU per request
    of the 2.4 ms the client spent in all — on the event loop, where every other request waits.
    """

    async def call(item: InferenceItem) -> CallResult:
        response = await client.post(
            CHAT_COMPLETIONS_PATH,
            body=item.request_kwargs(default_model),
            cast_to=ChatCompletion,
            options=_REQUEST_OPTIONS,
        )
        return completion_result(response, item.model or default_model)

    return call


async def warm_up_connections(client: openai.AsyncOpenAI, n: int, *, timeout_s: float = 10.0) -> int:
    """Open `n` kept-alive connections in `client`'s pool at once, before the first request.

    Without this, a batch's first `n` requests each pay the connection set-up (TCP, TLS) and the
    process's first request also pays the SDK's and HTTP stack's cold start (hundreds of ms of
    CPU on the event loop, during which no other request is sent).

    Sends `n` concurrent `GET /models` (free, answered by OpenAI and by every compatible server we
    target: vLLM, llama.cpp, Ollama) and holds each connection until all `n` have answered, so
    the pool really opens `n` distinct connections (a fast server would otherwise answer the
    first before the last is sent, and the pool would reuse that connection). The bodies are read
    in full, so every connection goes back to the pool alive. `n` must not exceed the pool's
    `max_connections` (callers size it to `max_in_flight`); if it does, the surplus waits for a
    connection until `timeout_s`.

    Best effort, never raises for the server's sake: returns how many connections were held open
    at once (n when all went well). A server without `/models` answers 404 and its connection is
    released at once, so fewer may be counted; the batch itself is unaffected.
    """
    if n < 1:
        raise ValueError(f"n (connections to open) must be >= 1, got {n}")
    all_answered = asyncio.Event()
    answered: set[int] = set()  # tasks whose request got a 2xx and now holds its connection
    settled = 0

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == n:
            all_answered.set()

    async def open_one(index: int) -> None:
        try:
            async with client.with_streaming_response.models.list(timeout=timeout_s) as response:
                answered.add(index)
                settle()
                await all_answered.wait()
                await response.read()
        except (openai.APIError, httpx2.HTTPError):
            pass  # 4xx/5xx or transport failure: the batch's own requests will report it properly
        finally:
            if index not in answered:
                settle()

    tasks = [asyncio.create_task(open_one(i), name=f"warm-up-connection-{i}") for i in range(n)]
    try:
        await asyncio.wait_for(all_answered.wait(), timeout_s)
    except TimeoutError:
        pass
    finally:
        all_answered.set()  # the holders read their bodies and hand their connections back
        for index, task in enumerate(tasks):
            if index not in answered:
                task.cancel()  # still connecting or queued for a connection: give up on it
        await asyncio.gather(*tasks, return_exceptions=True)
    return len(answered)


def completion_result(response: Any, requested_model: str) -> CallResult:
    """The `CallResult` of a chat completion (an SDK object, or one built from a Batch API result body);
    raises `MalformedResponseError` when it is not one."""
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
        request_id = getattr(response, "id", None)
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
        request_id=request_id if isinstance(request_id, str) else None,
    )
