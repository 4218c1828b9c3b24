"""Every resource of the code location, configured from the environment with embedded defaults.

Each setting is declared once in `ai_assets.lib.settings` (variable, default, valid values). Every set
variable is validated here, when the code location loads, so a bad value stops the load with a message
naming the variable and its value instead of failing a run later. String and integer settings are then
passed as `dg.EnvVar` / `dg.EnvVar.int`, read again when a run starts (secrets never appear in the UI);
float and bool settings are passed as their parsed values, because Dagster 1.13 has no environment-variable
source for `float` fields (only `EnvVar` for str and `EnvVar.int` for int). A run re-loads the code
location in its own process, so those values are that process's too.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from ai_assets.lib import settings
from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets.resources.llm import LLMResource
from ai_assets.resources.qdrant import QdrantResource
from ai_assets.resources.sources import DocumentSourcesResource
from ai_assets.resources.io_manager import ParquetTableIOManager


def setting_field(name: str) -> Any:
    """What a resource field receives for setting `name`: its default when unset, else an `EnvVar`
    for str/int settings and the validated value for the others."""
    value = settings.value(name)  # validates every set variable, naming each invalid one
    kind = settings.SETTINGS[name].env_kind
    if not settings.is_set(name) or kind == "literal":
        return value
    return dg.EnvVar(name) if kind == "str" else dg.EnvVar.int(name)


def build_resources() -> dict[str, Any]:
    settings.check_environment()
    return {
        "qdrant": QdrantResource(
            url=setting_field("QDRANT_URL"),
            api_key=setting_field("QDRANT_API_KEY"),
            path=setting_field("QDRANT_PATH"),
            alias=setting_field("QDRANT_ALIAS"),
        ),
        "embedding_model": EmbeddingModelResource(
            model=setting_field("EMBEDDING_MODEL"),
            device=setting_field("EMBEDDING_DEVICE"),
            batch_size=setting_field("EMBEDDING_BATCH_SIZE"),
            threads=setting_field("EMBEDDING_THREADS"),
        ),
        "document_sources": DocumentSourcesResource(
            sources=setting_field("AI_ASSETS_SOURCES"),
            http_timeout_s=setting_field("HTTP_TIMEOUT_S"),
            http_max_bytes=setting_field("HTTP_MAX_BYTES"),
            max_file_bytes=setting_field("LOCAL_MAX_FILE_BYTES"),
            follow_external_symlinks=setting_field("AI_ASSETS_FOLLOW_EXTERNAL_SYMLINKS"),
        ),
        "table_io_manager": ParquetTableIOManager(),
        # Neither OPENAI_BASE_URL nor OPENAI_API_KEY set: the embedded SmolLM2 server.
        "llm": LLMResource(
            base_url=setting_field("OPENAI_BASE_URL"),
            api_key=setting_field("OPENAI_API_KEY"),
            organization=setting_field("OPENAI_ORG_ID"),
            project=setting_field("OPENAI_PROJECT_ID"),
            model=setting_field("OPENAI_MODEL"),
            timeout_s=setting_field("OPENAI_TIMEOUT_S"),
            max_in_flight=setting_field("OPENAI_MAX_IN_FLIGHT"),
            max_attempts=setting_field("OPENAI_MAX_ATTEMPTS"),
            requests_per_minute=setting_field("OPENAI_REQUESTS_PER_MINUTE"),
            tokens_per_minute=setting_field("OPENAI_TOKENS_PER_MINUTE"),
        ),
    }
