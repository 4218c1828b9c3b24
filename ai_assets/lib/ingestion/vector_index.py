"""Keeping a Qdrant collection equal to the current chunks: plan the difference, then apply it.

The collection itself is the record of what is indexed (no side ledger to drift from it): every point id
is derived from its chunk's content, so "what to embed" is "ids the sources have and the collection
lacks", and "what to delete" is the reverse. New points are written before stale ones are deleted, so a
run killed at any moment leaves a collection the next run converges from, and search never loses a
document that is merely changing.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ai_assets.lib.progress import Progress
from ai_assets.lib.tables import ParquetTable

if TYPE_CHECKING:
    import numpy as np
    from qdrant_client import QdrantClient

# Chunk-table columns stored as point payload (the text too: search results must be readable).
PAYLOAD_COLUMNS = (
    "doc_id",
    "source",
    "uri",
    "title",
    "chunk_index",
    "chunk_hash",
    "doc_hash",
    "token_count",
    "text",
)
SCANNED_PAYLOAD = ["doc_id", "source", "chunk_hash"]


def collection_fingerprint(model_identity: Mapping[str, Any], chunking_fingerprint: str) -> str:
    """Short hash of everything that shapes the vectors: a change means a new collection."""
    blob = json.dumps({"model": dict(model_identity), "chunking": chunking_fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def collection_name(alias: str, fingerprint: str) -> str:
    return f"{alias}-{fingerprint}"


def index_data_version(point_ids: Iterable[str]) -> str:
    """Content-derived version of an index: its point ids are content hashes, so the sorted ids are
    a fingerprint of everything indexed."""
    digest = hashlib.sha256()
    for point_id in sorted(point_ids):
        digest.update(point_id.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class IndexedPoint:
    doc_id: str
    source: str
    chunk_hash: str


def scroll_payloads(
    client: QdrantClient, collection: str, fields: Sequence[str], page_size: int = 4096
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(point id, the payload's `fields`) of every point in the collection (an alias works too), page by
    page, without vectors."""
    offset = None
    while True:
        points, offset = client.scroll(
            collection, limit=page_size, offset=offset, with_payload=list(fields), with_vectors=False
        )
        for point in points:
            yield str(point.id), point.payload or {}
        if offset is None:
            return


def scan_points(client: QdrantClient, collection: str, page_size: int = 4096) -> dict[str, IndexedPoint]:
    """Every point id in the collection with the payload fields that sync decisions need."""
    return {
        point_id: IndexedPoint(
            str(payload.get("doc_id", "")), str(payload.get("source", "")), str(payload.get("chunk_hash", ""))
        )
        for point_id, payload in scroll_payloads(client, collection, SCANNED_PAYLOAD, page_size)
    }


@dataclass(frozen=True)
class DesiredChunk:
    doc_id: str
    chunk_hash: str


@dataclass
class SyncPlan:
    new_ids: set[str]  # to write: not indexed yet, or indexed with a damaged payload (`repaired`)
    stale_ids: list[str]
    preserved: int  # points of unreadable sources/documents kept as they were
    unchanged_chunks: int
    documents_added: int
    documents_changed: int
    documents_removed: int
    documents_unchanged: int
    repaired: int = 0
    final_ids: set[str] = field(repr=False, default_factory=set)


def plan_sync(
    desired: Mapping[str, DesiredChunk],
    existing: Mapping[str, IndexedPoint],
    unavailable_sources: Iterable[str] = (),
    unreadable_doc_ids: Iterable[str] = (),
) -> SyncPlan:
    """Compare the chunks the sources produce now with the points indexed.

    Points of a source that could not be read this time (or of a document that failed to read) are
    neither stale nor new: they are kept, so a flaky server does not empty the knowledge base.
    """
    unavailable, unreadable = set(unavailable_sources), set(unreadable_doc_ids)
    new_ids = {cid for cid in desired if cid not in existing}
    # An id is derived from content, so a point whose payload disagrees with it was damaged (edited by
    # hand, or written by something else): it is rewritten like a new one.
    repaired = {cid for cid, c in desired.items() if cid in existing and existing[cid].chunk_hash != c.chunk_hash}
    new_ids |= repaired
    stale_ids, preserved = [], 0
    for point_id, point in existing.items():
        if point_id in desired:
            continue
        if point.source in unavailable or point.doc_id in unreadable:
            preserved += 1
        else:
            stale_ids.append(point_id)

    desired_by_doc: dict[str, set[str]] = defaultdict(set)
    for cid, chunk in desired.items():
        desired_by_doc[chunk.doc_id].add(cid)
    existing_by_doc: dict[str, set[str]] = defaultdict(set)
    for point_id, point in existing.items():
        existing_by_doc[point.doc_id].add(point_id)
    added = sum(1 for d in desired_by_doc if d not in existing_by_doc)
    changed = sum(1 for d, ids in desired_by_doc.items() if d in existing_by_doc and existing_by_doc[d] != ids)
    removed = sum(
        1
        for d, ids in existing_by_doc.items()
        if d not in desired_by_doc and any(existing[i].source not in unavailable for i in ids) and d not in unreadable
    )
    stale_set = set(stale_ids)
    return SyncPlan(
        new_ids=new_ids,
        stale_ids=sorted(stale_ids),
        preserved=preserved,
        unchanged_chunks=len(desired) - len(new_ids),
        documents_added=added,
        documents_changed=changed,
        documents_removed=removed,
        documents_unchanged=len(desired_by_doc) - added - changed,
        repaired=len(repaired),
        final_ids=(set(existing) - stale_set) | new_ids,
    )


@dataclass
class SyncStats:
    embedded: int = 0  # chunk texts run through the model
    reused: int = 0  # new points whose vector was copied from an indexed chunk with identical text
    upserted: int = 0
    deleted: int = 0
    encode_s: float = 0.0
    write_s: float = 0.0


class _PointWriter:
    """Upserts on a background thread so writing one window overlaps encoding the next."""

    def __init__(self, client: QdrantClient, collection: str, batch_size: int):
        self.client, self.collection, self.batch_size = client, collection, batch_size
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self.write_s = 0.0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="qdrant-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from qdrant_client import models

        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain after a failure; the producer raises it
            ids, vectors, payloads = item
            try:
                started = time.perf_counter()
                for i in range(0, len(ids), self.batch_size):
                    self.client.upsert(
                        self.collection,
                        points=models.Batch(
                            ids=ids[i : i + self.batch_size],
                            vectors=vectors[i : i + self.batch_size],
                            payloads=payloads[i : i + self.batch_size],
                        ),
                        wait=True,
                    )
                self.write_s += time.perf_counter() - started
                self.written += len(ids)
            except BaseException as err:  # surfaced to the producer, never swallowed
                self._error = err

    def put(self, ids: list[str], vectors: list[list[float]], payloads: list[dict]) -> None:
        self._raise_if_failed()
        self._queue.put((ids, vectors, payloads))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error


def _windows(chunks: ParquetTable, wanted: set[str], size: int) -> Iterator[list[dict[str, Any]]]:
    """Rows of `chunks` whose id is in `wanted`, in windows of `size`, streamed from disk."""
    window: list[dict[str, Any]] = []
    for batch in chunks.iter_batches(columns=["chunk_id", *PAYLOAD_COLUMNS]):
        ids = batch.column("chunk_id").to_pylist()
        keep = [i for i, cid in enumerate(ids) if cid in wanted]
        if not keep:
            continue
        for row in batch.take(keep).to_pylist():
            window.append(row)
            if len(window) >= size:
                yield window
                window = []
    if window:
        yield window


def apply_sync(
    client: QdrantClient,
    collection: str,
    plan: SyncPlan,
    chunks: ParquetTable,
    existing: Mapping[str, IndexedPoint],
    encode: Callable[[list[str]], np.ndarray],
    log: Callable[[str], None],
    upsert_batch: int = 256,
    window: int = 2048,
    progress_every_s: float = 10.0,
) -> SyncStats:
    """Write the plan's new points (embedding only text the index has never seen), then delete stale ones."""
    stats = SyncStats()
    # A chunk whose exact text is already indexed (a moved paragraph, a renamed file) keeps its vector.
    donors = {p.chunk_hash: pid for pid, p in existing.items() if p.chunk_hash and pid not in plan.new_ids}
    progress = Progress("embedding", len(plan.new_ids), log, every_s=progress_every_s, unit="chunks")
    writer = _PointWriter(client, collection, upsert_batch)
    try:
        for rows in _windows(chunks, plan.new_ids, window):
            vectors = _vectors_for(rows, client, collection, donors, encode, stats, progress.advance)
            writer.put(
                [r["chunk_id"] for r in rows],
                vectors,
                [{k: r[k] for k in PAYLOAD_COLUMNS} for r in rows],
            )
    finally:
        writer.close()
    stats.upserted, stats.write_s = writer.written, writer.write_s
    if plan.new_ids:
        progress.finish()

    from qdrant_client import models

    started = time.perf_counter()
    for i in range(0, len(plan.stale_ids), 1024):
        batch = plan.stale_ids[i : i + 1024]
        client.delete(collection, points_selector=models.PointIdsList(points=batch), wait=True)
        stats.deleted += len(batch)
    stats.write_s += time.perf_counter() - started
    return stats


def _vectors_for(
    rows: Sequence[dict[str, Any]],
    client: QdrantClient,
    collection: str,
    donors: Mapping[str, str],
    encode: Callable[[list[str]], np.ndarray],
    stats: SyncStats,
    advance: Callable[[int], None],
    slice_size: int = 256,
) -> list[list[float]]:
    by_hash: dict[str, list[float]] = {}
    donor_ids = sorted({donors[r["chunk_hash"]] for r in rows if r["chunk_hash"] in donors})
    if donor_ids:
        for point in client.retrieve(collection, ids=donor_ids, with_vectors=True, with_payload=["chunk_hash"]):
            by_hash[str((point.payload or {})["chunk_hash"])] = list(point.vector)  # type: ignore[arg-type]
    # Identical texts inside the window are encoded once.
    texts: dict[str, str] = {}
    for r in rows:
        if r["chunk_hash"] not in by_hash:
            texts.setdefault(r["chunk_hash"], r["text"])
    # Longest first, in slices: as little padding as one big sorted encode call, and a progress line
    # every few seconds instead of once a window.
    pending = sorted(texts.items(), key=lambda item: -len(item[1]))
    for start in range(0, len(pending), slice_size):
        part = pending[start : start + slice_size]
        started = time.perf_counter()
        encoded = encode([text for _, text in part])
        stats.encode_s += time.perf_counter() - started
        for (chunk_hash, _), vector in zip(part, encoded.tolist(), strict=True):
            by_hash[chunk_hash] = vector
        advance(len(part))
    stats.embedded += len(texts)
    # Every row not freshly encoded got a vector already computed: from the index, or its twin here.
    stats.reused += len(rows) - len(texts)
    advance(len(rows) - len(texts))
    return [by_hash[r["chunk_hash"]] for r in rows]
