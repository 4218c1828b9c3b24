"""Every deployment setting of the code location: its environment variable, default and valid values.

One registry (`SETTINGS`) instead of `os.environ` reads scattered over the package, so that a bad value
is caught when the code location loads, with a message that names the variable, shows its value (a
secret's only by length) and says what a valid one looks like; and so that every setting is listed in
one place for the README and the tests. An empty variable counts as unset: its default applies.

Resources read every setting through `dg.EnvVar` when a run starts (see `ai_assets.resources`). An
`EnvVar` has no default in Dagster, so `apply_defaults` writes each unset variable's default text into
the environment of every process that loads the code location (code server, daemon, run worker): the
run then reads its own environment, and an unset variable means the same default everywhere.

The first read of any setting validates them all and reports every invalid one at once, so a user fixes
a broken environment in one round instead of one variable per load.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class SettingError(ValueError):
    """One or more settings hold invalid values; each problem names the variable and its value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = f"Invalid setting: {self.problems[0]}"
        else:
            names = ", ".join(problem.split("=", 1)[0] for problem in self.problems)
            message = f"Invalid settings {names}:\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(message)


class _Invalid(ValueError):
    """Raised by a parser with the reason only; `SettingError` adds the variable and the value."""


Parser = Callable[[str], Any]


@dataclass(frozen=True)
class Setting:
    """One environment variable: `parse` turns its text into the value or raises `_Invalid`.

    `env_kind` says how a resource field receives it: "int" through `dg.EnvVar.int`, everything else
    through `dg.EnvVar` into a `str` field. Dagster 1.13 has no environment-variable source for float
    fields, and its bool source neither accepts an `EnvVar` from Python nor our true/false spellings;
    so float, bool, JSON and folder settings reach their resource as text and are parsed there, when
    the run uses them, by `parse` (an error names the variable and its value). `default=None` means
    "unset means off": its text is "" and resources treat "" as unset.
    """

    name: str
    default: Any
    parse: Parser
    expected: str
    env_kind: str = "str"
    secret: bool = False

    @property
    def default_text(self) -> str:
        """The default as the variable's text: what `apply_defaults` writes for an unset variable."""
        if self.default is None:
            return ""
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, dict):
            return json.dumps(self.default)
        return str(self.default)


# --- parsers ---------------------------------------------------------------------------------------


def _integer(minimum: int, maximum: int | None = None) -> Parser:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise _Invalid("not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise _Invalid("out of range")
        return value

    return parse


def _number(minimum: float, *, exclusive: bool = False, maximum: float | None = None) -> Parser:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise _Invalid("not a number") from None
        if not math.isfinite(value):
            raise _Invalid("not a finite number")
        if value < minimum or (exclusive and value == minimum) or (maximum is not None and value > maximum):
            raise _Invalid("out of range")
        return value

    return parse


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _Invalid("not a boolean")


def _text(text: str) -> str:
    if any(ord(c) < 32 and c not in "\t\n" for c in text):
        raise _Invalid("contains control characters")
    return text


def _token(text: str) -> str:
    """Model names, keys, ids: a stray space or newline (a copy-paste accident) breaks HTTP headers."""
    for position, char in enumerate(text, start=1):
        if char.isspace() or ord(char) < 32:
            raise _Invalid(f"contains whitespace or a control character at position {position}")
    return text


def _url(text: str) -> str:
    _token(text)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise _Invalid("not an http:// or https:// URL")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise _Invalid("its port is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise _Invalid("the URL has no host")
    return text


def _folder(text: str) -> Path:
    # Returned unresolved: a relative folder is resolved by its user against the current folder, each
    # time, as before this module existed.
    _text(text)
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise _Invalid("exists and is not a folder")
    return path


def _matching(pattern: str, reason: str) -> Parser:
    """A parser accepting text that matches `pattern` whole, else failing with `reason`."""
    compiled = re.compile(pattern)

    def parse(text: str) -> str:
        if not compiled.fullmatch(text):
            raise _Invalid(reason)
        return text

    return parse


_qdrant_name = _matching(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}", "not a valid Qdrant alias")
_device = _matching(r"(cpu|cuda|mps|xpu|hpu|npu|xla|mtia|ipu)(:\d+)?", "not a torch device")
_k8s_name = _matching(
    r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", "not a Kubernetes name (lowercase letters, digits and '-', at most 63)"
)


def _one_of(*choices: str) -> Parser:
    def parse(text: str) -> str:
        if text not in choices:
            raise _Invalid(f"not one of {', '.join(choices)}")
        return text

    return parse


def _timezone(text: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise _Invalid("not an IANA timezone") from None
    return text


def _sources(text: str) -> str:
    from ai_assets.lib.ingestion.sources import parse_source_specs

    try:
        parse_source_specs(text)
    except ValueError as err:
        raise _Invalid(str(err)) from None
    return text


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise _Invalid(f"not valid JSON ({err})") from None


def _thresholds(text: str) -> dict[str, float]:
    value = _json(text)
    if not isinstance(value, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value.values()
    ):
        raise _Invalid("not a JSON object of metric -> number")
    return {str(k): float(v) for k, v in value.items()}


def _string_map(text: str) -> dict[str, str]:
    value = _json(text)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _Invalid("not a JSON object of name -> text")
    return value


def _object_list(text: str) -> list[dict[str, Any]]:
    value = _json(text)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise _Invalid("not a JSON list of objects")
    return value


DEFAULT_THRESHOLDS = {"ndcg_at_10": 0.5, "recall_at_10": 0.7, "mrr_at_10": 0.45, "hit_rate_at_5": 0.7}

_WHOLE = "a whole number"
_SECONDS = "a number of seconds > 0, e.g. 30"

# --- the registry ----------------------------------------------------------------------------------

_ALL = [
    # Storage and sources
    # Unset: `.data` in DAGSTER_HOME, else in the current folder (see `lib.tables.resolve_data_dir`).
    Setting("AI_ASSETS_DATA_DIR", None, _folder, "a folder (created when missing)"),
    Setting("AI_ASSETS_SOURCES", "", _sources, "comma/newline separated name=location or location", "str"),
    Setting("HTTP_TIMEOUT_S", 10.0, _number(0, exclusive=True), _SECONDS),
    Setting("HTTP_MAX_BYTES", 5_000_000, _integer(1), f"{_WHOLE} of bytes >= 1", "int"),
    Setting("LOCAL_MAX_FILE_BYTES", 20_000_000, _integer(1), f"{_WHOLE} of bytes >= 1", "int"),
    Setting("AI_ASSETS_FOLLOW_EXTERNAL_SYMLINKS", False, _boolean, "true/false, 1/0, yes/no or on/off"),
    # Qdrant
    Setting("QDRANT_URL", None, _url, "an http(s) URL of a Qdrant server, e.g. http://qdrant:6333", "str"),
    Setting("QDRANT_API_KEY", None, _token, "the server's API key, without spaces", "str", secret=True),
    Setting("QDRANT_PATH", None, _folder, "a folder for the embedded vector store (Qdrant Edge)", "str"),
    Setting("QDRANT_ALIAS", "knowledge-base", _qdrant_name, "letters, digits, '.', '_', '-'", "str"),
    # Embeddings and chunking
    Setting("EMBEDDING_MODEL", "", _text, "a local model folder or a hub name in the local HF cache", "str"),
    Setting("EMBEDDING_DEVICE", "cpu", _device, "cpu, cuda, cuda:N, mps, xpu, ...", "str"),
    Setting("EMBEDDING_BATCH_SIZE", 64, _integer(1), f"{_WHOLE} >= 1", "int"),
    Setting("EMBEDDING_THREADS", 0, _integer(0), f"{_WHOLE} >= 0 (0: all cores)", "int"),
    # auto: bfloat16 where the device computes it natively and a load probe measures it faster.
    Setting("EMBEDDING_DTYPE", "auto", _one_of("auto", "float32", "bfloat16"), "auto, float32 or bfloat16", "str"),
    Setting("CHUNK_SIZE", 200, _integer(1), f"{_WHOLE} of tokens >= 1", "int"),
    Setting("CHUNK_OVERLAP", 32, _integer(0), f"{_WHOLE} of tokens >= 0, below CHUNK_SIZE", "int"),
    Setting("AI_ASSETS_TIMEZONE", "UTC", _timezone, "an IANA timezone, e.g. Europe/Paris"),
    # The LLM
    Setting("OPENAI_BASE_URL", None, _url, "an http(s) URL, e.g. http://vllm:8000/v1", "str"),
    Setting("OPENAI_API_KEY", None, _token, "the provider's API key, without spaces", "str", secret=True),
    Setting("OPENAI_ORG_ID", None, _token, "an organization id, without spaces", "str"),
    Setting("OPENAI_PROJECT_ID", None, _token, "a project id, without spaces", "str"),
    Setting("OPENAI_MODEL", "", _token, "a model name, without spaces", "str"),
    Setting("OPENAI_TIMEOUT_S", 120.0, _number(0, exclusive=True), _SECONDS),
    Setting("OPENAI_MAX_IN_FLIGHT", 16, _integer(1), f"{_WHOLE} >= 1", "int"),
    Setting("OPENAI_MAX_ATTEMPTS", 6, _integer(1), f"{_WHOLE} >= 1", "int"),
    Setting("OPENAI_REQUESTS_PER_MINUTE", None, _number(0, exclusive=True), "a number > 0"),
    Setting("OPENAI_TOKENS_PER_MINUTE", None, _number(0, exclusive=True), "a number > 0"),
    # Batch inference
    Setting("INFERENCE_MAX_PROMPT_CHARS", 200_000, _integer(1), f"{_WHOLE} >= 1", "int"),
    Setting("INFERENCE_MAX_ERROR_RATE", 0.01, _number(0, maximum=1), "a fraction from 0 to 1, e.g. 0.01"),
    Setting("AI_ASSETS_INFERENCE_INBOX", None, _folder, "a folder (created when missing)"),
    Setting("INFERENCE_MODE", "sync", _one_of("sync", "batch_api"), "sync or batch_api", "str"),
    Setting("INFERENCE_BATCH_MAX_ROUNDS", 3, _integer(1), f"{_WHOLE} of rounds >= 1", "int"),
    Setting("INFERENCE_BATCH_DISCOUNT", 0.5, _number(0, maximum=1), "a fraction from 0 to 1, e.g. 0.5"),
    # RAG evaluation
    # Existence is checked when the evaluation runs (naming the path): a missing evaluation set must not
    # stop the whole code location, ingestion included, from loading.
    Setting("RAG_EVAL_SET", "", _text, "a .jsonl file or BEIR folder"),
    Setting("RAG_EVAL_DOC_ID_PREFIX", "", _text, "a document id prefix, e.g. scifact#"),
    Setting("RAG_EVAL_SYNTHESIZE", 0, _integer(0), f"{_WHOLE} of questions >= 0", "int"),
    Setting("RAG_EVAL_MAX_ANSWERED", 30, _integer(0), f"{_WHOLE} of questions >= 0", "int"),
    Setting("RAG_THRESHOLDS", DEFAULT_THRESHOLDS, _thresholds, 'a JSON object, e.g. {"ndcg_at_10": 0.6}'),
    Setting("RAG_REGRESSION_TOLERANCE", 0.02, _number(0), "a number >= 0, e.g. 0.02"),
    Setting("RAGAS_JUDGE_BASE_URL", "", _url, "an http(s) URL of an OpenAI-compatible API"),
    Setting("RAGAS_JUDGE_MODEL", "", _token, "a model name, without spaces"),
    Setting("RAGAS_JUDGE_API_KEY", None, _token, "the judge's API key, without spaces", secret=True),
    # Fine-tuning: the training data and the gate
    Setting("TRAINING_SET", "", _text, "a .jsonl golden file or a BEIR folder (its train split)"),
    Setting("TRAINING_DOC_ID_PREFIX", "", _text, "a document id prefix, e.g. scifact#"),
    Setting("TRAINING_SYNTHESIZE", 64, _integer(1), f"{_WHOLE} of questions >= 1", "int"),
    Setting("TRAINING_VALIDATION_FRACTION", 0.2, _number(0, exclusive=True, maximum=0.9), "a fraction, e.g. 0.2"),
    Setting("TRAINING_MIN_ACCURACY", 0.85, _number(0, maximum=1), "a fraction from 0 to 1, e.g. 0.85"),
    Setting("TRAINING_ACCURACY_K", 10, _integer(1, 100), f"{_WHOLE} from 1 to 100", "int"),
    Setting("TRAINING_MIN_IMPROVEMENT", 0.005, _number(-1, maximum=1), "a number, e.g. 0.005 (nDCG@10)"),
    # Fine-tuning the LLM: its instruction data and its gate
    # Existence is checked when the run reads it (naming the path), as for RAG_EVAL_SET.
    Setting("LLM_TRAINING_SET", "", _text, "a .jsonl file of chat messages or prompt/completion pairs"),
    Setting("LLM_VALIDATION_FRACTION", 0.2, _number(0, exclusive=True, maximum=0.9), "a fraction, e.g. 0.2"),
    Setting("LLM_MIN_EXACT_MATCH", 0.6, _number(0, maximum=1), "a fraction from 0 to 1, e.g. 0.6"),
    Setting("LLM_MIN_IMPROVEMENT", 0.01, _number(-1, maximum=1), "a number, e.g. 0.01 (exact match)"),
    # Fine-tuning: where training runs and where models are kept
    Setting("TRAINING_LAUNCHER", "subprocess", _one_of("subprocess", "k8s"), "subprocess or k8s"),
    Setting("TRAINING_DEVICE", "cpu", _device, "cpu, cuda, cuda:N, ...", "str"),
    Setting("TRAINING_MODEL_STORE", None, _folder, "a folder (a shared volume on Kubernetes)"),
    Setting("TRAINING_EXECUTOR", "in_process", _one_of("in_process", "k8s"), "in_process or k8s"),
    Setting("TRAINING_K8S_IMAGE", "", _token, "an image reference, e.g. registry/ai-assets:1.2"),
    Setting("TRAINING_K8S_NAMESPACE", "default", _k8s_name, "a Kubernetes namespace"),
    Setting("TRAINING_K8S_SERVICE_ACCOUNT", "", _k8s_name, "a Kubernetes service account name"),
    Setting("TRAINING_K8S_GPUS", 1, _integer(0, 64), f"{_WHOLE} of GPUs from 0 to 64", "int"),
    Setting("TRAINING_K8S_NODE_SELECTOR", {}, _string_map, 'a JSON object, e.g. {"nvidia.com/gpu.product": "A100"}'),
    Setting("TRAINING_K8S_TOLERATIONS", None, _object_list, 'a JSON list, e.g. [{"key": "nvidia.com/gpu", ...}]'),
    Setting("TRAINING_K8S_VOLUMES", None, _object_list, "a JSON list of pod volumes"),
    Setting("TRAINING_K8S_VOLUME_MOUNTS", None, _object_list, "a JSON list of the container's volume mounts"),
    Setting("TRAINING_K8S_KUBECONFIG", "", _text, "a kubeconfig file (unset: the in-cluster service account)"),
]

SETTINGS: Mapping[str, Setting] = {setting.name: setting for setting in _ALL}


# --- reading ---------------------------------------------------------------------------------------


def _shown(setting: Setting, raw: str) -> str:
    # A secret's value never reaches a log, the UI or an exception; its length tells a truncated paste.
    return f"(hidden, {len(raw)} characters)" if setting.secret else repr(raw)


def _describe(setting: Setting, raw: str, reason: str) -> str:
    default = "unset" if setting.default in (None, "") else repr(setting.default)
    return (
        f"{setting.name}={_shown(setting, raw)}: {reason}; expected {setting.expected} "
        f"(or unset it for the default, {default})"
    )


def problems(environ: Mapping[str, str]) -> tuple[list[str], dict[str, Any]]:
    """Every invalid setting in `environ`, described, and the parsed values of the valid set ones."""
    found, values = [], {}
    for setting in _ALL:
        raw = environ.get(setting.name, "")
        if not raw:
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except _Invalid as err:
            found.append(_describe(setting, raw, str(err)))
    size = values.get("CHUNK_SIZE", SETTINGS["CHUNK_SIZE"].default)
    # The default overlap counts too: apply_defaults writes it into the environment, so a CHUNK_SIZE at
    # or below it would pass this load and fail every process started from it, naming an unset variable.
    overlap = values.get("CHUNK_OVERLAP", SETTINGS["CHUNK_OVERLAP"].default)
    if overlap >= size:
        shown = environ.get("CHUNK_OVERLAP") or ""
        if "CHUNK_OVERLAP" in values:
            found.append(_describe(SETTINGS["CHUNK_OVERLAP"], shown, f"not below CHUNK_SIZE ({size})"))
        else:
            found.append(
                _describe(
                    SETTINGS["CHUNK_SIZE"], environ["CHUNK_SIZE"], f"not above the default CHUNK_OVERLAP ({overlap})"
                )
            )
    return found, values


_cache: tuple[tuple[str, ...], dict[str, Any]] | None = None


def _parsed() -> dict[str, Any]:
    """Parsed values of the set settings; raises `SettingError` naming every invalid one."""
    global _cache
    snapshot = tuple(os.environ.get(setting.name, "") for setting in _ALL)
    if _cache is None or _cache[0] != snapshot:
        found, values = problems(os.environ)
        if found:
            raise SettingError(found)
        _cache = (snapshot, values)
    return _cache[1]


def check_environment() -> None:
    """Raise `SettingError` naming every invalid setting of this process's environment."""
    _parsed()


def value(name: str) -> Any:
    """The setting's value in this process: parsed from its variable when set, its default otherwise.

    For what must be known when the code location loads (the schedules' AI_ASSETS_TIMEZONE) and for
    tests; everything a run uses is read through its resource instead (see `ai_assets.resources`)."""
    setting = _require(name)
    return _parsed().get(name, setting.default)


def _require(name: str) -> Setting:
    if name not in SETTINGS:
        raise KeyError(f"{name} is not a registered setting of ai_assets.lib.settings")
    return SETTINGS[name]


def apply_defaults(environ: MutableMapping[str, str] | None = None) -> None:
    """Write each unset (or empty) setting's default text into `environ` (this process's environment).

    Dagster's `EnvVar` has no default: an unset variable fails the run that reads it. Called wherever
    the code location loads (code server, daemon, run worker), this makes every registered variable
    present, so every resource field can be an `EnvVar` and an unset variable means its default in
    every process. Only this registry's names are written, and a set variable is never changed.
    """
    target = os.environ if environ is None else environ
    for setting in _ALL:
        if not target.get(setting.name):
            target[setting.name] = setting.default_text


def parse(name: str, text: str | None, *, field: str | None = None) -> Any:
    """The value of setting `name` from `text` (a resource field's text, read from the variable when
    the run started): its default when empty. Raises `SettingError` naming the variable, the value and,
    when given, the resource field that held it."""
    setting = _require(name)
    if not text:
        return setting.default
    try:
        return setting.parse(text)
    except _Invalid as err:
        problem = _describe(setting, text, str(err))
        raise SettingError([f"{problem} [{field}]" if field else problem]) from None
