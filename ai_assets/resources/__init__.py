"""Every resource of the code location, configured from the environment with embedded defaults.

Each setting is declared once in `ai_assets.lib.settings` (variable, default, valid values). When the
code location loads, every set variable is validated, so a bad value stops the load with a message
naming the variable and its value instead of failing a run later; then `settings.apply_defaults` writes
the default text of every unset variable into this process's environment.

Every setting then reaches its resource as `dg.EnvVar` (`dg.EnvVar.int` for integers), which Dagster
resolves in the process that runs the step, from that process's environment, when the run starts. So
the code server, the daemon and a run worker (a Kubernetes pod with its own environment) each read their
own variables, the UI shows which variable feeds each field instead of a value captured at load, and
secrets are never shown. Dagster 1.13 has no environment-variable source for float fields, and its bool
source cannot be fed by a Python `EnvVar` (nor reads our true/false spellings): float, bool and JSON
settings are therefore `str` fields, parsed by their resource with the registry's parser when the run
uses them (an error names the variable, its value and the field), rather than literal values captured
at load, which a run could silently not share with the code server.

The run's per-run choices stay in each asset's `dg.Config`, with literal defaults; `None` there means
"the resource's value".
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from ai_assets.lib import settings
from ai_assets.resources.chunking import ChunkingResource
from ai_assets.resources.data_folder import DataFolderResource
from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets.resources.evaluation import EvaluationResource, JudgeResource
from ai_assets.resources.inference import InferenceResource
from ai_assets.resources.io_manager import ParquetTableIOManager
from ai_assets.resources.llm import LLMResource
from ai_assets.resources.qdrant import QdrantResource
from ai_assets.resources.sources import DocumentSourcesResource
from ai_assets.resources.training import LlmTrainingResource, TrainingLauncherResource, TrainingResource

__all__ = [
    "ChunkingResource",
    "DataFolderResource",
    "DocumentSourcesResource",
    "EmbeddingModelResource",
    "EvaluationResource",
    "InferenceResource",
    "JudgeResource",
    "LLMResource",
    "LlmTrainingResource",
    "ParquetTableIOManager",
    "QdrantResource",
    "TrainingLauncherResource",
    "TrainingResource",
    "build_resources",
    "setting_field",
]


def setting_field(name: str) -> Any:
    """What a resource field receives for setting `name`: `dg.EnvVar.int` for an integer setting,
    `dg.EnvVar` for every other one; read from the environment of the process that runs the step."""
    kind = settings.SETTINGS[name].env_kind  # KeyError for a name that is not registered
    return dg.EnvVar.int(name) if kind == "int" else dg.EnvVar(name)


def build_resources() -> dict[str, Any]:
    # Validate the user's environment first (an error names every invalid variable), then make every
    # unset variable hold its default text, so that each EnvVar below resolves in every process.
    settings.check_environment()
    settings.apply_defaults()
    data_folder = DataFolderResource(path=setting_field("AI_ASSETS_DATA_DIR"))
    return {
        "data_folder": data_folder,
        "table_io_manager": ParquetTableIOManager(data_folder=data_folder),
        "qdrant": QdrantResource(
            data_folder=data_folder,
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
            dtype=setting_field("EMBEDDING_DTYPE"),
            # A deployed fine-tuned model of the configured base takes its place (see the resource).
            data_folder=data_folder,
            model_store=setting_field("TRAINING_MODEL_STORE"),
        ),
        "chunking": ChunkingResource(
            chunk_size=setting_field("CHUNK_SIZE"), chunk_overlap=setting_field("CHUNK_OVERLAP")
        ),
        "document_sources": DocumentSourcesResource(
            sources=setting_field("AI_ASSETS_SOURCES"),
            http_timeout_s=setting_field("HTTP_TIMEOUT_S"),
            http_max_bytes=setting_field("HTTP_MAX_BYTES"),
            max_file_bytes=setting_field("LOCAL_MAX_FILE_BYTES"),
            follow_external_symlinks=setting_field("AI_ASSETS_FOLLOW_EXTERNAL_SYMLINKS"),
        ),
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
            # A deployed fine-tuned version of the embedded model is served in its place (see the resource).
            data_folder=data_folder,
            model_store=setting_field("TRAINING_MODEL_STORE"),
        ),
        "inference": InferenceResource(
            data_folder=data_folder,
            inbox=setting_field("AI_ASSETS_INFERENCE_INBOX"),
            max_prompt_chars=setting_field("INFERENCE_MAX_PROMPT_CHARS"),
            max_error_rate=setting_field("INFERENCE_MAX_ERROR_RATE"),
            mode=setting_field("INFERENCE_MODE"),
            batch_max_rounds=setting_field("INFERENCE_BATCH_MAX_ROUNDS"),
            batch_discount=setting_field("INFERENCE_BATCH_DISCOUNT"),
        ),
        "evaluation": EvaluationResource(
            eval_set=setting_field("RAG_EVAL_SET"),
            doc_id_prefix=setting_field("RAG_EVAL_DOC_ID_PREFIX"),
            synthesize_questions=setting_field("RAG_EVAL_SYNTHESIZE"),
            max_answered_questions=setting_field("RAG_EVAL_MAX_ANSWERED"),
            thresholds=setting_field("RAG_THRESHOLDS"),
            regression_tolerance=setting_field("RAG_REGRESSION_TOLERANCE"),
        ),
        "judge": JudgeResource(
            base_url=setting_field("RAGAS_JUDGE_BASE_URL"),
            model=setting_field("RAGAS_JUDGE_MODEL"),
            api_key=setting_field("RAGAS_JUDGE_API_KEY"),
        ),
        "training": TrainingResource(
            data_folder=data_folder,
            training_set=setting_field("TRAINING_SET"),
            doc_id_prefix=setting_field("TRAINING_DOC_ID_PREFIX"),
            synthesize_questions=setting_field("TRAINING_SYNTHESIZE"),
            validation_fraction=setting_field("TRAINING_VALIDATION_FRACTION"),
            min_accuracy=setting_field("TRAINING_MIN_ACCURACY"),
            accuracy_k=setting_field("TRAINING_ACCURACY_K"),
            min_improvement=setting_field("TRAINING_MIN_IMPROVEMENT"),
            model_store=setting_field("TRAINING_MODEL_STORE"),
        ),
        "llm_training": LlmTrainingResource(
            data_folder=data_folder,
            training_set=setting_field("LLM_TRAINING_SET"),
            validation_fraction=setting_field("LLM_VALIDATION_FRACTION"),
            min_exact_match=setting_field("LLM_MIN_EXACT_MATCH"),
            min_improvement=setting_field("LLM_MIN_IMPROVEMENT"),
            model_store=setting_field("TRAINING_MODEL_STORE"),
        ),
        "training_launcher": TrainingLauncherResource(
            launcher=setting_field("TRAINING_LAUNCHER"),
            device=setting_field("TRAINING_DEVICE"),
            image=setting_field("TRAINING_K8S_IMAGE"),
            namespace=setting_field("TRAINING_K8S_NAMESPACE"),
            service_account=setting_field("TRAINING_K8S_SERVICE_ACCOUNT"),
            gpus=setting_field("TRAINING_K8S_GPUS"),
            node_selector=setting_field("TRAINING_K8S_NODE_SELECTOR"),
            tolerations=setting_field("TRAINING_K8S_TOLERATIONS"),
            volumes=setting_field("TRAINING_K8S_VOLUMES"),
            volume_mounts=setting_field("TRAINING_K8S_VOLUME_MOUNTS"),
            kubeconfig=setting_field("TRAINING_K8S_KUBECONFIG"),
        ),
    }
