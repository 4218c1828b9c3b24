"""The peft -> GGUF LoRA converter: names, the rope permutation, refusals, and the real adapter in llama.cpp.

The fast tests run on a tiny llama GGUF and a tiny fake adapter written here. The slow ones build a peft
adapter on SmolLM2 (loaded in transformers from the bundled GGUF), convert it, and check that llama.cpp
moves the next-token logits the way transformers does — and that without the q/k permutation it does not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file

from ai_assets.lib.training import lora_gguf
from ai_assets.lib.training.lora_gguf import LoraConversionError, gguf_tensor_name, permute_rope_rows, write_lora_gguf

# A tiny llama: 2 blocks, hidden 16, 2 heads of 8 dimensions (the smallest whose permutation is not its
# own inverse), 1 kv head, MLP 24.
HIDDEN, N_HEAD, N_HEAD_KV, HEAD_DIM, FFN, BLOCKS, RANK = 16, 2, 1, 8, 24, 2, 2
KV = N_HEAD_KV * HEAD_DIM
# peft module -> (out, in) of its weight in the tiny llama.
SHAPES = {
    "q_proj": (HIDDEN, HIDDEN),
    "k_proj": (KV, HIDDEN),
    "v_proj": (KV, HIDDEN),
    "o_proj": (HIDDEN, HIDDEN),
    "gate_proj": (FFN, HIDDEN),
    "up_proj": (FFN, HIDDEN),
    "down_proj": (HIDDEN, FFN),
}


def peft_name(layer: int, module: str, part: str) -> str:
    parent = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"base_model.model.model.layers.{layer}.{parent}.{module}.lora_{part}.weight"


def write_base(path: Path, *, arch: str = "llama", blocks: int = BLOCKS) -> Path:
    writer = gguf.GGUFWriter(path, arch=arch)
    writer.add_block_count(blocks)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    for layer in range(blocks):
        for module, shape in SHAPES.items():
            writer.add_tensor(f"blk.{layer}.{lora_gguf.MODULES[module][1]}.weight", np.zeros(shape, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_adapter(
    folder: Path,
    tensors: dict[str, np.ndarray] | None = None,
    modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "down_proj"),
    **config: Any,
) -> Path:
    """A peft adapter folder: every layer's `modules` with seeded random A and B, unless `tensors` is given."""
    folder.mkdir(parents=True, exist_ok=True)
    if tensors is None:
        rng = np.random.default_rng(0)
        tensors = {}
        for layer in range(BLOCKS):
            for module in modules:
                out, inp = SHAPES[module]
                tensors[peft_name(layer, module, "A")] = rng.standard_normal((RANK, inp), dtype=np.float32)
                tensors[peft_name(layer, module, "B")] = rng.standard_normal((out, RANK), dtype=np.float32)
    save_file(tensors, str(folder / lora_gguf.ADAPTER_WEIGHTS))
    settings = {"peft_type": "LORA", "r": RANK, "lora_alpha": 4, "target_modules": list(modules), "bias": "none"}
    (folder / lora_gguf.ADAPTER_CONFIG).write_text(json.dumps({**settings, **config}))
    return folder


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write_base(tmp_path / "base.gguf")


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    reader = gguf.GGUFReader(path)
    fields = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    # Reader shapes are ggml's `ne` (reversed); data comes back in the numpy layout written.
    return fields, {t.name: np.array(t.data) for t in reader.tensors}


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("q_proj", "attn_q"),
        ("k_proj", "attn_k"),
        ("v_proj", "attn_v"),
        ("o_proj", "attn_output"),
        ("gate_proj", "ffn_gate"),
        ("up_proj", "ffn_up"),
        ("down_proj", "ffn_down"),
    ],
)
def test_peft_names_map_to_llama_cpp_names(module: str, expected: str) -> None:
    assert gguf_tensor_name(peft_name(7, module, "A")) == f"blk.7.{expected}.weight.lora_a"
    assert gguf_tensor_name(peft_name(12, module, "B")) == f"blk.12.{expected}.weight.lora_b"


def test_names_without_a_llama_cpp_tensor_are_refused_by_name() -> None:
    with pytest.raises(LoraConversionError, match=r"self_attn\.rotary_proj cannot be mapped"):
        gguf_tensor_name("base_model.model.model.layers.0.self_attn.rotary_proj.lora_A.weight")
    with pytest.raises(LoraConversionError, match=r"mlp\.q_proj cannot be mapped"):
        gguf_tensor_name("base_model.model.model.layers.0.mlp.q_proj.lora_A.weight")
    with pytest.raises(LoraConversionError, match="embed_tokens.lora_embedding_A.*is not the lora_A/lora_B"):
        gguf_tensor_name("base_model.model.model.embed_tokens.lora_embedding_A")


def reference_permutation(n_rows: int, n_head: int) -> list[int]:
    """llama.cpp's row i of a head is Hugging Face's row: (0, d/2, 1, d/2 + 1, ...) within each head."""
    d = n_rows // n_head
    return [h * d + (i // 2 if i % 2 == 0 else d // 2 + i // 2) for h in range(n_head) for i in range(d)]


def test_the_permutation_is_convert_hf_to_gguf_s() -> None:
    rows = np.arange(24 * 3, dtype=np.float32).reshape(24, 3)
    for n_head in (1, 2, 3):
        np.testing.assert_array_equal(permute_rope_rows(rows, n_head), rows[reference_permutation(24, n_head)])
    with pytest.raises(LoraConversionError, match="cannot be split into 5 heads"):
        permute_rope_rows(rows, 5)


def test_permuting_b_alone_permutes_the_merged_weight() -> None:
    rng = np.random.default_rng(1)
    w, b, a = rng.standard_normal((16, 12)), rng.standard_normal((16, 3)), rng.standard_normal((3, 12))
    np.testing.assert_allclose(permute_rope_rows(w + b @ a, 4), permute_rope_rows(w, 4) + permute_rope_rows(b, 4) @ a)


def test_the_permutation_turns_hugging_face_rope_into_llama_cpp_rope() -> None:
    """Why it exists: rotating halves (transformers) on rows r equals rotating adjacent pairs (llama.cpp,
    LLAMA_ROPE_TYPE_NORM) on the permuted rows. Head dimension 8: the permutation is not its own inverse."""
    n_head, d, position = 2, 8, 5
    theta = position * 10000.0 ** (-np.arange(d // 2) * 2 / d)
    x = np.random.default_rng(2).standard_normal(n_head * d)

    heads = x.reshape(n_head, d)
    first, second = heads[:, : d // 2], heads[:, d // 2 :]
    hf = np.concatenate(
        [first * np.cos(theta) - second * np.sin(theta), second * np.cos(theta) + first * np.sin(theta)], 1
    )

    pairs = permute_rope_rows(x, n_head).reshape(n_head, d // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    llama = np.stack([even * np.cos(theta) - odd * np.sin(theta), even * np.sin(theta) + odd * np.cos(theta)], -1)

    np.testing.assert_allclose(llama.reshape(-1), permute_rope_rows(hf.reshape(-1), n_head), atol=1e-12)


def test_the_written_file_is_a_llama_cpp_lora(tmp_path: Path, base: Path) -> None:
    adapter = write_adapter(tmp_path / "adapter")
    tensors = {key: np.asarray(value) for key, value in _load(adapter).items()}
    out = tmp_path / "out" / "lora.gguf"

    stats = write_lora_gguf(adapter, base, out)

    assert stats == {
        "tensors": 16,
        "bytes": out.stat().st_size,
        "rank": RANK,
        "alpha": 4.0,
        "layers": 2,
        "modules": "q_proj,k_proj,v_proj,down_proj",
        "dtype": "f32",
    }
    fields, written = read_gguf(out)
    assert fields == {
        "general.architecture": "llama",
        "general.type": "adapter",
        "adapter.type": "lora",
        "adapter.lora.alpha": 4.0,
    }
    assert list(written)[:4] == [f"blk.0.attn_{m}.weight.lora_{p}" for m in "qk" for p in "ab"]
    for layer in range(BLOCKS):
        for module, n_head in (("q_proj", N_HEAD), ("k_proj", N_HEAD_KV), ("v_proj", None), ("down_proj", None)):
            a, b = tensors[peft_name(layer, module, "A")], tensors[peft_name(layer, module, "B")]
            name = f"blk.{layer}.{lora_gguf.MODULES[module][1]}.weight"
            np.testing.assert_array_equal(written[f"{name}.lora_a"], a)
            rows = reference_permutation(b.shape[0], n_head) if n_head else list(range(b.shape[0]))
            np.testing.assert_array_equal(written[f"{name}.lora_b"], b[rows])
    assert [p.name for p in out.parent.iterdir()] == ["lora.gguf"]

    # Replaced whole, in f16 on request.
    f32_bytes = stats["bytes"]
    stats = write_lora_gguf(adapter, base, out, dtype="f16")
    assert stats["dtype"] == "f16" and stats["bytes"] == out.stat().st_size < f32_bytes
    assert gguf.GGUFReader(out).tensors[0].tensor_type == gguf.GGMLQuantizationType.F16
    assert [p.name for p in out.parent.iterdir()] == ["lora.gguf"]


def _load(adapter: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(adapter / lora_gguf.ADAPTER_WEIGHTS))


def test_rslora_folds_its_scale_into_alpha(tmp_path: Path, base: Path) -> None:
    adapter = write_adapter(tmp_path / "adapter", use_rslora=True)
    stats = write_lora_gguf(adapter, base, tmp_path / "lora.gguf")
    # llama.cpp scales by alpha / r; rsLoRA by lora_alpha / sqrt(r).
    assert stats["alpha"] == pytest.approx(4 * math.sqrt(RANK))
    assert read_gguf(tmp_path / "lora.gguf")[0]["adapter.lora.alpha"] == pytest.approx(4 * math.sqrt(RANK))


def _renamed(tensors: dict[str, np.ndarray], old: str, new: str) -> dict[str, np.ndarray]:
    return {(new if key == old else key): value for key, value in tensors.items()}


def _fake_tensors(tmp_path: Path) -> dict[str, np.ndarray]:
    return _load(write_adapter(tmp_path / "source"))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("target_module", r"target_modules \['lm_head'\] cannot be mapped"),
        ("tensor_name", r"'base_model\.model\.lm_head\.lora_A\.weight' is not the lora_A/lora_B"),
        ("dora", "use_dora = True is not supported: DoRA"),
        ("modules_to_save", r"modules_to_save = \['lm_head'\] is not supported"),
        ("alpha_pattern", "alpha_pattern .* one alpha per adapter"),
        ("bias", "bias = 'all' is not supported"),
        ("not_lora", "peft_type is 'IA3'"),
        ("non_llama", "general.architecture is 'qwen2'; only 'llama'"),
        ("rank_mismatch", r"rank mismatch: .*layers\.0\.self_attn\.q_proj\.lora_A\.weight is \(3, 16\)"),
        ("layer_beyond_base", r"layers\.2\.self_attn\.q_proj\.lora_A\.weight': layer 2 does not exist .*2 blocks"),
        ("missing_partner", r"layers\.1\.mlp\.down_proj\.lora_A\.weight' has no lora_B partner"),
        ("wrong_base", r"adapt a \(24 x 16\) weight, but the base model's blk\.0\.attn_v\.weight is \(8 x 16\)"),
        ("no_weights", "adapter_model.safetensors does not exist"),
    ],
)
def test_unsupported_adapters_are_refused_before_anything_is_written(
    tmp_path: Path, base: Path, case: str, message: str
) -> None:
    folder = tmp_path / "adapter"
    if case == "target_module":
        write_adapter(folder, target_modules=["q_proj", "lm_head"])
    elif case == "tensor_name":
        write_adapter(folder, {**_fake_tensors(tmp_path), "base_model.model.lm_head.lora_A.weight": np.ones((2, 2))})
    elif case == "dora":
        write_adapter(folder, use_dora=True)
    elif case == "modules_to_save":
        write_adapter(folder, modules_to_save=["lm_head"])
    elif case == "alpha_pattern":
        write_adapter(folder, alpha_pattern={"q_proj": 8})
    elif case == "bias":
        write_adapter(folder, bias="all")
    elif case == "not_lora":
        write_adapter(folder, peft_type="IA3")
    elif case == "non_llama":
        write_adapter(folder)
        base = write_base(tmp_path / "qwen.gguf", arch="qwen2")
    elif case == "rank_mismatch":
        tensors = _fake_tensors(tmp_path)
        tensors[peft_name(0, "q_proj", "A")] = np.ones((3, HIDDEN), np.float32)
        write_adapter(folder, tensors)
    elif case == "layer_beyond_base":
        tensors = _fake_tensors(tmp_path)
        for part in "AB":
            tensors = _renamed(tensors, peft_name(1, "q_proj", part), peft_name(2, "q_proj", part))
        write_adapter(folder, tensors)
    elif case == "missing_partner":
        tensors = _fake_tensors(tmp_path)
        del tensors[peft_name(1, "down_proj", "B")]
        write_adapter(folder, tensors)
    elif case == "wrong_base":
        tensors = _fake_tensors(tmp_path)
        tensors[peft_name(0, "v_proj", "B")] = np.ones((FFN, RANK), np.float32)
        write_adapter(folder, tensors)
    elif case == "no_weights":
        write_adapter(folder)
        (folder / lora_gguf.ADAPTER_WEIGHTS).unlink()
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    with pytest.raises(LoraConversionError, match=message):
        write_lora_gguf(folder, base, out_dir / "lora.gguf")
    assert list(out_dir.iterdir()) == []


# --- The real adapter in llama.cpp -------------------------------------------------------------------

PROMPT = "The capital of France is"
# Seeded lora_B: q/k larger than the rest. Both so that the adapter's effect on the logits stands well
# above the noise of llama.cpp rounding activations to 8 bits for the Q4_1 weights (the rounding changes
# with the adapter, so it does not cancel in a delta), and so that q/k carry enough of the effect for a
# missing or wrong permutation to show.
SIGMA_QK, SIGMA_OTHER = 0.3, 0.05
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"]


def _correlation(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1])


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, list[int]]:
    """SmolLM2-135M-Instruct dequantised from the bundled GGUF (~20 s), and the prompt's token ids."""
    transformers = pytest.importorskip("transformers")
    from ai_assets.resources.llama_server import bundled_gguf_path

    path = bundled_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tokenizer(PROMPT)["input_ids"]


@pytest.fixture(scope="module")
def trained(smollm2: tuple[Any, list[int]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int], Any]:
    """A saved rank-8 peft adapter whose every lora_B is seeded noise, its token ids, and what it does to the
    next-token logits in transformers."""
    import peft
    import torch

    model, ids = smollm2
    torch.manual_seed(0)  # lora_A's initialisation
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0)
    tuned = peft.get_peft_model(model, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in tuned.named_parameters():
            if "lora_B" in name:
                sigma = SIGMA_QK if ".q_proj." in name or ".k_proj." in name else SIGMA_OTHER
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * sigma)
        tokens = torch.tensor([ids])
        with tuned.disable_adapter():
            before = tuned(tokens).logits[0, -1].float().numpy()
        after = tuned(tokens).logits[0, -1].float().numpy()
    folder = tmp_path_factory.mktemp("adapter")
    tuned.save_pretrained(folder)
    return folder, ids, after - before


def _llama_cpp_logits(ids: list[int], lora: Path | None = None) -> np.ndarray:
    llama_cpp = pytest.importorskip("llama_cpp")
    from ai_assets.resources.llama_server import bundled_gguf_path

    llm = llama_cpp.Llama(
        model_path=str(bundled_gguf_path()),
        lora_path=str(lora) if lora else None,
        n_ctx=256,
        logits_all=True,
        verbose=False,
        n_threads=2,
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[len(ids) - 1], dtype=np.float64)
    finally:
        llm.close()


@pytest.fixture(scope="module")
def llama_cpp_base(trained: tuple[Path, list[int], Any]) -> np.ndarray:
    return _llama_cpp_logits(trained[1])


@pytest.mark.slow
def test_llama_cpp_with_the_converted_adapter_moves_the_logits_as_peft_does(
    trained: tuple[Path, list[int], Any], llama_cpp_base: np.ndarray, tmp_path: Path
) -> None:
    from ai_assets.resources.llama_server import bundled_gguf_path

    folder, ids, expected = trained
    stats = write_lora_gguf(folder, bundled_gguf_path(), tmp_path / "lora.gguf")
    assert {k: stats[k] for k in ("tensors", "rank", "alpha", "layers")} == {
        "tensors": 2 * len(TARGETS) * 30,
        "rank": 8,
        "alpha": 16.0,
        "layers": 30,
    }

    delta = _llama_cpp_logits(ids, tmp_path / "lora.gguf") - llama_cpp_base

    correlation = _correlation(expected, delta)
    assert correlation > 0.95, f"llama.cpp's logit change correlates {correlation:.3f} with peft's"
    # The token the adapter raises most is raised in llama.cpp too, among its five most raised; and the
    # one it lowers most, lowered among its five most lowered.
    assert expected.argmax() in np.argsort(delta)[-5:], (expected.argmax(), np.argsort(delta)[-5:])
    assert expected.argmin() in np.argsort(delta)[:5], (expected.argmin(), np.argsort(delta)[:5])


@pytest.mark.slow
def test_without_the_q_k_permutation_llama_cpp_disagrees(
    trained: tuple[Path, list[int], Any], llama_cpp_base: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: the same adapter converted without permuting q/k rows is far off."""
    from ai_assets.resources.llama_server import bundled_gguf_path

    folder, ids, expected = trained
    monkeypatch.setattr(lora_gguf, "permute_rope_rows", lambda rows, n_head: rows)
    write_lora_gguf(folder, bundled_gguf_path(), tmp_path / "unpermuted.gguf")

    delta = _llama_cpp_logits(ids, tmp_path / "unpermuted.gguf") - llama_cpp_base

    correlation = _correlation(expected, delta)
    assert correlation < 0.6, f"the unpermuted adapter still correlates {correlation:.3f}"
