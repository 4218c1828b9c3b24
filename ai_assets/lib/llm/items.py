"""What flows through batch inference: one validated input item, one output row per item."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class InferenceItem:
    """One input line, validated. `messages` is always set (a bare `prompt` becomes one user message)."""

    id: str
    messages: tuple[dict[str, Any], ...]
    line: int  # 1-based line in the input file, for error messages
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    # Other request-body parameters of a batch-format line (`top_p`, `seed`, `stop`, `tools`, ...), sent
    # unchanged for the server to judge.
    extra: dict[str, Any] | None = None

    def request_kwargs(self, default_model: str) -> dict[str, Any]:
        """Keyword arguments for `chat.completions.create`; unset options are left to the server."""
        kwargs: dict[str, Any] = dict(self.extra) if self.extra else {}
        kwargs["model"] = self.model or default_model
        kwargs["messages"] = list(self.messages)
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if self.response_format is not None:
            kwargs["response_format"] = self.response_format
        return kwargs


@dataclass(frozen=True)
class CallResult:
    """A successful completion."""

    output: str
    model: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    request_id: str | None = None  # the completion's id as the server gave it


@dataclass
class OutputRow:
    """The final record of one item: exactly one per input id in the output file.

    Either `output` or `error` is set. `attempts` counts requests sent for this item across all runs.
    """

    id: str
    output: str | None = None
    error: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 0
    metadata: dict[str, Any] | None = field(default=None)
    # The provider's id of the answer: the completion id in sync mode, the batch request id
    # (`batch_req_...`) in batch_api mode; and the Batch API batch that answered it, if any.
    request_id: str | None = None
    batch_id: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None
