"""Document retrieval over the chunk index: search chunks, rank documents by their best chunk."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from ai_assets.lib.vector_store import Hit, VectorStore
    from ai_assets.lib.vector_store.base import Where


def search_documents(
    store: VectorStore,
    collection: str,
    query_vectors: np.ndarray,
    top_documents: int = 100,
    chunks_per_document: int = 3,
    batch_size: int = 64,
    where: Where | None = None,
) -> list[list[tuple[str, float]]]:
    """For each query vector, documents ranked by their best-matching chunk (max-sim), best first.

    Asks for `top_documents * chunks_per_document` chunks so that long documents with several hits do
    not crowd the document list below `top_documents`. `where` (payload field -> value) narrows the
    chunks searched, e.g. `{"chunk_index": 0}` to each document's first chunk.
    """
    limit = top_documents * chunks_per_document
    results: list[list[tuple[str, float]]] = []
    for start in range(0, len(query_vectors), batch_size):
        for hits in store.search(collection, query_vectors[start : start + batch_size], limit, ["doc_id"], where):
            results.append(rank_documents(hits, top_documents))
    return results


def rank_documents(hits: Sequence[Hit], top_documents: int) -> list[tuple[str, float]]:
    """Collapse scored chunks to documents, keeping each document's best score."""
    best: dict[str, float] = {}
    for hit in hits:
        doc = hit.payload.get("doc_id", "")
        if doc not in best or hit.score > best[doc]:
            best[doc] = hit.score
    return sorted(best.items(), key=lambda item: -item[1])[:top_documents]


def search_chunks(
    store: VectorStore, collection: str, query_vectors: np.ndarray, limit: int, batch_size: int = 64
) -> list[list[tuple[str, str, float]]]:
    """For each query vector, the `limit` best chunks as (doc_id, text, score): the contexts a RAG
    answer is grounded in."""
    results: list[list[tuple[str, str, float]]] = []
    for start in range(0, len(query_vectors), batch_size):
        for hits in store.search(collection, query_vectors[start : start + batch_size], limit, ["doc_id", "text"]):
            results.append([(h.payload.get("doc_id", ""), h.payload.get("text", ""), h.score) for h in hits])
    return results
