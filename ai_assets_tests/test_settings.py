"""Every documented setting, set to a valid value (the code location loads and the value reaches its
resource or config) and to an invalid one (a clear error naming the variable and the value).

The per-variable cases run in-process against `ai_assets.lib.settings`; the code location itself is loaded
in a few subprocesses, each with many variables set at once, since one load costs seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ai_assets.lib import settings
from ai_assets.resources.qdrant import QdrantResource
from ai_assets_tests.corpora import REPO_ROOT

DAGSTER = str(Path(sys.executable).parent / "dagster")
SECRETS = {"QDRANT_API_KEY", "OPENAI_API_KEY", "RAGAS_JUDGE_API_KEY"}
# Variables the README names that are not settings of this code location.
NOT_SETTINGS = {"RAGAS_DO_NOT_TRACK", "DAGSTER_HOME", "AI_ASSETS_SCREENSHOTS"}
PREFIXES = (
    "AI_ASSETS_",
    "HTTP_",
    "LOCAL_",
    "QDRANT_",
    "EMBEDDING_",
    "CHUNK_",
    "OPENAI_",
    "INFERENCE_",
    "RAG",
    "TRAINING_",
)


def valid_values(tmp: Path) -> dict[str, tuple[str, object]]:
    """Per variable: a valid value, and what the code location must then hold (JSON-comparable)."""
    (tmp / "docs").mkdir(exist_ok=True)
    (tmp / "model").mkdir(exist_ok=True)
    (tmp / "eval.jsonl").write_text('{"id": "q1", "question": "?", "relevant_doc_ids": ["d"]}\n')
    return {
        "AI_ASSETS_DATA_DIR": (str(tmp / "data"), str((tmp / "data").resolve())),
        "AI_ASSETS_SOURCES": (f"docs={tmp / 'docs'}", f"docs={tmp / 'docs'}"),
        "HTTP_TIMEOUT_S": ("2.5", 2.5),
        "HTTP_MAX_BYTES": ("12345", 12345),
        "LOCAL_MAX_FILE_BYTES": ("4096", 4096),
        "AI_ASSETS_FOLLOW_EXTERNAL_SYMLINKS": ("yes", True),
        "QDRANT_URL": ("http://127.0.0.1:6333", "http://127.0.0.1:6333"),
        "QDRANT_API_KEY": ("qk-test-key", "qk-test-key"),
        "QDRANT_PATH": (str(tmp / "qdrant"), str(tmp / "qdrant")),
        "QDRANT_ALIAS": ("kb-test", "kb-test"),
        "EMBEDDING_MODEL": (str(tmp / "model"), str(tmp / "model")),
        "EMBEDDING_DEVICE": ("cuda:1", "cuda:1"),
        "EMBEDDING_BATCH_SIZE": ("8", 8),
        "EMBEDDING_THREADS": ("2", 2),
        "EMBEDDING_DTYPE": ("bfloat16", "bfloat16"),
        "CHUNK_SIZE": ("128", 128),
        "CHUNK_OVERLAP": ("16", 16),
        "AI_ASSETS_TIMEZONE": ("Europe/Paris", "Europe/Paris"),
        "OPENAI_BASE_URL": ("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"),
        "OPENAI_API_KEY": ("sk-test-key", "sk-test-key"),
        "OPENAI_ORG_ID": ("org-1", "org-1"),
        "OPENAI_PROJECT_ID": ("proj-1", "proj-1"),
        "OPENAI_MODEL": ("gpt-test", "gpt-test"),
        "OPENAI_TIMEOUT_S": ("7.5", 7.5),
        "OPENAI_MAX_IN_FLIGHT": ("3", 3),
        "OPENAI_MAX_ATTEMPTS": ("2", 2),
        "OPENAI_REQUESTS_PER_MINUTE": ("90.5", 90.5),
        "OPENAI_TOKENS_PER_MINUTE": ("12000", 12000.0),
        "INFERENCE_MAX_PROMPT_CHARS": ("5000", 5000),
        "INFERENCE_MAX_ERROR_RATE": ("0.2", 0.2),
        "AI_ASSETS_INFERENCE_INBOX": (str(tmp / "inbox"), str((tmp / "inbox").resolve())),
        "INFERENCE_MODE": ("batch_api", "batch_api"),
        "INFERENCE_BATCH_MAX_ROUNDS": ("5", 5),
        "INFERENCE_BATCH_DISCOUNT": ("0.4", 0.4),
        "RAG_EVAL_SET": (str(tmp / "eval.jsonl"), str(tmp / "eval.jsonl")),
        "RAG_EVAL_DOC_ID_PREFIX": ("scifact#", "scifact#"),
        "RAG_EVAL_SYNTHESIZE": ("3", 3),
        "RAG_EVAL_MAX_ANSWERED": ("5", 5),
        "RAG_THRESHOLDS": ('{"ndcg_at_10": 0.6}', {"ndcg_at_10": 0.6}),
        "RAG_REGRESSION_TOLERANCE": ("0.05", 0.05),
        "RAGAS_JUDGE_BASE_URL": ("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"),
        "RAGAS_JUDGE_MODEL": ("judge-model", "judge-model"),
        "RAGAS_JUDGE_API_KEY": ("jk-test-key", "jk-test-key"),
        "TRAINING_SET": (str(tmp / "eval.jsonl"), str(tmp / "eval.jsonl")),
        "TRAINING_DOC_ID_PREFIX": ("scifact#", "scifact#"),
        "TRAINING_SYNTHESIZE": ("12", 12),
        "TRAINING_VALIDATION_FRACTION": ("0.25", 0.25),
        "TRAINING_MIN_ACCURACY": ("0.7", 0.7),
        "TRAINING_ACCURACY_K": ("20", 20),
        "TRAINING_MIN_IMPROVEMENT": ("0.01", 0.01),
        "LLM_TRAINING_SET": (str(tmp / "sft.jsonl"), str((tmp / "sft.jsonl").resolve())),
        "LLM_VALIDATION_FRACTION": ("0.3", 0.3),
        "LLM_MIN_EXACT_MATCH": ("0.8", 0.8),
        "LLM_MIN_IMPROVEMENT": ("0.05", 0.05),
        "TRAINING_LAUNCHER": ("k8s", "k8s"),
        "TRAINING_DEVICE": ("cuda", "cuda"),
        "TRAINING_MODEL_STORE": (str(tmp / "models"), str((tmp / "models").resolve())),
        "TRAINING_EXECUTOR": ("k8s", "k8s"),
        "TRAINING_K8S_IMAGE": ("registry.example/ai-assets:1.2", "registry.example/ai-assets:1.2"),
        "TRAINING_K8S_NAMESPACE": ("ml-training", "ml-training"),
        "TRAINING_K8S_SERVICE_ACCOUNT": ("trainer", "trainer"),
        "TRAINING_K8S_GPUS": ("4", 4),
        "TRAINING_K8S_NODE_SELECTOR": ('{"nvidia.com/gpu.product": "A100"}', {"nvidia.com/gpu.product": "A100"}),
        "TRAINING_K8S_TOLERATIONS": ('[{"key": "nvidia.com/gpu", "operator": "Exists"}]', TOLERATIONS),
        "TRAINING_K8S_VOLUMES": ('[{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}]', VOLUMES),
        "TRAINING_K8S_VOLUME_MOUNTS": (
            '[{"name": "data", "mountPath": "/data"}]',
            [{"name": "data", "mountPath": "/data"}],
        ),
        "TRAINING_K8S_KUBECONFIG": (str(tmp / "kubeconfig"), str(tmp / "kubeconfig")),
    }


TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
VOLUMES = [{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}]


def invalid_values(tmp: Path) -> dict[str, str]:
    """Per variable: a value a user could plausibly set by mistake, which must be refused."""
    a_file = tmp / "a_file.txt"
    a_file.write_text("not a folder")
    return {
        "AI_ASSETS_DATA_DIR": str(a_file),
        "AI_ASSETS_SOURCES": "ftp://example.org/docs",
        "HTTP_TIMEOUT_S": "ten",
        "HTTP_MAX_BYTES": "5MB",
        "LOCAL_MAX_FILE_BYTES": "0",
        "AI_ASSETS_FOLLOW_EXTERNAL_SYMLINKS": "maybe",
        "QDRANT_URL": "qdrant:6333",
        "QDRANT_API_KEY": "qk with space",
        "QDRANT_PATH": str(a_file),
        "QDRANT_ALIAS": "knowledge base",
        "EMBEDDING_MODEL": "model\x01name",
        "EMBEDDING_DEVICE": "gpu",
        "EMBEDDING_BATCH_SIZE": "0",
        "EMBEDDING_THREADS": "-2",
        "EMBEDDING_DTYPE": "fp16",
        "CHUNK_SIZE": "abc",
        "CHUNK_OVERLAP": "-1",
        "AI_ASSETS_TIMEZONE": "Mars/Olympus_Mons",
        "OPENAI_BASE_URL": "localhost:11434/v1",
        "OPENAI_API_KEY": "sk-pasted-with-newline\n",
        "OPENAI_ORG_ID": "org 1",
        "OPENAI_PROJECT_ID": "proj\t1",
        "OPENAI_MODEL": "gpt 4o",
        "OPENAI_TIMEOUT_S": "2m",
        "OPENAI_MAX_IN_FLIGHT": "0",
        "OPENAI_MAX_ATTEMPTS": "three",
        "OPENAI_REQUESTS_PER_MINUTE": "-5",
        "OPENAI_TOKENS_PER_MINUTE": "inf",
        "INFERENCE_MAX_PROMPT_CHARS": "1e5",
        "INFERENCE_MAX_ERROR_RATE": "5%",
        "AI_ASSETS_INFERENCE_INBOX": str(a_file),
        "INFERENCE_MODE": "batch",
        "INFERENCE_BATCH_MAX_ROUNDS": "0",
        "INFERENCE_BATCH_DISCOUNT": "50%",
        "RAG_EVAL_SET": str(tmp / "eval\x01.jsonl"),
        "RAG_EVAL_DOC_ID_PREFIX": "a\x01b",
        "RAG_EVAL_SYNTHESIZE": "-1",
        "RAG_EVAL_MAX_ANSWERED": "all",
        "RAG_THRESHOLDS": "{not json",
        "RAG_REGRESSION_TOLERANCE": "-0.1",
        "RAGAS_JUDGE_BASE_URL": "judge.local",
        "RAGAS_JUDGE_MODEL": "my judge",
        "RAGAS_JUDGE_API_KEY": " jk-leading-space",
        "TRAINING_SET": str(tmp / "train\x01.jsonl"),
        "TRAINING_DOC_ID_PREFIX": "a\x02b",
        "TRAINING_SYNTHESIZE": "0",
        "TRAINING_VALIDATION_FRACTION": "0.95",
        "TRAINING_MIN_ACCURACY": "85%",
        "TRAINING_ACCURACY_K": "0",
        "TRAINING_MIN_IMPROVEMENT": "two",
        "LLM_TRAINING_SET": str(tmp / "sft\x03.jsonl"),
        "LLM_VALIDATION_FRACTION": "0",
        "LLM_MIN_EXACT_MATCH": "1.5",
        "LLM_MIN_IMPROVEMENT": "lots",
        "TRAINING_LAUNCHER": "kubernetes",
        "TRAINING_DEVICE": "gpu0",
        "TRAINING_MODEL_STORE": str(a_file),
        "TRAINING_EXECUTOR": "celery",
        "TRAINING_K8S_IMAGE": "my image",
        "TRAINING_K8S_NAMESPACE": "ML_Training",
        "TRAINING_K8S_SERVICE_ACCOUNT": "Trainer!",
        "TRAINING_K8S_GPUS": "-1",
        "TRAINING_K8S_NODE_SELECTOR": '{"gpu": true}',
        "TRAINING_K8S_TOLERATIONS": '{"key": "nvidia.com/gpu"}',
        "TRAINING_K8S_VOLUMES": "[broken",
        "TRAINING_K8S_VOLUME_MOUNTS": '["data"]',
        "TRAINING_K8S_KUBECONFIG": "kube\x01config",
    }


def shown(name: str, raw: str) -> str:
    """How an error must show the variable and its value (a secret only by its length)."""
    return f"{name}=(hidden, {len(raw)} characters)" if name in SECRETS else f"{name}={raw!r}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in settings.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def subprocess_env(values: dict[str, str], tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in settings.SETTINGS}
    home = tmp / "dagster_home"
    home.mkdir(exist_ok=True)
    return {**env, "DAGSTER_HOME": str(home), "AI_ASSETS_DATA_DIR": str(tmp / "data"), **values}


# --- the registry is complete --------------------------------------------------------------------


def test_every_documented_variable_is_a_setting_with_both_cases(tmp_path: Path) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    documented = {
        name for name in re.findall(r"\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b", readme) if name.startswith(PREFIXES)
    } - NOT_SETTINGS
    assert documented - set(settings.SETTINGS) == set(), "documented but not a setting"
    read_in_code = set()
    for path in (REPO_ROOT / "ai_assets").rglob("*.py"):
        read_in_code |= set(re.findall(r"""os\.(?:environ\.get|getenv)\(\s*["']([A-Z0-9_]+)""", path.read_text()))
        read_in_code |= set(re.findall(r"""settings\.value\(\s*["']([A-Z0-9_]+)""", path.read_text()))
        read_in_code |= set(re.findall(r"""setting_field\(\s*["']([A-Z0-9_]+)""", path.read_text()))
    assert read_in_code - set(settings.SETTINGS) - NOT_SETTINGS == set(), "read in the code but not a setting"
    assert set(valid_values(tmp_path)) == set(settings.SETTINGS) == set(invalid_values(tmp_path))


# --- each variable, in-process ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(settings.SETTINGS))
def test_valid_value_is_parsed(name: str, tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    raw, expected = valid_values(tmp_path)[name]
    clean_env.setenv(name, raw)
    value = settings.value(name)
    assert (str(value) if isinstance(value, Path) else value) == expected


@pytest.mark.parametrize("name", sorted(settings.SETTINGS))
def test_invalid_value_names_the_variable_and_the_value(
    name: str, tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    raw = invalid_values(tmp_path)[name]
    clean_env.setenv(name, raw)
    with pytest.raises(settings.SettingError) as caught:
        settings.value(name)
    message = str(caught.value)
    assert shown(name, raw) in message
    assert "expected" in message and "unset it for the default" in message
    if name in SECRETS:
        assert raw.strip() not in message  # a secret never reaches a log or the UI


@pytest.mark.parametrize("name", sorted(settings.SETTINGS))
def test_unset_and_empty_mean_the_default(name: str, clean_env: pytest.MonkeyPatch) -> None:
    assert settings.value(name) == settings.SETTINGS[name].default
    clean_env.setenv(name, "")
    assert settings.value(name) == settings.SETTINGS[name].default


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("HTTP_TIMEOUT_S", "0"),
        ("HTTP_TIMEOUT_S", "-1"),
        ("HTTP_TIMEOUT_S", "nan"),
        ("OPENAI_TIMEOUT_S", "inf"),
        ("INFERENCE_MAX_ERROR_RATE", "1.5"),
        ("CHUNK_SIZE", "12.5"),
        ("QDRANT_URL", "http://qdrant:99999"),
        ("QDRANT_URL", "http://"),
        ("RAG_THRESHOLDS", '{"ndcg_at_10": "high"}'),
        ("RAG_THRESHOLDS", "[0.5]"),
        ("AI_ASSETS_FOLLOW_EXTERNAL_SYMLINKS", "2"),
    ],
)
def test_edge_values_are_refused(name: str, raw: str, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(name, raw)
    with pytest.raises(settings.SettingError, match=re.escape(shown(name, raw))):
        settings.value(name)


def test_overlap_must_stay_below_the_chunk_size(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CHUNK_SIZE", "64")
    clean_env.setenv("CHUNK_OVERLAP", "64")
    with pytest.raises(settings.SettingError, match=r"CHUNK_OVERLAP='64': not below CHUNK_SIZE \(64\)"):
        settings.value("CHUNK_SIZE")
    clean_env.setenv("CHUNK_OVERLAP", "63")
    assert (settings.value("CHUNK_SIZE"), settings.value("CHUNK_OVERLAP")) == (64, 63)
    # A CHUNK_SIZE at or below the DEFAULT overlap fails this load, naming CHUNK_SIZE: apply_defaults
    # would otherwise write CHUNK_OVERLAP=32 and every process started from this one would fail on it.
    clean_env.delenv("CHUNK_OVERLAP")
    clean_env.setenv("CHUNK_SIZE", "20")
    with pytest.raises(settings.SettingError, match=r"CHUNK_SIZE='20': not above the default CHUNK_OVERLAP \(32\)"):
        settings.value("CHUNK_SIZE")


def test_every_invalid_setting_is_reported_at_once(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    bad = invalid_values(tmp_path)
    for name, raw in bad.items():
        clean_env.setenv(name, raw)
    with pytest.raises(settings.SettingError) as caught:
        settings.value("QDRANT_ALIAS")
    assert len(caught.value.problems) == len(bad)
    for name, raw in bad.items():
        assert shown(name, raw) in str(caught.value)


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("On", True), ("no", False), ("FALSE", False)])
def test_booleans(raw: str, expected: bool, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AI_ASSETS_FOLLOW_EXTERNAL_SYMLINKS", raw)
    assert settings.value("AI_ASSETS_FOLLOW_EXTERNAL_SYMLINKS") is expected


def test_a_changed_environment_is_read_again(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("EMBEDDING_BATCH_SIZE", "8")
    assert settings.value("EMBEDDING_BATCH_SIZE") == 8
    clean_env.setenv("EMBEDDING_BATCH_SIZE", "16")
    assert settings.value("EMBEDDING_BATCH_SIZE") == 16


def test_qdrant_resource_from_settings_reads_string_settings_at_run_time(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ai_assets.resources import DataFolderResource, setting_field

    clean_env.setenv("QDRANT_ALIAS", "first")
    resource = QdrantResource(data_folder=DataFolderResource(path=str(tmp_path)), alias=setting_field("QDRANT_ALIAS"))
    # A run resolves EnvVar fields in its own process, from its own environment.
    clean_env.setenv("QDRANT_ALIAS", "second")
    with resource.process_config_and_initialize_cm() as resolved:
        assert resolved.alias == "second"


def test_every_setting_reaches_its_resource_as_an_env_var() -> None:
    import dagster as dg

    from ai_assets.resources import setting_field

    for name, setting in settings.SETTINGS.items():
        field = setting_field(name)
        if setting.env_kind == "int":
            assert field == dg.EnvVar.int(name), name
        else:
            assert isinstance(field, dg.EnvVar) and field.env_var_name == name, name


@pytest.mark.parametrize("name", sorted(settings.SETTINGS))
def test_default_text_means_the_default(name: str) -> None:
    # What `apply_defaults` writes for an unset variable is parsed back to the documented default.
    setting = settings.SETTINGS[name]
    assert settings.parse(name, setting.default_text) == setting.default


def test_apply_defaults_fills_only_unset_registered_variables() -> None:
    environ = {"CHUNK_SIZE": "128", "QDRANT_URL": "", "UNRELATED": "x"}
    settings.apply_defaults(environ)
    assert environ["CHUNK_SIZE"] == "128"  # a set variable is never changed
    assert environ["QDRANT_URL"] == ""  # "unset means off": its default text is empty
    assert environ["CHUNK_OVERLAP"] == "32" and environ["HTTP_TIMEOUT_S"] == "10.0"
    assert json.loads(environ["RAG_THRESHOLDS"]) == settings.DEFAULT_THRESHOLDS
    assert environ["AI_ASSETS_FOLLOW_EXTERNAL_SYMLINKS"] == "false"
    assert set(environ) == {*settings.SETTINGS, "UNRELATED"}


def test_a_malformed_text_field_names_the_variable_the_value_and_the_field() -> None:
    from ai_assets.resources import DocumentSourcesResource, LLMResource

    with pytest.raises(settings.SettingError, match=re.escape("HTTP_TIMEOUT_S='ten': not a number")) as caught:
        DocumentSourcesResource(http_timeout_s="ten").http_settings()
    assert "[DocumentSourcesResource.http_timeout_s]" in str(caught.value)
    with pytest.raises(settings.SettingError, match=re.escape("OPENAI_REQUESTS_PER_MINUTE='-5': out of range")):
        LLMResource(requests_per_minute="-5").rate_limits()
    assert LLMResource().rate_limits() == (None, None) and LLMResource().timeout == 120.0


# --- the code location, in subprocesses ------------------------------------------------------------

PROBE = """
import contextlib, json
from ai_assets.definitions import defs
from ai_assets.defs.evaluation.assets import EvalSetConfig, QualityConfig
from ai_assets.defs.inference.assets import InferenceConfig
from ai_assets.defs.ingestion.assets import ChunkingConfig

# Run config holds only per-run choices with literal defaults: None = the resource's value.
assert ChunkingConfig().chunk_size is None and ChunkingConfig().chunk_overlap is None
assert EvalSetConfig().location is None and QualityConfig().max_answered_questions is None
assert InferenceConfig().max_prompt_chars is None

stack = contextlib.ExitStack()
# As a run resolves them: each EnvVar read from this process's environment.
r = {name: stack.enter_context(defs.resources[name].process_config_and_initialize_cm()) for name in
     ("qdrant", "embedding_model", "document_sources", "llm", "data_folder", "chunking", "inference",
      "evaluation", "judge", "training", "llm_training", "training_launcher")}
t, lt, tl = r["training"], r["llm_training"], r["training_launcher"]
pod = tl.pod_spec()
q, e, s, llm = r["qdrant"], r["embedding_model"], r["document_sources"], r["llm"]
chunking, inference, evaluation, judge = r["chunking"], r["inference"], r["evaluation"], r["judge"]
zones = {defs.get_schedule_def(n).execution_timezone for n in ("nightly_rag_refresh", "daily_rag_evaluation")}
assert len(zones) == 1, zones
requests_per_minute, tokens_per_minute = llm.rate_limits()
seen = {
    "AI_ASSETS_DATA_DIR": str(r["data_folder"].root),
    "AI_ASSETS_SOURCES": s.sources,
    "HTTP_TIMEOUT_S": s.http_settings().timeout_s,
    "HTTP_MAX_BYTES": s.http_max_bytes,
    "LOCAL_MAX_FILE_BYTES": s.max_file_bytes,
    "AI_ASSETS_FOLLOW_EXTERNAL_SYMLINKS": s.follows_external_symlinks(),
    "QDRANT_URL": q.url, "QDRANT_API_KEY": q.api_key, "QDRANT_PATH": q.path, "QDRANT_ALIAS": q.alias,
    "EMBEDDING_MODEL": e.model, "EMBEDDING_DEVICE": e.device,
    "EMBEDDING_BATCH_SIZE": e.batch_size, "EMBEDDING_THREADS": e.threads, "EMBEDDING_DTYPE": e.dtype,
    "CHUNK_SIZE": chunking.chunk_size, "CHUNK_OVERLAP": chunking.chunk_overlap,
    "AI_ASSETS_TIMEZONE": zones.pop(),
    "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": llm.api_key, "OPENAI_ORG_ID": llm.organization,
    "OPENAI_PROJECT_ID": llm.project, "OPENAI_MODEL": llm.model, "OPENAI_TIMEOUT_S": llm.timeout,
    "OPENAI_MAX_IN_FLIGHT": llm.max_in_flight, "OPENAI_MAX_ATTEMPTS": llm.max_attempts,
    "OPENAI_REQUESTS_PER_MINUTE": requests_per_minute, "OPENAI_TOKENS_PER_MINUTE": tokens_per_minute,
    "INFERENCE_MAX_PROMPT_CHARS": inference.max_prompt_chars,
    "INFERENCE_MAX_ERROR_RATE": inference.error_rate_threshold(),
    "AI_ASSETS_INFERENCE_INBOX": str(inference.folders().inbox),
    "INFERENCE_MODE": inference.default_mode(),
    "INFERENCE_BATCH_MAX_ROUNDS": inference.batch_max_rounds,
    "INFERENCE_BATCH_DISCOUNT": inference.discount(),
    "RAG_EVAL_SET": evaluation.eval_set, "RAG_EVAL_DOC_ID_PREFIX": evaluation.doc_id_prefix,
    "RAG_EVAL_SYNTHESIZE": evaluation.synthesize_questions,
    "RAG_EVAL_MAX_ANSWERED": evaluation.max_answered_questions,
    "RAG_THRESHOLDS": evaluation.threshold_map(),
    "RAG_REGRESSION_TOLERANCE": evaluation.tolerance(),
    "RAGAS_JUDGE_BASE_URL": judge.base_url, "RAGAS_JUDGE_MODEL": judge.model,
    "RAGAS_JUDGE_API_KEY": judge.api_key,
    "TRAINING_SET": t.training_set, "TRAINING_DOC_ID_PREFIX": t.doc_id_prefix,
    "TRAINING_SYNTHESIZE": t.synthesize_questions, "TRAINING_VALIDATION_FRACTION": t.fraction(),
    "TRAINING_MIN_ACCURACY": t.gate().min_accuracy, "TRAINING_ACCURACY_K": t.gate().accuracy_k,
    "TRAINING_MIN_IMPROVEMENT": t.gate().min_improvement, "TRAINING_MODEL_STORE": str(t.model_store_dir),
    "LLM_TRAINING_SET": str(lt.examples_path()), "LLM_VALIDATION_FRACTION": lt.fraction(),
    "LLM_MIN_EXACT_MATCH": lt.gate().min_exact_match, "LLM_MIN_IMPROVEMENT": lt.gate().min_improvement,
    "TRAINING_LAUNCHER": tl.kind, "TRAINING_DEVICE": tl.torch_device,
    "TRAINING_EXECUTOR": defs.get_job_def("fine_tuning").executor_def.name,
    "TRAINING_K8S_IMAGE": tl.image, "TRAINING_K8S_NAMESPACE": tl.namespace,
    "TRAINING_K8S_SERVICE_ACCOUNT": pod["service_account_name"], "TRAINING_K8S_GPUS": tl.gpus,
    "TRAINING_K8S_NODE_SELECTOR": pod["node_selector"], "TRAINING_K8S_TOLERATIONS": pod["tolerations"],
    "TRAINING_K8S_VOLUMES": pod["volumes"], "TRAINING_K8S_VOLUME_MOUNTS": pod["containers"][0]["volume_mounts"],
    "TRAINING_K8S_KUBECONFIG": tl.kubeconfig,
}
print("SEEN " + json.dumps(seen))
"""


def validate_definitions(env: dict[str, str]) -> subprocess.CompletedProcess:
    """`dagster definitions validate` on the code location, in a process with environment `env`."""
    return subprocess.run(
        [DAGSTER, "definitions", "validate", "-m", "ai_assets.definitions"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_valid_setting_loads_and_reaches_its_resource_or_config(tmp_path: Path) -> None:
    cases = valid_values(tmp_path)
    env = subprocess_env({name: raw for name, (raw, _) in cases.items()}, tmp_path)
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert probe.returncode == 0, probe.stderr[-4000:]
    seen = json.loads(next(line for line in probe.stdout.splitlines() if line.startswith("SEEN "))[5:])
    assert seen == {name: expected for name, (_, expected) in cases.items()}

    # The float settings once broke `dagster definitions validate` (EnvVar has no `float`).
    validate = validate_definitions(env)
    assert validate.returncode == 0, (validate.stdout + validate.stderr)[-4000:]


def test_every_invalid_setting_stops_the_load_naming_each(tmp_path: Path) -> None:
    bad = invalid_values(tmp_path)
    env = subprocess_env(bad, tmp_path)
    result = validate_definitions(env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for name, raw in bad.items():
        assert shown(name, raw) in output, f"{name} not named in:\n{output[-4000:]}"
    for secret in SECRETS:
        assert bad[secret].strip() not in output


def test_one_bad_integer_is_one_line_naming_it_not_a_python_traceback_line(tmp_path: Path) -> None:
    env = subprocess_env({"CHUNK_SIZE": "abc"}, tmp_path)
    result = validate_definitions(env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "invalid literal for int()" not in output
    lines = [line for line in output.splitlines() if "CHUNK_SIZE='abc'" in line]
    assert lines and "not a whole number" in lines[-1] and "expected" in lines[-1], output[-4000:]


# --- settings only a run can check -----------------------------------------------------------------


def test_an_embedding_model_that_is_not_there_is_named(tmp_path: Path) -> None:
    from ai_assets.resources.embeddings import EmbeddingModelResource

    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match=re.escape(f"EMBEDDING_MODEL={missing!r} is neither a local folder")):
        EmbeddingModelResource(model=missing).model_path  # noqa: B018 - resolving it is the check


def test_a_device_this_machine_lacks_is_named() -> None:
    from ai_assets.resources.embeddings import check_device

    check_device("cpu")
    with pytest.raises(ValueError, match=r"EMBEDDING_DEVICE='cuda:999': torch .* cannot use this device"):
        check_device("cuda:999")


# --- the run reads its own environment, not the loading process's -------------------------------------

CREATE_RUN = """
import os
import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import serialize_value
from ai_assets.definitions import defs

# What the UI of this process shows for the data folder: the variable, not a value captured here.
assert defs.resources["data_folder"].path.env_var_name == "AI_ASSETS_DATA_DIR"
selection = frozenset({dg.AssetKey("raw_documents")})
repository = ReconstructableRepository.for_module("ai_assets.definitions", "defs", working_directory=os.getcwd())
job = repository.get_reconstructable_job(defs.resolve_implicit_global_asset_job_def().name).get_subset(
    asset_selection=selection
)
instance = dg.DagsterInstance.get()
run = instance.create_run_for_job(
    job_def=job.get_definition(), job_code_origin=job.get_python_origin(), asset_selection=selection
)
print("RUN_ID " + run.run_id)
print("ARGS " + serialize_value(ExecuteRunArgs(job.get_python_origin(), run.run_id, instance.get_ref())))
"""

READ_RUN = """
import json, sys
import dagster as dg
instance = dg.DagsterInstance.get()
run = instance.get_run_by_id(sys.argv[1])
(record,) = instance.fetch_materializations(dg.AssetKey("raw_documents"), limit=1).records
metadata = record.asset_materialization.metadata
print("RUN " + json.dumps({"status": run.status.value, "path": metadata["path"].value,
                           "documents": metadata["documents"].value}))
"""


def test_a_run_uses_the_settings_of_its_own_process_not_those_of_the_loading_one(tmp_path: Path) -> None:
    """As on Kubernetes, where the code server and each run's pod have their own environments: the run
    is created by a process that loaded the code location with environment A, and executed by
    `dagster api execute_run` (what a run worker runs) with environment B. B's data folder and sources
    are the ones used."""
    for side, count in (("a", 1), ("b", 2)):
        docs = tmp_path / f"docs_{side}"
        docs.mkdir()
        for i in range(count):
            (docs / f"page{i}.md").write_text(f"# Page {side}{i}\n\nSome text about {side} number {i}.\n")

    def env(side: str) -> dict[str, str]:
        return subprocess_env(
            {"AI_ASSETS_DATA_DIR": str(tmp_path / f"data_{side}"), "AI_ASSETS_SOURCES": str(tmp_path / f"docs_{side}")},
            tmp_path,  # one DAGSTER_HOME: the instance both processes share, as a deployment does
        )

    def python(code: str, side: str, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            env=env(side),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        return done.stdout

    created = python(CREATE_RUN, "a")
    args = next(line for line in created.splitlines() if line.startswith("ARGS "))[5:]
    run_id = next(line for line in created.splitlines() if line.startswith("RUN_ID "))[7:]
    executed = subprocess.run(
        [DAGSTER, "api", "execute_run", args], env=env("b"), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert executed.returncode == 0, (executed.stdout + executed.stderr)[-4000:]

    seen = json.loads(next(line for line in python(READ_RUN, "b", run_id).splitlines() if line.startswith("RUN "))[4:])
    assert seen["status"] == "SUCCESS"
    assert seen["documents"] == 2  # B's sources
    assert Path(seen["path"]).is_relative_to((tmp_path / "data_b" / "tables").resolve())  # B's data folder
    assert not (tmp_path / "data_a").exists()  # nothing was written where the loading process would have
