"""A peft LoRA adapter of a llama-architecture model, written as the GGUF LoRA that llama.cpp loads.

The LLM is fine-tuned in transformers (peft, on the model dequantised from the bundled GGUF) but served
by llama.cpp, which applies a LoRA adapter given as a GGUF file next to the unchanged base GGUF. This is
what llama.cpp's `convert_lora_to_gguf.py` does for llama models, without its dependency on the base
model's Hugging Face folder: the architecture and head counts come from the base GGUF itself.

Invariants of the file written:
- Tensor names are llama.cpp's (`blk.{i}.attn_q.weight.lora_a` / `.lora_b`); `lora_a` keeps peft's
  (rank, in) layout and `lora_b` its (out, rank), which GGUF stores as ggml's reversed `ne`.
- The rows of q_proj / k_proj `lora_b` are permuted exactly as `convert_hf_to_gguf.py` permutes those
  weights: llama.cpp's rope rotates interleaved pairs of a head's dimensions, Hugging Face's rotates the
  first half against the second. Since P(W + BA) = PW + (PB)A, only B is permuted.
- `adapter.lora.alpha` makes llama.cpp scale BA by alpha / rank, as peft does. rsLoRA's alpha / sqrt(rank)
  is written as alpha·sqrt(rank), the alpha that gives llama.cpp the same scale.
- Anything llama.cpp would apply differently from peft (DoRA, extra trained modules, biases, per-module
  alphas) is refused before a byte is written, and the file appears under its name complete or not at all.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
from safetensors import SafetensorError, safe_open

__all__ = ["LoraConversionError", "gguf_tensor_name", "permute_rope_rows", "write_lora_gguf"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

# peft module -> (its parent in a Hugging Face llama layer, llama.cpp's tensor name for LLM_ARCH_LLAMA).
MODULES: dict[str, tuple[str, str]] = {
    "q_proj": ("self_attn", "attn_q"),
    "k_proj": ("self_attn", "attn_k"),
    "v_proj": ("self_attn", "attn_v"),
    "o_proj": ("self_attn", "attn_output"),
    "gate_proj": ("mlp", "ffn_gate"),
    "up_proj": ("mlp", "ffn_up"),
    "down_proj": ("mlp", "ffn_down"),
}
_ROPE_MODULES = ("q_proj", "k_proj")
_PEFT_NAME = re.compile(
    r"base_model\.model\.model\.layers\.(?P<layer>\d+)\.(?P<parent>\w+)\.(?P<module>\w+)\.lora_(?P<part>[AB])\.weight"
)
_DTYPES = {"f32": np.float32, "f16": np.float16}


class LoraConversionError(ValueError):
    """The adapter cannot be written as a llama.cpp LoRA of this base; the message names the tensor or
    config field and why."""


@dataclass(frozen=True)
class _Base:
    """What the conversion needs from the base GGUF."""

    n_layer: int
    n_head: int
    n_head_kv: int
    shapes: dict[str, tuple[int, ...]]  # tensor name -> ggml ne (in, out for a matrix)


@dataclass(frozen=True)
class _LoraName:
    layer: int
    module: str
    part: Literal["A", "B"]

    @property
    def gguf_base(self) -> str:
        return f"blk.{self.layer}.{MODULES[self.module][1]}.weight"


def _parse_name(peft_name: str) -> _LoraName:
    match = _PEFT_NAME.fullmatch(peft_name)
    if match is None:
        raise LoraConversionError(
            f"adapter tensor {peft_name!r} is not the lora_A/lora_B weight of a llama layer's projection "
            f"(embeddings, lm_head, norms, biases and DoRA magnitudes have no llama.cpp LoRA equivalent)"
        )
    module, parent = match["module"], match["parent"]
    if module not in MODULES or MODULES[module][0] != parent:
        supported = ", ".join(f"{p}.{m}" for m, (p, _) in MODULES.items())
        raise LoraConversionError(
            f"adapter tensor {peft_name!r}: module {parent}.{module} cannot be mapped to a llama.cpp tensor "
            f"(supported: {supported})"
        )
    return _LoraName(int(match["layer"]), module, "A" if match["part"] == "A" else "B")


def gguf_tensor_name(peft_name: str) -> str:
    """llama.cpp's name for a peft LoRA tensor: `...layers.3.self_attn.q_proj.lora_A.weight` ->
    `blk.3.attn_q.weight.lora_a`."""
    name = _parse_name(peft_name)
    return f"{name.gguf_base}.lora_{name.part.lower()}"


def permute_rope_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """`convert_hf_to_gguf.py`'s `LlamaModel.permute` of a q (n_head = heads) or k (n_head = kv heads)
    projection's output rows: within each head, Hugging Face's [first half | second half] order becomes
    llama.cpp's interleaved (0, d/2, 1, d/2 + 1, ...)."""
    if rows.shape[0] % (2 * n_head):
        raise LoraConversionError(f"{rows.shape[0]} rows cannot be split into {n_head} heads of rope pairs")
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _field(reader: Any, key: str, base_gguf: Path) -> Any:
    field = reader.get_field(key)
    if field is None:
        raise LoraConversionError(f"base model {base_gguf} has no metadata field {key}")
    return field.contents()


def _head_count(reader: Any, key: str, base_gguf: Path) -> int:
    value = _field(reader, key, base_gguf)
    # Some converters write one count per layer; the permutation needs a single one.
    values = set(value) if isinstance(value, list) else {value}
    if len(values) != 1:
        raise LoraConversionError(f"base model {base_gguf}: {key} differs between layers ({sorted(values)})")
    return int(values.pop())


def _read_base(base_gguf: Path) -> _Base:
    try:
        reader = gguf.GGUFReader(base_gguf)
    except (OSError, ValueError) as err:
        raise LoraConversionError(f"base model {base_gguf} cannot be read as GGUF ({err})") from err
    architecture = _field(reader, "general.architecture", base_gguf)
    if architecture != "llama":
        # Other architectures name tensors differently and may not permute q/k at all.
        raise LoraConversionError(
            f"base model {base_gguf}: general.architecture is {architecture!r}; only 'llama' is supported"
        )
    return _Base(
        n_layer=int(_field(reader, "llama.block_count", base_gguf)),
        n_head=_head_count(reader, "llama.attention.head_count", base_gguf),
        n_head_kv=_head_count(reader, "llama.attention.head_count_kv", base_gguf),
        shapes={t.name: tuple(int(n) for n in t.shape) for t in reader.tensors},
    )


def _read_config(adapter_dir: Path) -> tuple[int, float]:
    """(rank, the alpha that makes llama.cpp's alpha / rank equal peft's scaling)."""
    path = adapter_dir / ADAPTER_CONFIG
    try:
        config: Mapping[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LoraConversionError(f"{path} cannot be read ({err})") from err
    if config.get("peft_type") != "LORA":
        raise LoraConversionError(f"{path}: peft_type is {config.get('peft_type')!r}, not 'LORA'")
    # llama.cpp computes W + s·BA; each of these makes peft compute something else. Variants not known
    # to compute plain W + s·BA are refused rather than guessed at.
    variant = "a LoRA variant whose forward pass is not W + s·BA"
    refusals = {
        "use_dora": "DoRA rescales each output column by a learned magnitude",
        "modules_to_save": "fully trained copies of modules would have to replace base weights",
        "alpha_pattern": "llama.cpp has one alpha per adapter, not one per module",
        "rank_pattern": "per-module ranks are not supported by this converter",
        "lora_bias": "llama.cpp LoRA has no bias terms",
        "fan_in_fan_out": "transposed (Conv1D) weights are not used by llama models",
        "target_parameters": "LoRA on raw parameters (not Linear modules) has no llama.cpp equivalent",
        "trainable_token_indices": "trained token embeddings have no llama.cpp LoRA equivalent",
        "layer_replication": "replicated layers do not exist in the base GGUF",
        "use_qalora": "QALoRA pools inputs before A",
        "alora_invocation_tokens": "an activated LoRA would be applied to every token, not only after its invocation",
        "use_bdlora": variant,
        "arrow_config": variant,
        "kasa_config": variant,
        "monteclora_config": variant,
        "velora_config": variant,
    }
    for key, why in refusals.items():
        if config.get(key):
            raise LoraConversionError(f"{path}: {key} = {config[key]!r} is not supported: {why}")
    if config.get("bias", "none") != "none":
        raise LoraConversionError(f"{path}: bias = {config['bias']!r} is not supported: llama.cpp LoRA has no biases")
    targets = config.get("target_modules")
    if isinstance(targets, list):
        unknown = sorted(set(targets) - set(MODULES))
        if unknown:
            raise LoraConversionError(
                f"{path}: target_modules {unknown} cannot be mapped to llama.cpp tensors "
                f"(supported: {', '.join(MODULES)})"
            )
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or rank <= 0:
        raise LoraConversionError(f"{path}: r = {rank!r} is not a positive integer")
    if not isinstance(alpha, int | float) or alpha <= 0:
        # llama.cpp reads alpha 0 as "no scaling", which would silently differ from peft's.
        raise LoraConversionError(f"{path}: lora_alpha = {alpha!r} is not a positive number")
    if config.get("use_rslora"):
        # rsLoRA scales by alpha / sqrt(r) and llama.cpp by alpha / r: the same scale with alpha·sqrt(r).
        return rank, float(alpha) * math.sqrt(rank)
    return rank, float(alpha)


def _read_tensors(adapter_dir: Path) -> dict[str, np.ndarray]:
    path = adapter_dir / ADAPTER_WEIGHTS
    if not path.exists():
        raise LoraConversionError(f"{path} does not exist (save the adapter with safe_serialization=True)")
    try:
        # Through torch: peft saves in the model's dtype, and numpy has no bfloat16.
        with safe_open(str(path), framework="pt") as weights:
            return {key: weights.get_tensor(key).float().numpy() for key in weights.keys()}
    except (OSError, SafetensorError) as err:
        raise LoraConversionError(f"{path} cannot be read ({err})") from err


def _gguf_tensors(
    tensors: Mapping[str, np.ndarray], rank: int, base: _Base
) -> tuple[list[tuple[str, np.ndarray]], set[int], set[str]]:
    """The adapter's (name, array) pairs in llama.cpp's naming and layout, A before B, layer by layer."""
    pairs: dict[tuple[int, str], dict[str, tuple[str, np.ndarray]]] = {}
    for peft_name, array in tensors.items():
        name = _parse_name(peft_name)
        if name.layer >= base.n_layer:
            raise LoraConversionError(
                f"adapter tensor {peft_name!r}: layer {name.layer} does not exist in the base model "
                f"({base.n_layer} blocks)"
            )
        if array.ndim != 2:
            raise LoraConversionError(f"adapter tensor {peft_name!r} has shape {array.shape}, not a matrix")
        pairs.setdefault((name.layer, name.module), {})[name.part] = (peft_name, array)

    out: list[tuple[str, np.ndarray]] = []
    order = list(MODULES)
    for layer, module in sorted(pairs, key=lambda key: (key[0], order.index(key[1]))):
        pair = pairs[(layer, module)]
        missing = {"A", "B"} - set(pair)
        if missing:
            present = next(iter(pair.values()))[0]
            raise LoraConversionError(f"adapter tensor {present!r} has no lora_{missing.pop()} partner")
        (a_name, a), (b_name, b) = pair["A"], pair["B"]
        if a.shape[0] != rank or b.shape[1] != rank:
            raise LoraConversionError(
                f"rank mismatch: {a_name} is {a.shape} and {b_name} is {b.shape}, the config says r = {rank}"
            )
        gguf_base = _LoraName(layer, module, "A").gguf_base
        base_shape = base.shapes.get(gguf_base)
        if base_shape is None:
            raise LoraConversionError(f"adapter tensor {a_name!r}: the base model has no tensor {gguf_base}")
        if base_shape != (a.shape[1], b.shape[0]):
            raise LoraConversionError(
                f"adapter tensors {a_name!r} / {b_name!r} adapt a ({b.shape[0]} x {a.shape[1]}) weight, but the "
                f"base model's {gguf_base} is ({base_shape[1]} x {base_shape[0]}): not this base model"
            )
        if module in _ROPE_MODULES:
            b = permute_rope_rows(b, base.n_head if module == "q_proj" else base.n_head_kv)
        out += [(f"{gguf_base}.lora_a", a), (f"{gguf_base}.lora_b", b)]
    return out, {layer for layer, _ in pairs}, {module for _, module in pairs}


def write_lora_gguf(
    adapter_dir: Path, base_gguf: Path, out_path: Path, *, dtype: Literal["f32", "f16"] = "f32"
) -> dict[str, int | float | str]:
    """Write the peft adapter saved in `adapter_dir` as a llama.cpp GGUF LoRA of `base_gguf` at `out_path`.

    Everything is checked before anything is written (`LoraConversionError` otherwise); the file is
    written beside `out_path` and renamed over it. Returns `tensors`, `bytes`, `rank`, `alpha` (as
    written: rsLoRA's folded in), `layers` (adapted), `modules` (comma-separated) and `dtype`."""
    adapter_dir, base_gguf, out_path = Path(adapter_dir), Path(base_gguf), Path(out_path)
    if dtype not in _DTYPES:
        raise LoraConversionError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    rank, alpha = _read_config(adapter_dir)
    base = _read_base(base_gguf)
    tensors = _read_tensors(adapter_dir)
    if not tensors:
        raise LoraConversionError(f"{adapter_dir / ADAPTER_WEIGHTS} holds no tensors")
    named, layers, modules = _gguf_tensors(tensors, rank, base)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, arch="llama")  # also writes general.architecture
        try:
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
            for name, array in named:
                writer.add_tensor(name, np.ascontiguousarray(array, dtype=_DTYPES[dtype]))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {
        "tensors": len(named),
        "bytes": out_path.stat().st_size,
        "rank": rank,
        "alpha": alpha,
        "layers": len(layers),
        "modules": ",".join(m for m in MODULES if m in modules),
        "dtype": dtype,
    }
