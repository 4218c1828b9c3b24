"""RAG ingestion: sources -> documents -> token-aware chunks -> vectors in Qdrant, incrementally."""

import hashlib
import shutil
import time
from collections import Counter
from dataclasses import asdict, replace

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from ai_assets.lib.arrow_digest import Digest, update_with_lines
from ai_assets.lib.ingestion.chunking import CHUNKER_VERSION, ChunkingSettings, chunk_id, chunk_texts
from ai_assets.lib.ingestion.source_digest import source_digest
from ai_assets.lib.ingestion.sources import SourceProblem, read_source
from ai_assets.lib.ingestion.vector_index import (
    CHUNK_IDS_VERSION,
    DESIRED_COLUMNS,
    apply_sync,
    chunk_ids_version,
    collection_fingerprint,
    collection_name,
    index_data_version,
    plan_sync,
    scan_points,
    unchanged_plan,
)
from ai_assets.lib.metadata import preview_table
from ai_assets.lib.progress import Progress
from ai_assets.lib.tables import ParquetTable, TableWriter, latest_table
from ai_assets.resources.chunking import ChunkingResource
from ai_assets.resources.data_folder import DataFolderResource
from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets.resources.io_manager import staging_path
from ai_assets.resources.qdrant import QdrantResource
from ai_assets.resources.sources import DocumentSourcesResource

OWNERS = ["team:ml-platform"]
GROUP = "ingestion"

DOCUMENT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("uri", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("content_hash", pa.string()),
    ]
)
CHUNK_SCHEMA = pa.schema(
    [
        ("chunk_id", pa.string()),
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("uri", pa.string()),
        ("title", pa.string()),
        ("chunk_index", pa.int32()),
        ("chunk_hash", pa.string()),
        ("doc_hash", pa.string()),
        ("token_count", pa.int32()),
        ("text", pa.string()),
    ]
)


SOURCE_COLUMNS = [
    dg.TableColumn("source"),
    dg.TableColumn("kind"),
    dg.TableColumn("location"),
    dg.TableColumn("documents", "int"),
    dg.TableColumn("status", description="unavailable: nothing could be read, its indexed documents are kept"),
]
PROBLEM_COLUMNS = [
    dg.TableColumn("source"),
    dg.TableColumn("where", description="file (with :line for JSONL), URL or document id"),
    dg.TableColumn("problem"),
]
# Problems shown in the preview; the `problems` count and the run's warnings have them all.
PROBLEMS_PREVIEW_LIMIT = 20


@dg.asset(
    group_name=GROUP,
    kinds={"python", "parquet"},
    owners=OWNERS,
    code_version="1",
    io_manager_key="table_io_manager",
)
def raw_documents(
    context: dg.AssetExecutionContext, document_sources: DocumentSourcesResource, data_folder: DataFolderResource
) -> dg.Output[ParquetTable]:
    """Every document the configured sources hold right now: id, source, title, text and content hash.

    Sources are local folders or files (Markdown, text, HTML, BEIR-style JSONL) and HTTP(S) URLs fetched
    with conditional requests. A source that cannot be read is reported here by name and its documents
    stay indexed as they were; the other sources are read as usual.
    """
    started = time.perf_counter()
    specs = document_sources.specs()
    writer = TableWriter(staging_path(data_folder, context, "raw_documents"), DOCUMENT_SCHEMA)
    version = hashlib.sha256()
    per_source: Counter[str] = Counter()
    characters: Counter[str] = Counter()
    problems: list[SourceProblem] = []
    seen: set[str] = set()
    cache_dir = data_folder.http_cache_dir
    http, local = document_sources.http_settings(), document_sources.local_settings()
    progress = Progress("reading sources", 0, context.log.info, unit="documents")
    # A path source whose files, settings and reader code are exactly as when the previous table was
    # written yields exactly its rows again: they are copied instead of re-read (see source_digest).
    previous = latest_table(context.asset_key, data_folder.tables_dir)
    previous_digests: dict[str, str] = previous.attrs.get("source_digests", {}) if previous else {}
    digests: dict[str, str] = {}
    reused: list[str] = []
    try:
        for spec in specs:
            digest = source_digest(spec, local)
            if previous is not None and digest is not None and previous_digests.get(spec.name) == digest:
                per_source[spec.name] = _copy_source_rows(previous, spec.name, writer, version)
                characters[spec.name] = int(previous.attrs.get("source_characters", {}).get(spec.name, 0))
                digests[spec.name] = digest
                reused.append(spec.name)
                progress.advance(per_source[spec.name])
                continue
            problems_before = len(problems)
            for item in read_source(spec, http=http, cache_dir=cache_dir, local=local):
                if isinstance(item, SourceProblem):
                    problems.append(item)
                    context.log.warning(f"source {item.source}: {item.location}: {item.message}")
                    continue
                # Ids are prefixed with their source's unique name, so a duplicate is within one source.
                if item.doc_id in seen:
                    problems.append(SourceProblem(item.source, item.uri, f"duplicate document id {item.doc_id}"))
                    context.log.warning(f"source {item.source}: duplicate document id {item.doc_id}, skipped")
                    continue
                seen.add(item.doc_id)
                writer.write(asdict(item))
                per_source[spec.name] += 1
                characters[spec.name] += len(item.text)
                version.update(f"{item.doc_id}\x00{item.content_hash}\n".encode())
                progress.advance()
            # Only a source read without a problem is taken as read: its problems must be reported again.
            if digest is not None and len(problems) == problems_before:
                digests[spec.name] = digest
    except BaseException:
        writer.abort()
        raise
    if reused:
        context.log.info(f"Unchanged since the previous run, rows copied instead of re-read: {', '.join(reused)}")
    unavailable = sorted({p.source for p in problems if p.source_unavailable})
    unreadable = sorted({p.doc_id for p in problems if p.doc_id})
    table = writer.close(
        attrs={
            "unavailable_sources": unavailable,
            "unreadable_doc_ids": unreadable,
            "source_digests": digests,
            "source_characters": dict(characters),
        }
    )
    source_rows = [
        {
            "source": s.name,
            "kind": s.kind,
            "location": s.location,
            "documents": per_source[s.name],
            "status": "unavailable" if s.name in unavailable else "ok",
        }
        for s in specs
    ]
    metadata: dict[str, object] = {
        "documents": table.num_rows,
        "sources": len(specs),
        "sources_unavailable": len(unavailable),
        "problems": len(problems),
        "sources_reused": len(reused),
        "characters": sum(characters.values()),
        "duration_s": round(time.perf_counter() - started, 3),
        "sources_preview": preview_table(SOURCE_COLUMNS, source_rows, width=None),
    }
    if problems:
        # Whole messages: they name the file and the setting to change.
        metadata["problems_preview"] = preview_table(
            PROBLEM_COLUMNS,
            [
                {"source": p.source, "where": p.location, "problem": p.message}
                for p in problems[:PROBLEMS_PREVIEW_LIMIT]
            ],
            width=None,
        )
    return dg.Output(table, metadata=metadata, data_version=dg.DataVersion(version.hexdigest()[:24]))


def _copy_source_rows(previous: ParquetTable, source: str, writer: TableWriter, version: Digest) -> int:
    """Write the previous table's rows of `source` (in their order) and feed the data version their
    `doc_id NUL content_hash` lines, as reading them would. Returns how many rows."""
    rows = 0
    for batch in previous.iter_batches(batch_size=16_384):
        kept = batch.filter(pc.equal(batch.column("source"), source))
        if kept.num_rows:
            writer.write_batch(kept)
            update_with_lines(
                version, pc.binary_join_element_wise(kept.column("doc_id"), kept.column("content_hash"), "\x00")
            )
            rows += kept.num_rows
    return rows


class ChunkingConfig(dg.Config):
    """Token-aware chunking; any change builds a new collection and swaps the alias when it is ready.
    Empty (None) means the deployment's setting, from the `chunking` resource (CHUNK_SIZE, CHUNK_OVERLAP)."""

    chunk_size: int | None = None
    chunk_overlap: int | None = None


@dg.asset(
    group_name=GROUP,
    kinds={"python", "parquet"},
    owners=OWNERS,
    code_version=f"chunker-{CHUNKER_VERSION}",
    io_manager_key="table_io_manager",
)
def document_chunks(
    context: dg.AssetExecutionContext,
    config: ChunkingConfig,
    chunking: ChunkingResource,
    data_folder: DataFolderResource,
    embedding_model: EmbeddingModelResource,
    raw_documents: ParquetTable,
) -> dg.Output[ParquetTable]:
    """Documents cut into chunks the embedding model reads whole, with deterministic ids.

    Chunks are measured with the model's own tokenizer and never exceed its sequence length; cuts
    prefer headings, then paragraphs, then sentences. A chunk's id is uuid5(document id, chunk index,
    chunk content hash), so unchanged text keeps its id across runs. Documents whose content hash is
    unchanged since the last run reuse their chunks without tokenizing again.
    """
    started = time.perf_counter()
    settings = ChunkingSettings(
        chunk_size=chunking.chunk_size if config.chunk_size is None else config.chunk_size,
        chunk_overlap=chunking.chunk_overlap if config.chunk_overlap is None else config.chunk_overlap,
    )
    settings.validate(embedding_model.max_content_tokens)
    # The base model's name: a fine-tuned deployment keeps its base's tokenizer and sequence length, so
    # deploying or rolling one back changes no chunk (the collection fingerprint still follows the model).
    fingerprint = f"{settings.fingerprint()}:{embedding_model.base_name}"

    # (document id, content hash) of every current document, as one Arrow column of keys: unchanged
    # documents are found by a vectorised lookup, not a Python object per chunk.
    current = raw_documents.read_columns(["doc_id", "content_hash"])
    current_keys = pc.binary_join_element_wise(current["doc_id"], current["content_hash"], "\x00").combine_chunks()
    attrs = {"fingerprint": fingerprint, "chunking_fingerprint": settings.fingerprint(), **raw_documents.attrs}
    previous = latest_table(context.asset_key, data_folder.tables_dir)
    reusable = previous is not None and previous.attrs.get("fingerprint") == fingerprint
    if reusable and _same_documents(previous, current_keys):
        # Every document unchanged and none removed: the new table is the previous one, row for row, so
        # it is copied instead of rewritten (seconds at 100k documents).
        staging = staging_path(data_folder, context, "document_chunks")
        staging.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(previous.path, staging)
        table, to_chunk, reused_count = ParquetTable(staging, previous.num_rows, attrs), 0, current.num_rows
    else:
        writer = TableWriter(staging_path(data_folder, context, "document_chunks"), CHUNK_SCHEMA)
        reused: list[pa.Array] = []
        try:
            if reusable:
                for batch in previous.iter_batches(batch_size=16_384):
                    keys = pc.binary_join_element_wise(batch.column("doc_id"), batch.column("doc_hash"), "\x00")
                    kept = batch.filter(pc.is_in(keys, value_set=current_keys))
                    writer.write_batch(kept)
                    reused.append(kept.column("doc_id"))
            reused_docs = pc.unique(pa.concat_arrays(reused)) if reused else pa.array([], pa.string())
            to_chunk = current.num_rows - len(reused_docs)
            progress = Progress("chunking", to_chunk, context.log.info, unit="documents")
            tokenizer = embedding_model.tokenizer() if to_chunk else None
            for batch in raw_documents.iter_batches(batch_size=512) if to_chunk else ():
                fresh = batch.filter(pc.invert(pc.is_in(batch.column("doc_id"), value_set=reused_docs)))
                if not fresh.num_rows:
                    continue
                docs = fresh.to_pylist()
                for doc, chunks in zip(docs, chunk_texts([d["text"] for d in docs], tokenizer, settings), strict=True):
                    for chunk in chunks:
                        writer.write(
                            {
                                "chunk_id": chunk_id(doc["doc_id"], chunk.index, chunk.chunk_hash),
                                "doc_id": doc["doc_id"],
                                "source": doc["source"],
                                "uri": doc["uri"],
                                "title": doc["title"],
                                "chunk_index": chunk.index,
                                "chunk_hash": chunk.chunk_hash,
                                "doc_hash": doc["content_hash"],
                                "token_count": chunk.token_count,
                                "text": chunk.text,
                            }
                        )
                progress.advance(len(docs))
        except BaseException:
            writer.abort()
            raise
        table = writer.close(attrs=attrs)
        reused_count = len(reused_docs)
    # The ids' version is this asset's data version, and the embedding step and the smoke check need it
    # too: computed once here (sorting and hashing every id), carried in the table's attrs.
    version = index_data_version(table.read_columns(["chunk_id"]).column("chunk_id"))
    table = replace(table, attrs={**table.attrs, CHUNK_IDS_VERSION: version})
    tokens = table.read_columns(["token_count"]).column("token_count")
    total_tokens = pc.sum(tokens).as_py() or 0
    return dg.Output(
        table,
        metadata={
            "documents": current.num_rows,
            "documents_rechunked": to_chunk,
            "documents_reused": reused_count,
            "chunks": table.num_rows,
            "tokens": total_tokens,
            "mean_tokens_per_chunk": round(total_tokens / len(tokens), 1) if len(tokens) else 0.0,
            "max_tokens_per_chunk": pc.max(tokens).as_py() or 0,
            "chunk_size": settings.chunk_size,
            "chunk_overlap": settings.chunk_overlap,
            "model_max_content_tokens": embedding_model.max_content_tokens,
            "duration_s": round(time.perf_counter() - started, 3),
        },
        data_version=dg.DataVersion(version),
    )


def _same_documents(previous: ParquetTable, current_keys: pa.Array) -> bool:
    """Whether the previous chunk table holds exactly the current documents at their current hashes."""
    columns = previous.read_columns(["doc_id", "doc_hash"])
    keys = pc.binary_join_element_wise(columns["doc_id"], columns["doc_hash"], "\x00")
    all_current = pc.all(pc.is_in(keys, value_set=current_keys)).as_py()
    return bool(all_current) and len(pc.unique(columns["doc_id"])) == len(current_keys)


class EmbeddingsConfig(dg.Config):
    upsert_batch_size: int = 256
    # Chunks read from disk and encoded per window: bounds memory, and the model sorts each window by
    # length so padding stays low.
    encode_window: int = 2048
    # After an alias swap, keep the collection it replaced (for instant rollback) instead of dropping
    # it. A collection costs its full size on disk, so the default drops it.
    keep_previous_collection: bool = False


@dg.asset(
    group_name=GROUP,
    kinds={"qdrant", "pytorch"},
    owners=OWNERS,
    code_version="1",
    pool="qdrant",
)
def document_embeddings(
    context: dg.AssetExecutionContext,
    config: EmbeddingsConfig,
    qdrant: QdrantResource,
    embedding_model: EmbeddingModelResource,
    document_chunks: ParquetTable,
) -> dg.MaterializeResult:
    """The searchable knowledge base: one Qdrant point per chunk, reached through the alias.

    Only chunks the collection lacks are embedded; points of changed and removed documents are deleted
    after their replacements are written, so the collection always converges to exactly the current
    sources. A new model or chunking setting builds a fresh collection and swaps the alias atomically
    once it is complete, so search never sees a half-built index.
    """
    started = time.perf_counter()
    fingerprint = collection_fingerprint(embedding_model.identity, document_chunks.attrs["chunking_fingerprint"])
    target = collection_name(qdrant.alias, fingerprint)
    store = qdrant.get_store(context.log)
    serving = qdrant.alias_target()
    qdrant.ensure_collection(target, embedding_model.dimension)
    if serving != target:
        context.log.info(
            f"Building collection {target}; alias '{qdrant.alias}' stays on {serving} until it is complete"
        )

    desired = document_chunks.read_columns(DESIRED_COLUMNS)
    desired_version = chunk_ids_version(document_chunks)
    # The embedded store stamps a collection after each completed sync and forgets the stamp before any
    # later write, so a stamp naming exactly the current chunk ids (and their count) proves there is
    # nothing to do without scanning every point (seconds at 100k documents). The point-count check
    # still scans every id on each run.
    stamped = (
        store.sync_stamp(target) == {"index_version": desired_version, "points": desired.num_rows}
        and store.count(target) == desired.num_rows
    )
    if stamped:
        plan, scanned = unchanged_plan(desired), 0
        context.log.info(f"{target}: unchanged since its last sync (its stamp matches the current chunks)")
    else:
        points_table = scan_points(store, target, desired)
        scanned = points_table.num_rows
        plan = plan_sync(
            desired,
            points_table,
            document_chunks.attrs.get("unavailable_sources", []),
            document_chunks.attrs.get("unreadable_doc_ids", []),
        )
        del points_table
    context.log.info(
        f"{target}: {len(plan.new_ids)} chunks to write, {len(plan.stale_ids)} stale to delete, "
        f"{plan.unchanged_chunks} unchanged, {plan.preserved} kept from unreadable sources"
    )
    stats = apply_sync(
        store,
        target,
        plan,
        document_chunks,
        embedding_model.encode,
        context.log.info,
        upsert_batch=config.upsert_batch_size,
        window=config.encode_window,
    )
    optimize_s = 0.0
    if stats.upserted or stats.deleted or serving != target:
        # Segments merged and, past a size where it pays, the HNSW graph built: before the alias moves,
        # so the first search on a new collection is already fast.
        optimize_started = time.perf_counter()
        store.optimize(target)
        optimize_s = time.perf_counter() - optimize_started
        if optimize_s > 1:
            context.log.info(f"{target}: indexes brought up to date in {optimize_s:.1f} s")
    dropped: list[str] = []
    if serving != target:
        qdrant.point_alias_at(target)
        context.log.info(f"Alias '{qdrant.alias}' now points at {target} (was {serving})")
        dropped = _drop_superseded(qdrant, target, serving, config.keep_previous_collection)

    points = store.count(target)
    final_version = desired_version if stamped else index_data_version(plan.final_ids)
    if not stamped and points == len(plan.final_ids):
        store.set_sync_stamp(target, {"index_version": final_version, "points": points})
    if stats.upserted or stats.deleted:
        # A store that has taken writes holds their buffers until it is closed (~500 MB after 278,000
        # points), and the job's steps share one process and one resource: the checks that follow open
        # it afresh at about half that.
        qdrant.close()
    return dg.MaterializeResult(
        metadata={
            "documents_added": plan.documents_added,
            "documents_changed": plan.documents_changed,
            "documents_removed": plan.documents_removed,
            "documents_unchanged": plan.documents_unchanged,
            "chunks_embedded": stats.embedded,
            "chunks_reused": stats.reused,
            "chunks_skipped": plan.unchanged_chunks,
            "chunks_deleted": stats.deleted,
            "points_preserved": plan.preserved,
            "points_repaired": plan.repaired,
            "point_count": points,
            "points_scanned": scanned,
            "collection": target,
            "alias": qdrant.alias,
            "alias_swapped": serving != target,
            "collections_dropped": ", ".join(dropped) or "none",
            "vector_store": f"Qdrant Edge (embedded) in {qdrant.location}" if qdrant.is_local else "Qdrant server",
            "model": embedding_model.name,
            "dimension": embedding_model.dimension,
            "encode_s": round(stats.encode_s, 3),
            "write_s": round(stats.write_s, 3),
            "index_optimize_s": round(optimize_s, 3),
            "embedding_throughput_chunks_per_s": round(stats.embedded / stats.encode_s, 1) if stats.encode_s else 0.0,
            "duration_s": round(time.perf_counter() - started, 3),
        },
        data_version=dg.DataVersion(final_version),
    )


def _drop_superseded(qdrant: QdrantResource, target: str, previous: str | None, keep_previous: bool) -> list[str]:
    """Delete this alias's older collections, except the one just replaced when `keep_previous`."""
    store = qdrant.get_store()
    ours = [n for n in store.collections() if n.startswith(f"{qdrant.alias}-") and n != target]
    kept = {previous} if keep_previous and previous else set()
    dropped = [n for n in ours if n not in kept]
    for name in dropped:
        store.drop_collection(name)
    return dropped
