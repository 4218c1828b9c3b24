"""Keeping a collection equal to the current chunks: plan the difference, then apply it.

The collection itself is the record of what is indexed (no side ledger to drift from it): every point id
is derived from its chunk's content, so "what to embed" is "ids the sources have and the collection
lacks", and "what to delete" is the reverse. New points are written before stale ones are deleted, so a
run killed at any moment leaves a collection the next run converges from, and search never loses a
document that is merely changing.

Ids, hashes and document ids travel as Arrow columns (tens of bytes a chunk) rather than Python objects,
and chunk rows stream from disk a window at a time: memory stays flat from a hundred documents to a
hundred thousand.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from ai_assets.lib.arrow_digest import update_with_lines
from ai_assets.lib.progress import Progress
from ai_assets.lib.tables import ParquetTable

if TYPE_CHECKING:
    import numpy as np

    from ai_assets.lib.vector_store import StoredPoint, VectorStore

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
# What `scan_points` returns: one row per indexed point.
POINTS_SCHEMA = pa.schema(
    [("id", pa.string()), ("doc_id", pa.string()), ("source", pa.string()), ("chunk_hash", pa.string())]
)
# What `plan_sync` compares it with: one row per current chunk, in chunk-table order.
DESIRED_COLUMNS = ["chunk_id", "doc_id", "chunk_hash"]
# The chunk table's attr holding `index_data_version` of its chunk ids.
CHUNK_IDS_VERSION = "chunk_ids_version"


def collection_fingerprint(model_identity: Mapping[str, Any], chunking_fingerprint: str) -> str:
    """Short hash of everything that shapes the vectors: a change means a new collection."""
    blob = json.dumps({"model": dict(model_identity), "chunking": chunking_fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def collection_name(alias: str, fingerprint: str) -> str:
    return f"{alias}-{fingerprint}"


def index_data_version(point_ids: Iterable[str] | pa.Array | pa.ChunkedArray) -> str:
    """Content-derived version of an index: its point ids are content hashes, so the sorted ids are
    a fingerprint of everything indexed."""
    ids = point_ids if isinstance(point_ids, pa.Array | pa.ChunkedArray) else pa.array(list(point_ids), pa.string())
    digest = hashlib.sha256()
    update_with_lines(digest, ids.take(pc.sort_indices(ids)))
    return digest.hexdigest()[:24]


def chunk_ids_version(chunks: ParquetTable) -> str:
    """`index_data_version` of a chunk table's ids: recorded in its attrs by `document_chunks`, which
    computes it once a run; computed here only for a table written before it was recorded."""
    recorded = chunks.attrs.get(CHUNK_IDS_VERSION)
    if isinstance(recorded, str):
        return recorded
    return index_data_version(chunks.read_columns(["chunk_id"])["chunk_id"])


def scan_points(
    store: VectorStore,
    collection: str,
    desired: pa.Table | None = None,
    page_size: int = 32_768,
) -> pa.Table:
    """Every point id in the collection with the payload fields that sync decisions need.

    With `desired` (the current chunks: chunk_id, doc_id, chunk_hash), no payload is decoded for the
    points that match a current chunk: the ids are scanned alone, and the payload index names the points
    whose `chunk_hash` is none of the hashes of the current chunks on their page of ids (damaged ones
    among them). Only those and the points no current chunk has are read from the store; the others take
    doc_id and chunk_hash from their chunk (ids derive from both), and an empty source. At 278,000 points
    that is ~3 s instead of 8-10 s, and the payload storage is never mapped whole.
    """
    if desired is None:
        return _scan_payloads(store, collection, page_size)
    pages = [
        pa.array([pid for pid, _ in page], pa.string()) for page in store.scroll(collection, [], page_size) if page
    ]
    ids = pa.concat_arrays(pages) if pages else pa.array([], pa.string())
    known = desired.select(["chunk_id", "doc_id", "chunk_hash"]).combine_chunks()
    index = pc.index_in(ids, value_set=_array(known["chunk_id"]))
    suspicious: list[str] = []
    if store.kind != "embedded" and len(ids):
        # A server holds the query in its own memory: one query against every current hash.
        hashes = pc.unique(_array(known["chunk_hash"])).to_pylist()
        suspicious = store.ids_where_not_in(collection, "chunk_hash", hashes)
    elif len(ids):
        # The embedded engine's memory is this process's: a page of known points at a time, each asked
        # against the hashes of its own chunks. One query over every current hash held ~280 MB in the
        # engine at 278,000 points; a page holds ~20 MB.
        for start in range(0, len(ids), page_size):
            at = index.slice(start, page_size)
            present = pc.is_valid(at)
            among = ids.slice(start, page_size).filter(present).to_pylist()
            if among:
                hashes = pc.unique(pc.take(_array(known["chunk_hash"]), at.filter(present))).to_pylist()
                suspicious += store.ids_where_not_in(collection, "chunk_hash", hashes, among=among)
    unknown = pc.or_(pc.is_null(index), pc.is_in(ids, value_set=pa.array(suspicious, pa.string())))
    doc_ids = pc.fill_null(pc.take(_array(known["doc_id"]), index), "")
    chunk_hashes = pc.fill_null(pc.take(_array(known["chunk_hash"]), index), "")
    sources = pa.array([""] * len(ids), pa.string())
    positions = pc.indices_nonzero(unknown).to_pylist()
    if positions:
        doc_list, hash_list, source_list = doc_ids.to_pylist(), chunk_hashes.to_pylist(), sources.to_pylist()
        where = {ids[i].as_py(): i for i in positions}
        for i in positions:
            doc_list[i] = hash_list[i] = ""  # what the store says, or nothing
        wanted = list(where)
        for start in range(0, len(wanted), 1024):
            for point in store.retrieve(collection, wanted[start : start + 1024], SCANNED_PAYLOAD, with_vectors=False):
                i = where[point.id]
                doc_list[i] = str(point.payload.get("doc_id", ""))
                source_list[i] = str(point.payload.get("source", ""))
                hash_list[i] = str(point.payload.get("chunk_hash", ""))
        doc_ids, chunk_hashes = pa.array(doc_list, pa.string()), pa.array(hash_list, pa.string())
        sources = pa.array(source_list, pa.string())
    return pa.table({"id": ids, "doc_id": doc_ids, "source": sources, "chunk_hash": chunk_hashes}, schema=POINTS_SCHEMA)


@dataclass
class IdComparison:
    points: int  # ids in the collection
    matched: int  # of them, ids of a current chunk
    missing: int  # current chunks without a point
    unknown: list[StoredPoint]  # points no current chunk has, with doc_id and source


def compare_ids(store: VectorStore, collection: str, chunk_ids: pa.Array, page_size: int = 32_768) -> IdComparison:
    """Every point id of the collection against the current chunk ids, one page at a time: memory holds
    the chunk ids, a flag per chunk and one page, not a table of every point (a few tens of MB at
    278,000 points instead of a few hundred). Payloads are read only for the points no chunk has."""
    import numpy as np

    chunk_ids = _array(chunk_ids)
    found = np.zeros(len(chunk_ids), dtype=bool)
    points, unknown_ids = 0, []
    for page in store.scroll(collection, [], page_size):
        if not page:
            continue
        ids = pa.array([pid for pid, _ in page], pa.string())
        points += len(ids)
        # The page is the lookup set (a small hash table per page, not one over every chunk id).
        in_page = pc.is_in(chunk_ids, value_set=ids).to_numpy(zero_copy_only=False)
        found |= in_page
        if int(in_page.sum()) < len(ids):  # some point of the page is no current chunk (rare)
            unknown_ids += ids.filter(pc.invert(pc.is_in(ids, value_set=chunk_ids))).to_pylist()
    unknown: list[StoredPoint] = []
    for start in range(0, len(unknown_ids), 1024):
        unknown += store.retrieve(collection, unknown_ids[start : start + 1024], ["doc_id", "source"], False)
    matched = points - len(unknown_ids)
    return IdComparison(points, matched, int(len(found) - found.sum()), unknown)


def _scan_payloads(store: VectorStore, collection: str, page_size: int) -> pa.Table:
    """Every point with its doc_id, source and chunk_hash read from the payload."""
    point_ids: list[pa.Array] = []
    values: dict[str, list[pa.Array]] = {name: [] for name in SCANNED_PAYLOAD}
    for page in store.scroll(collection, SCANNED_PAYLOAD, page_size):
        if page:
            point_ids.append(pa.array([pid for pid, _ in page], pa.string()))
            for name in SCANNED_PAYLOAD:
                values[name].append(pa.array([str(payload.get(name, "")) for _, payload in page], pa.string()))
    columns = {n: pa.concat_arrays(a) if a else pa.array([], pa.string()) for n, a in values.items()}
    ids = pa.concat_arrays(point_ids) if point_ids else pa.array([], pa.string())
    return pa.table({"id": ids, **columns}, schema=POINTS_SCHEMA)


def points_table(points: Mapping[str, tuple[str, str, str]]) -> pa.Table:
    """id -> (doc_id, source, chunk_hash) as a `scan_points` table (for tests and small callers)."""
    ids = list(points)
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "doc_id": pa.array([points[i][0] for i in ids], pa.string()),
            "source": pa.array([points[i][1] for i in ids], pa.string()),
            "chunk_hash": pa.array([points[i][2] for i in ids], pa.string()),
        },
        schema=POINTS_SCHEMA,
    )


def desired_table(chunks: Mapping[str, tuple[str, str]]) -> pa.Table:
    """chunk_id -> (doc_id, chunk_hash) as the table `plan_sync` takes (for tests and small callers)."""
    ids = list(chunks)
    return pa.table(
        {
            "chunk_id": pa.array(ids, pa.string()),
            "doc_id": pa.array([chunks[i][0] for i in ids], pa.string()),
            "chunk_hash": pa.array([chunks[i][1] for i in ids], pa.string()),
        }
    )


@dataclass
class SyncPlan:
    write_mask: pa.BooleanArray  # per desired row: write it (not indexed yet, or damaged: `repaired`)
    new_ids: pa.Array
    stale_ids: pa.Array  # sorted
    preserved: int  # points of unreadable sources/documents kept as they were
    unchanged_chunks: int
    documents_added: int
    documents_changed: int
    documents_removed: int
    documents_unchanged: int
    repaired: int
    final_ids: pa.Array  # every id the collection holds once the plan is applied
    reuse: dict[str, str]  # new chunk id -> indexed point with identical text, whose vector it can take


def unchanged_plan(desired: pa.Table) -> SyncPlan:
    """The plan when the collection is known to hold exactly the `desired` chunks (its sync stamp names
    their ids, and nothing has written to it since): nothing to write, nothing to delete."""
    ids = _array(desired["chunk_id"])
    return SyncPlan(
        write_mask=pa.array([False] * len(ids), pa.bool_()),
        new_ids=pa.array([], pa.string()),
        stale_ids=pa.array([], pa.string()),
        preserved=0,
        unchanged_chunks=len(ids),
        documents_added=0,
        documents_changed=0,
        documents_removed=0,
        documents_unchanged=len(pc.unique(desired["doc_id"])),
        repaired=0,
        final_ids=ids,
        reuse={},
    )


def _array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _counts(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(distinct values, how often each occurs)."""
    counted = pc.value_counts(values)
    return counted.field("values"), counted.field("counts")


def _counts_for(keys: pa.Array, values: pa.Array, counts: pa.Array) -> pa.Array:
    """The count of each of `keys` in a `_counts` result (0 for a key it lacks)."""
    return pc.fill_null(pc.take(counts, pc.index_in(keys, value_set=values)), 0)


def plan_sync(
    desired: pa.Table,
    existing: pa.Table,
    unavailable_sources: Iterable[str] = (),
    unreadable_doc_ids: Iterable[str] = (),
) -> SyncPlan:
    """Compare the chunks the sources produce now (`desired`: chunk_id, doc_id, chunk_hash) with the
    points indexed (`existing`, from `scan_points`).

    Points of a source that could not be read this time (or of a document that failed to read) are
    neither stale nor new: they are kept, so a flaky server does not empty the knowledge base.

    Rows are matched by position lookups (`index_in`, `take`) rather than table joins: at 278,000
    chunks that keeps the plan's Arrow memory to about a tenth of what hash joins and group-bys took.
    """
    import numpy as np

    unavailable = pa.array(sorted(set(unavailable_sources)), pa.string())
    unreadable = pa.array(sorted(set(unreadable_doc_ids)), pa.string())
    desired, existing = desired.select(DESIRED_COLUMNS).combine_chunks(), existing.combine_chunks()
    d_ids, e_ids = _array(desired["chunk_id"]), _array(existing["id"])
    d_docs, e_docs = _array(desired["doc_id"]), _array(existing["doc_id"])
    d_hashes, e_hashes = _array(desired["chunk_hash"]), _array(existing["chunk_hash"])

    # Where each current chunk sits in the collection (null: not indexed yet).
    at = pc.index_in(d_ids, value_set=e_ids)
    indexed = pc.is_valid(at)
    # An id is derived from content, so a point whose payload disagrees with it was damaged (edited by
    # hand, or written by something else): it is rewritten like a new one.
    damaged = pc.fill_null(pc.not_equal(pc.take(e_hashes, at), d_hashes), False)
    write_mask = pc.or_(pc.invert(indexed), damaged)
    new_ids = pc.filter(d_ids, write_mask)

    wanted_by_point = np.zeros(len(e_ids), dtype=bool)
    wanted_by_point[at.drop_null().to_numpy()] = True
    not_desired = pa.array(~wanted_by_point)
    kept = pc.or_(pc.is_in(_array(existing["source"]), value_set=unavailable), pc.is_in(e_docs, value_set=unreadable))
    stale_mask = pc.and_(not_desired, pc.invert(kept))
    stale_ids = pc.filter(e_ids, stale_mask)
    stale_ids = stale_ids.take(pc.sort_indices(stale_ids))
    preserved = pc.sum(pc.and_(not_desired, kept)).as_py() or 0

    # Documents: added (no point yet), changed (its set of chunk ids differs), removed (points only).
    docs, wanted = _counts(d_docs)
    indexed_n = _counts_for(docs, *_counts(e_docs))
    shared = _counts_for(docs, *_counts(pc.filter(d_docs, indexed)))
    added = pc.sum(pc.equal(indexed_n, 0)).as_py() or 0
    same = pc.and_(pc.equal(wanted, shared), pc.equal(indexed_n, shared))
    changed = pc.sum(pc.and_(pc.greater(indexed_n, 0), pc.invert(same))).as_py() or 0
    gone = pc.invert(pc.or_(pc.is_in(e_docs, value_set=docs), kept))
    removed = len(pc.unique(pc.filter(e_docs, gone)))

    # A chunk whose exact text is already indexed (a moved paragraph, a renamed file) keeps its vector:
    # its donor is any point with that text that is not itself being rewritten.
    takers = pa.table({"chunk_id": new_ids, "chunk_hash": pc.filter(d_hashes, write_mask)})
    reuse: dict[str, str] = {}
    if takers.num_rows:
        donor_mask = pc.and_(
            pc.is_in(e_hashes, value_set=takers["chunk_hash"].combine_chunks()),
            pc.and_(pc.invert(pc.is_in(e_ids, value_set=new_ids)), pc.not_equal(e_hashes, "")),
        )
        donors = pa.table({"chunk_hash": pc.filter(e_hashes, donor_mask), "id": pc.filter(e_ids, donor_mask)})
        matched = takers.join(donors, "chunk_hash", join_type="inner")
        reuse = dict(zip(matched["chunk_id"].to_pylist(), matched["id"].to_pylist(), strict=True))

    final_ids = pa.concat_arrays([pc.filter(e_ids, pc.invert(stale_mask)), pc.filter(d_ids, pc.invert(indexed))])
    return SyncPlan(
        write_mask=write_mask,
        new_ids=new_ids,
        stale_ids=stale_ids,
        preserved=preserved,
        unchanged_chunks=desired.num_rows - len(new_ids),
        documents_added=added,
        documents_changed=changed,
        documents_removed=removed,
        documents_unchanged=len(docs) - added - changed,
        repaired=pc.sum(damaged).as_py() or 0,
        final_ids=final_ids,
        reuse=reuse,
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

    def __init__(self, store: VectorStore, collection: str, batch_size: int):
        self.store, self.collection, self.batch_size = store, collection, batch_size
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self.write_s = 0.0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="vector-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
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
                    self.store.upsert(
                        self.collection,
                        ids[i : i + self.batch_size],
                        vectors[i : i + self.batch_size],
                        payloads[i : i + self.batch_size],
                    )
                self.write_s += time.perf_counter() - started
                self.written += len(ids)
            except BaseException as err:  # surfaced to the producer, never swallowed
                self._error = err

    def put(self, ids: list[str], vectors: np.ndarray, payloads: list[dict]) -> None:
        self._raise_if_failed()
        self._queue.put((ids, vectors, payloads))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error


def _windows(chunks: ParquetTable, write_mask: pa.BooleanArray, size: int) -> Iterator[list[dict[str, Any]]]:
    """Rows of `chunks` selected by `write_mask` (aligned with the table's rows), in windows of `size`,
    streamed from disk."""
    window: list[dict[str, Any]] = []
    offset = 0
    if not pc.any(write_mask).as_py():
        return  # nothing to write: the text column is not read at all
    for batch in chunks.iter_batches(columns=["chunk_id", *PAYLOAD_COLUMNS]):
        mask = write_mask.slice(offset, batch.num_rows)
        offset += batch.num_rows
        if not pc.any(mask).as_py():
            continue
        for row in batch.filter(mask).to_pylist():
            window.append(row)
            if len(window) >= size:
                yield window
                window = []
    if window:
        yield window


def apply_sync(
    store: VectorStore,
    collection: str,
    plan: SyncPlan,
    chunks: ParquetTable,
    encode: Callable[[list[str]], np.ndarray],
    log: Callable[[str], None],
    upsert_batch: int = 256,
    window: int = 2048,
    progress_every_s: float = 10.0,
) -> SyncStats:
    """Write the plan's new points (embedding only text the index has never seen), then delete stale ones.

    `chunks` must be the table the plan's desired rows were read from, in the same order."""
    stats = SyncStats()
    progress = Progress("embedding", len(plan.new_ids), log, every_s=progress_every_s, unit="chunks")
    writer = _PointWriter(store, collection, upsert_batch)
    try:
        for rows in _windows(chunks, plan.write_mask, window):
            vectors = _vectors_for(rows, store, collection, plan.reuse, encode, stats, progress.advance)
            writer.put(
                [r["chunk_id"] for r in rows],
                vectors,
                [{k: r[k] for k in PAYLOAD_COLUMNS} for r in rows],
            )
    finally:
        writer.close()
    stats.upserted, stats.write_s = writer.written, writer.write_s
    if len(plan.new_ids):
        progress.finish()

    started = time.perf_counter()
    for i in range(0, len(plan.stale_ids), 1024):
        batch = plan.stale_ids.slice(i, 1024).to_pylist()
        store.delete(collection, batch)
        stats.deleted += len(batch)
    stats.write_s += time.perf_counter() - started
    return stats


def _vectors_for(
    rows: Sequence[dict[str, Any]],
    store: VectorStore,
    collection: str,
    reuse: Mapping[str, str],
    encode: Callable[[list[str]], np.ndarray],
    stats: SyncStats,
    advance: Callable[[int], None],
    slice_size: int = 256,
) -> np.ndarray:
    """One float32 row per row of `rows`. Kept as arrays, not Python lists: a window of 2,048 vectors
    as lists is ~25 MB of float objects, as an array 3 MB."""
    import numpy as np

    by_hash: dict[str, np.ndarray] = {}
    donor_ids = sorted({reuse[r["chunk_id"]] for r in rows if r["chunk_id"] in reuse})
    for point in store.retrieve(collection, donor_ids, fields=["chunk_hash"], with_vectors=True):
        if point.vector is not None:
            by_hash[str(point.payload.get("chunk_hash", ""))] = np.asarray(point.vector, dtype=np.float32)
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
        encoded = np.asarray(encode([text for _, text in part]), dtype=np.float32)
        stats.encode_s += time.perf_counter() - started
        for (chunk_hash, _), vector in zip(part, encoded, strict=True):
            by_hash[chunk_hash] = vector
        advance(len(part))
    stats.embedded += len(texts)
    # Every row not freshly encoded got a vector already computed: from the index, or its twin here.
    stats.reused += len(rows) - len(texts)
    advance(len(rows) - len(texts))
    return np.stack([by_hash[r["chunk_hash"]] for r in rows]) if rows else np.zeros((0, 0), dtype=np.float32)
