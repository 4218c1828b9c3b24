"""Building, checking and switching the collection of a new embedding model.

A model change never edits the serving collection: the new model's vectors go into a collection of
their own (named by the model and the chunking, as ingestion names them), which is checked like an
ingestion (every current chunk present, nothing stale, the right dimension, a chunk's own text finding
it first) before the alias moves to it in one atomic step. Searches through the alias see the old
collection or the new one, never a half-built one; the old one stays for a rollback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ai_assets.lib.ingestion.vector_index import (
    DESIRED_COLUMNS,
    SyncStats,
    apply_sync,
    compare_ids,
    plan_sync,
    scan_points,
)
from ai_assets.lib.tables import ParquetTable
from ai_assets.lib.vector_store import VectorStore

__all__ = ["BuildStats", "build_collection", "superseded_collections", "verify_collection"]


@dataclass(frozen=True)
class BuildStats:
    collection: str
    created: bool
    embedded: int
    deleted: int
    points: int
    seconds: float


def build_collection(
    store: VectorStore,
    collection: str,
    dimension: int,
    chunks: ParquetTable,
    encode: Callable[[list[str]], np.ndarray],
    log: Callable[[str], None],
) -> BuildStats:
    """Bring `collection` to exactly the chunks of `chunks`, embedded with `encode`: created when missing,
    else only what changed since it was built (a collection already evaluated costs a scan, not an
    encode)."""
    started = time.perf_counter()
    created = not store.collection_exists(collection)
    if created:
        store.create_collection(collection, dimension)
    elif store.dimension(collection) != dimension:
        raise ValueError(
            f"collection {collection} holds {store.dimension(collection)}-d vectors, the model makes {dimension}-d"
        )
    desired = chunks.read_columns(DESIRED_COLUMNS)
    plan = plan_sync(
        desired,
        scan_points(store, collection, desired),
        chunks.attrs.get("unavailable_sources", []),
        chunks.attrs.get("unreadable_doc_ids", []),
    )
    stats: SyncStats = apply_sync(store, collection, plan, chunks, encode, log)
    if stats.upserted or stats.deleted or created:
        store.optimize(collection)
    return BuildStats(
        collection=collection,
        created=created,
        embedded=stats.embedded,
        deleted=stats.deleted,
        points=store.count(collection),
        seconds=time.perf_counter() - started,
    )


def verify_collection(
    store: VectorStore,
    collection: str,
    dimension: int,
    chunks: ParquetTable,
    encode: Callable[[list[str]], np.ndarray],
    probes: int = 3,
) -> list[str]:
    """What is wrong with `collection` as the index of `chunks` (empty: nothing): missing or stale points,
    the vector size, and `probes` chunks whose own text, embedded now, must find them first."""
    problems = []
    compared = compare_ids(store, collection, chunks.read_columns(["chunk_id"])["chunk_id"])
    if compared.missing:
        problems.append(f"{compared.missing} current chunks have no point in {collection}")
    if compared.unknown:
        problems.append(f"{len(compared.unknown)} points of {collection} are no current chunk")
    if store.dimension(collection) != dimension:
        problems.append(f"{collection} holds {store.dimension(collection)}-d vectors, the model makes {dimension}-d")
    if problems:
        return problems
    for chunk_id, text in _probe_chunks(chunks, probes):
        hits = store.search(collection, encode([text]), 1)[0]
        if not hits or hits[0].id != chunk_id:
            found = hits[0].id if hits else "nothing"
            problems.append(f"chunk {chunk_id}'s own text finds {found} first in {collection}, not itself")
    return problems


def _probe_chunks(chunks: ParquetTable, count: int) -> list[tuple[str, str]]:
    """Up to `count` chunks whose text no other chunk has, spread over the table."""
    columns = chunks.read_columns(["chunk_id", "chunk_hash", "text"]).combine_chunks()
    if not columns.num_rows:
        return []
    counts = columns.group_by("chunk_hash").aggregate([("chunk_hash", "count")])
    unique = counts.filter(pc.equal(counts["chunk_hash_count"], 1))["chunk_hash"].combine_chunks()
    candidates = columns.filter(pc.is_in(columns["chunk_hash"], value_set=unique)).sort_by("chunk_id")
    step = max(candidates.num_rows // max(count, 1), 1)
    picked = candidates.take(pa.array(list(range(0, candidates.num_rows, step))[:count], pa.int64()))
    return list(zip(picked["chunk_id"].to_pylist(), picked["text"].to_pylist(), strict=True))


def superseded_collections(names: Sequence[str], alias: str, keep: Sequence[str | None]) -> list[str]:
    """This alias's collections other than those in `keep` (the serving one and the rollback target)."""
    kept = {name for name in keep if name}
    return [name for name in names if name.startswith(f"{alias}-") and name not in kept]
