"""Checks on the chunk table and the Qdrant index; they run with every materialization."""

import hashlib
import json

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ai_assets.defs.ingestion.assets import document_chunks, document_embeddings
from ai_assets.lib.ingestion.vector_index import (
    chunk_ids_version,
    collection_fingerprint,
    collection_name,
    compare_ids,
)
from ai_assets.lib.tables import ParquetTable
from ai_assets.lib.vector_store import VectorStore
from ai_assets.resources.data_folder import DataFolderResource
from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets.resources.qdrant import QdrantResource


@dg.asset_check(asset=document_chunks, blocking=True)
def chunk_ids_unique(document_chunks: ParquetTable) -> dg.AssetCheckResult:
    """Every chunk id appears once. A duplicate would make two chunks overwrite one point in Qdrant,
    so a failure blocks the index from being updated."""
    ids = document_chunks.read_columns(["chunk_id"])
    counts = ids.group_by("chunk_id").aggregate([("chunk_id", "count")])
    duplicates = counts.filter(pc.greater(counts["chunk_id_count"], 1))["chunk_id"].to_pylist()
    return dg.AssetCheckResult(
        passed=not duplicates,
        metadata={
            "chunks": document_chunks.num_rows,
            "duplicate_ids": len(duplicates),
            "examples": ", ".join(sorted(duplicates)[:5]) or "none",
        },
    )


@dg.asset_check(asset=document_chunks, blocking=True)
def chunks_not_empty(document_chunks: ParquetTable, embedding_model: EmbeddingModelResource) -> dg.AssetCheckResult:
    """No chunk is empty and none exceeds what the model reads: an empty chunk wastes a vector and
    matches everything poorly; an over-long one is silently truncated, so its tail is unsearchable."""
    empty, too_long, examples = 0, 0, []
    limit = embedding_model.max_content_tokens
    # Arrow compute per batch: no Python string per chunk (a second, not ten, at 250,000 chunks).
    for batch in document_chunks.iter_batches(columns=["doc_id", "text", "token_count"], batch_size=16_384):
        tokens = batch.column("token_count")
        blank = pc.or_(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(batch.column("text"))), 0), pc.equal(tokens, 0))
        over = pc.and_(pc.invert(blank), pc.greater(tokens, limit))
        empty += pc.sum(blank).as_py() or 0
        too_long += pc.sum(over).as_py() or 0
        if len(examples) < 5:
            for i in pc.indices_nonzero(pc.or_(blank, over)).to_pylist()[: 5 - len(examples)]:
                doc, count = batch.column("doc_id")[i].as_py(), tokens[i].as_py()
                examples.append(f"{doc} (empty)" if blank[i].as_py() else f"{doc} ({count} tokens)")
    return dg.AssetCheckResult(
        passed=empty == 0 and too_long == 0,
        metadata={
            "empty_chunks": empty,
            "chunks_over_model_limit": too_long,
            "model_max_content_tokens": limit,
            "examples": ", ".join(examples[:5]) or "none",
        },
    )


INDEX_CHECKS = [
    dg.AssetCheckSpec(
        "point_count_matches_chunks",
        asset=document_embeddings,
        additional_deps=[document_chunks],
        blocking=True,
        description="The collection holds exactly the current chunks (plus those kept for unreadable "
        "sources): nothing missing, nothing stale. A failure means search returns outdated or "
        "incomplete results.",
    ),
    dg.AssetCheckSpec(
        "vector_dimension_matches_model",
        asset=document_embeddings,
        additional_deps=[document_chunks],
        blocking=True,
        description="The collection's vector size equals the embedding model's. A mismatch means "
        "queries cannot be answered at all.",
    ),
    dg.AssetCheckSpec(
        "smoke_retrieval",
        asset=document_embeddings,
        additional_deps=[document_chunks],
        blocking=True,
        description="A known chunk's text, embedded now and searched through the alias, finds that "
        "chunk first. A failure means the alias, the vectors or the model are out of step.",
    ),
]


@dg.multi_asset_check(
    specs=INDEX_CHECKS,
    ins={"document_chunks": dg.AssetIn("document_chunks")},
    can_subset=True,
    pool="qdrant",
)
def index_checks(
    context: dg.AssetCheckExecutionContext,
    qdrant: QdrantResource,
    embedding_model: EmbeddingModelResource,
    data_folder: DataFolderResource,
    document_chunks: ParquetTable,
):
    """Checks that read the vector index. They run in one step because the embedded store serves one
    process at a time."""
    store = qdrant.get_store(context.log)
    collection = collection_name(
        qdrant.alias,
        collection_fingerprint(embedding_model.identity, document_chunks.attrs["chunking_fingerprint"]),
    )
    if not store.collection_exists(collection):
        for spec in INDEX_CHECKS:
            if spec.key in context.selected_asset_check_keys:
                yield dg.AssetCheckResult(
                    check_name=spec.name,
                    passed=False,
                    metadata={"collection": collection, "problem": "collection does not exist"},
                )
        return
    selected = {key.name for key in context.selected_asset_check_keys}
    if "point_count_matches_chunks" in selected:
        yield _point_count(store, collection, document_chunks)
    if "vector_dimension_matches_model" in selected:
        size = store.dimension(collection)
        yield dg.AssetCheckResult(
            check_name="vector_dimension_matches_model",
            passed=size == embedding_model.dimension,
            metadata={"collection_dimension": size, "model_dimension": embedding_model.dimension},
        )
    if "smoke_retrieval" in selected:
        yield _smoke_retrieval(qdrant, embedding_model, data_folder, collection, document_chunks)


def _point_count(store: VectorStore, collection: str, chunks: ParquetTable) -> dg.AssetCheckResult:
    compared = compare_ids(store, collection, chunks.read_columns(["chunk_id"])["chunk_id"])
    unavailable = set(chunks.attrs.get("unavailable_sources", []))
    unreadable = set(chunks.attrs.get("unreadable_doc_ids", []))
    preserved = sum(
        1 for p in compared.unknown if p.payload.get("source") in unavailable or p.payload.get("doc_id") in unreadable
    )
    # A point removed between the scan and the payload read is gone, so neither stale nor kept.
    stale = len(compared.unknown) - preserved
    return dg.AssetCheckResult(
        check_name="point_count_matches_chunks",
        passed=not compared.missing and not stale,
        metadata={
            "point_count": compared.points,
            "chunk_count": chunks.num_rows,
            "points_preserved": preserved,
            "missing_points": compared.missing,
            "stale_points": stale,
        },
    )


def _smoke_retrieval(
    qdrant: QdrantResource,
    embedding_model: EmbeddingModelResource,
    data_folder: DataFolderResource,
    collection: str,
    chunks: ParquetTable,
) -> dg.AssetCheckResult:
    columns = chunks.read_columns(["chunk_id", "chunk_hash"]).combine_chunks()
    probe = _probe_chunk(columns)
    if probe is None:
        return dg.AssetCheckResult(
            check_name="smoke_retrieval", passed=False, metadata={"problem": "no chunk with unique text to probe"}
        )
    store = qdrant.get_store()
    stored = store.retrieve(collection, [probe], with_vectors=True)
    # Rounded: the embedded store re-normalises vectors when it reloads them, changing the last bits.
    stored_vector = (
        hashlib.sha256(np.round(np.asarray(stored[0].vector, dtype=np.float32), 4).tobytes()).hexdigest()
        if stored
        else "missing"
    )
    # The outcome is a pure function of (indexed ids, model, probe text, the probe's stored vector):
    # when none changed since a passing probe, the torch import and model load (seconds) buy nothing.
    key = {
        "collection": collection,
        "index_version": chunk_ids_version(chunks),
        "model": embedding_model.identity,
        "probe": probe,
        "stored_vector": stored_vector,
    }
    cache = data_folder.folder("cache", "smoke_retrieval.json")
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return dg.AssetCheckResult(
                check_name="smoke_retrieval",
                passed=True,
                metadata={**cached["metadata"], "verified_this_run": False},
            )
    text = next(
        batch.filter(pc.equal(batch.column("chunk_id"), probe)).column("text")[0].as_py()
        for batch in chunks.iter_batches(columns=["chunk_id", "text"])
        if pc.any(pc.equal(batch.column("chunk_id"), probe)).as_py()
    )
    vector = embedding_model.encode([text])[0].tolist()
    hits = store.search(qdrant.alias, [vector], limit=3)[0]
    top = str(hits[0].id) if hits else None
    metadata = {
        "probe_chunk_id": probe,
        "top_hit": top or "none",
        "top_score": float(hits[0].score) if hits else 0.0,
        "searched": qdrant.alias,
    }
    passed = top == probe
    if passed:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "metadata": metadata}))
    return dg.AssetCheckResult(
        check_name="smoke_retrieval", passed=passed, metadata={**metadata, "verified_this_run": True}
    )


def _probe_chunk(columns: pa.Table, tries: int = 64) -> str | None:
    """The smallest chunk id whose text no other chunk has: its own vector must come back first.

    The first few ids in order are tried one hash comparison each (duplicated text is rare), so the
    common case builds no hash table over every chunk; only if they all share their text is the whole
    column grouped."""
    ids, hashes = columns["chunk_id"], columns["chunk_hash"]
    order = pc.sort_indices(ids)
    for i in order[:tries].to_pylist():
        if pc.sum(pc.equal(hashes, hashes[i])).as_py() == 1:
            return ids[i].as_py()
    counts = columns.group_by("chunk_hash").aggregate([("chunk_hash", "count")])
    unique = counts.filter(pc.equal(counts["chunk_hash_count"], 1))["chunk_hash"]
    candidates = columns.filter(pc.is_in(hashes, value_set=unique.combine_chunks()))["chunk_id"]
    return pc.min(candidates).as_py() if len(candidates) else None
