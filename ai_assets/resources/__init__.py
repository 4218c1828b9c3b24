"""Every resource of the code location, configured from the environment with embedded defaults.

Unset variables fall back to the embedded stack (on-disk Qdrant, the bundled model); set ones are
passed as `dg.EnvVar` so they are read at run time and secrets never appear in the UI.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets.resources.llm import OpenAIResource
from ai_assets.resources.qdrant import QdrantResource
from ai_assets.resources.sources import DocumentSourcesResource
from ai_assets.storage import ParquetTableIOManager


def _env(name: str, default: Any = None) -> Any:
    return dg.EnvVar(name) if os.environ.get(name) else default


def _env_int(name: str, default: int) -> Any:
    return dg.EnvVar.int(name) if os.environ.get(name) else default


def _env_float(name: str, default: float) -> Any:
    return dg.EnvVar.float(name) if os.environ.get(name) else default


def build_resources() -> dict[str, Any]:
    return {
        "qdrant": QdrantResource(
            url=_env("QDRANT_URL"),
            api_key=_env("QDRANT_API_KEY"),
            path=_env("QDRANT_PATH"),
            alias=_env("QDRANT_ALIAS", "knowledge-base"),
        ),
        "embedding_model": EmbeddingModelResource(
            model=_env("EMBEDDING_MODEL", ""),
            device=_env("EMBEDDING_DEVICE", "cpu"),
            batch_size=_env_int("EMBEDDING_BATCH_SIZE", 64),
            threads=_env_int("EMBEDDING_THREADS", 0),
        ),
        "document_sources": DocumentSourcesResource(
            sources=_env("AI_ASSETS_SOURCES", ""),
            http_timeout_s=_env_float("HTTP_TIMEOUT_S", 10.0),
            http_max_bytes=_env_int("HTTP_MAX_BYTES", 5_000_000),
        ),
        "table_io_manager": ParquetTableIOManager(),
        # Neither OPENAI_BASE_URL nor OPENAI_API_KEY set: the embedded SmolLM2 server.
        "llm": OpenAIResource(
            base_url=_env("OPENAI_BASE_URL"),
            api_key=_env("OPENAI_API_KEY"),
            organization=_env("OPENAI_ORG_ID"),
            project=_env("OPENAI_PROJECT_ID"),
            model=_env("OPENAI_MODEL", ""),
            timeout_s=_env_float("OPENAI_TIMEOUT_S", 120.0),
            max_in_flight=_env_int("OPENAI_MAX_IN_FLIGHT", 16),
            max_attempts=_env_int("OPENAI_MAX_ATTEMPTS", 6),
            requests_per_minute=_env_float("OPENAI_REQUESTS_PER_MINUTE", None),
            tokens_per_minute=_env_float("OPENAI_TOKENS_PER_MINUTE", None),
        ),
    }
