"""Embedding precision benchmark: float32 against bfloat16 torch, side by side in one run, printed as
`key: value` lines.

    python bench/embed_backends.py             # 2,000 SciFact chunks in both precisions (~4 min on 2 cores)
    python bench/embed_backends.py --scifact   # and nDCG@10 of each on the SciFact test set (~15 min more)

Figures:
- fp32_chunks_per_s / bf16_chunks_per_s: chunks a second on the same 2,000 chunks (SciFact abstracts
  chunked by the pipeline's own chunker at the default 200/32 tokens), batch 64, 2 torch threads. Both
  models are loaded and warmed up first; the chunks are timed in blocks, the precisions in turn, so a
  change in machine load hits both. bf16_vs_fp32_speedup is their ratio (target >= 1.8 here).
- bf16_mean_cosine_to_fp32 / bf16_min_cosine_to_fp32: cosine between each chunk's two vectors.
- auto_dtype / auto_reason: what EMBEDDING_DTYPE=auto chooses on this machine (a fresh decision: the
  on-disk cache of earlier decisions is bypassed).
- with --scifact: fp32_scifact_ndcg_at_10 / bf16_scifact_ndcg_at_10 on the 300 test queries (MTEB's
  convention: a document is `title + " " + text`, read up to the model's 256 tokens; exact cosine search;
  published for all-MiniLM-L6-v2: 0.64508) and bf16_ndcg_delta (bf16 - fp32). bfloat16 stays the `auto`
  choice only while |delta| <= 0.003 (`AUTO_ALLOWS_BFLOAT16` in ai_assets/resources/embeddings.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SCIFACT = REPO.parent / "shared" / "datasets" / "scifact"
THREADS = 2
BATCH_SIZE = 64
NDCG_TOLERANCE = 0.003
PUBLISHED_NDCG_AT_10 = 0.64508


def emit(key: str, value: object) -> None:
    print(f"{key}: {value}", flush=True)


def bench_chunks(n: int, tokenizer) -> list[str]:
    """The first `n` chunks of SciFact abstracts (title heading, then the abstract), as ingestion cuts them."""
    from ai_assets.lib.ingestion.chunking import ChunkingSettings, chunk_text
    from ai_assets_tests.corpora import scifact_records

    settings, chunks = ChunkingSettings(), []
    for record in scifact_records(n):
        chunks += [chunk.text for chunk in chunk_text(f"# {record['title']}\n\n{record['text']}", tokenizer, settings)]
        if len(chunks) >= n:
            break
    assert len(chunks) >= n, f"SciFact gave only {len(chunks)} chunks"
    return chunks[:n]


def throughput(models: dict, texts: list[str], blocks: int = 8) -> tuple[dict, dict]:
    """Seconds each model takes for `texts` and its vectors. The texts are timed in `blocks` blocks, each
    block by every model in turn (the first model alternating), so drifting load hits all alike."""
    import numpy as np

    seconds = dict.fromkeys(models, 0.0)
    parts: dict[str, list] = {name: [] for name in models}
    size = -(-len(texts) // blocks)
    for b in range(blocks):
        block = texts[b * size : (b + 1) * size]
        order = list(models) if b % 2 == 0 else list(reversed(models))
        for name in order:
            started = time.perf_counter()
            parts[name].append(models[name].encode(block))
            seconds[name] += time.perf_counter() - started
    return seconds, {name: np.concatenate(p) for name, p in parts.items()}


def scifact_ndcg(models: dict) -> dict[str, float]:
    """nDCG@10 of each model on the SciFact test queries, exact cosine search over the whole corpus."""
    import numpy as np
    from ingest import scifact_test_queries

    from ai_assets.lib.evaluation.metrics import mean, ndcg_at_k

    queries, qrels = scifact_test_queries()
    doc_ids, docs = [], []
    with (SCIFACT / "corpus.jsonl").open() as f:
        for line in f:
            d = json.loads(line)
            doc_ids.append(d["_id"])
            docs.append(f"{d['title']} {d['text']}")
    ids = sorted(queries)
    emit("scifact_documents", len(docs))
    emit("scifact_queries", len(ids))
    scores = {}
    for name, model in models.items():
        started = time.perf_counter()
        doc_vectors = model.encode(docs)
        emit(f"{name}_scifact_corpus_encode_s", round(time.perf_counter() - started, 1))
        similarities = model.encode([queries[i] for i in ids]) @ doc_vectors.T
        top = np.argsort(-similarities, axis=1)[:, :10]
        scores[name] = mean(
            [ndcg_at_k([doc_ids[j] for j in row], qrels[qid], 10) for qid, row in zip(ids, top, strict=True)]
        )
        emit(f"{name}_scifact_ndcg_at_10", round(scores[name], 5))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--scifact", action="store_true", help="also nDCG@10 of both precisions on SciFact")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch

    from ai_assets.resources import embeddings
    from ai_assets.resources.embeddings import EmbeddingModelResource

    torch.set_num_threads(THREADS)
    models = {
        "fp32": EmbeddingModelResource(dtype="float32", threads=THREADS, batch_size=BATCH_SIZE),
        "bf16": EmbeddingModelResource(dtype="bfloat16", threads=THREADS, batch_size=BATCH_SIZE),
    }
    texts = bench_chunks(args.chunks, models["fp32"].tokenizer())
    tokens = [len(ids) for ids in models["fp32"].tokenizer().encode_batch(texts, add_special_tokens=False)]
    emit("chunks", len(texts))
    emit("mean_chunk_tokens", round(sum(tokens) / len(tokens), 1))
    emit("torch_threads", torch.get_num_threads())
    emit("batch_size", BATCH_SIZE)
    for model in models.values():
        model.encode(texts[:BATCH_SIZE])  # load and warm up
    seconds, vectors = throughput(models, texts)
    rates = {name: len(texts) / s for name, s in seconds.items()}
    emit("fp32_chunks_per_s", round(rates["fp32"], 1))
    emit("bf16_chunks_per_s", round(rates["bf16"], 1))
    emit("bf16_vs_fp32_speedup", round(rates["bf16"] / rates["fp32"], 2))
    cosines = np.sum(vectors["fp32"] * vectors["bf16"], axis=1)
    emit("bf16_vectors_dtype", vectors["bf16"].dtype)
    emit("bf16_max_norm_error", f"{np.abs(np.linalg.norm(vectors['bf16'], axis=1) - 1).max():.1e}")
    emit("bf16_mean_cosine_to_fp32", round(float(cosines.mean()), 5))
    emit("bf16_min_cosine_to_fp32", round(float(cosines.min()), 5))

    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        embeddings.dtype_cache_file = lambda: Path(tmp) / "embedding_dtype.json"  # a fresh decision
        auto = EmbeddingModelResource(threads=THREADS, batch_size=BATCH_SIZE)
        started = time.perf_counter()
        dtype, reason = auto.dtype_choice
        emit("auto_dtype", dtype)
        emit("auto_reason", reason)
        emit("auto_decision_s", round(time.perf_counter() - started, 1))

    if args.scifact:
        scores = scifact_ndcg(models)
        delta = scores["bf16"] - scores["fp32"]
        emit("published_scifact_ndcg_at_10", PUBLISHED_NDCG_AT_10)
        emit("bf16_ndcg_delta", round(delta, 5))
        emit("bf16_ndcg_within_tolerance", abs(delta) <= NDCG_TOLERANCE)


if __name__ == "__main__":
    main()
