"""Document retrieval over the chunk index: search chunks, rank documents by their best chunk."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from qdrant_client import QdrantClient


def search_documents(
    client: QdrantClient,
    collection: str,
    query_vectors: np.ndarray,
    top_documents: int = 100,
    chunks_per_document: int = 3,
    batch_size: int = 64,
    query_filter: object | None = None,
) -> list[list[tuple[str, float]]]:
    """For each query vector, documents ranked by their best-matching chunk (max-sim), best first.

    Asks for `top_documents * chunks_per_document` chunks so that long documents with several hits do
    not crowd the document list below `top_documents`. `query_filter` (a qdrant `models.Filter`)
    narrows the chunks searched, e.g. to each document's first chunk.
    """
    from qdrant_client import models

    limit = top_documents * chunks_per_document
    results: list[list[tuple[str, float]]] = []
    for start in range(0, len(query_vectors), batch_size):
        requests = [
            models.QueryRequest(query=vector.tolist(), limit=limit, with_payload=["doc_id"], filter=query_filter)
            for vector in query_vectors[start : start + batch_size]
        ]
        for response in client.query_batch_points(collection, requests=requests):
            results.append(rank_documents(response.points, top_documents))
    return results


def rank_documents(points: Sequence, top_documents: int) -> list[tuple[str, float]]:
    """Collapse scored chunks to documents, keeping each document's best score."""
    best: dict[str, float] = {}
    for point in points:
        doc = (point.payload or {}).get("doc_id", "")
        if doc not in best or point.score > best[doc]:
            best[doc] = point.score
    return sorted(best.items(), key=lambda item: -item[1])[:top_documents]


def search_chunks(
    client: QdrantClient, collection: str, query_vectors: np.ndarray, limit: int, batch_size: int = 64
) -> list[list[tuple[str, str, float]]]:
    """For each query vector, the `limit` best chunks as (doc_id, text, score): the contexts a RAG
    answer is grounded in."""
    from qdrant_client import models

    results: list[list[tuple[str, str, float]]] = []
    for start in range(0, len(query_vectors), batch_size):
        requests = [
            models.QueryRequest(query=vector.tolist(), limit=limit, with_payload=["doc_id", "text"])
            for vector in query_vectors[start : start + batch_size]
        ]
        for response in client.query_batch_points(collection, requests=requests):
            results.append(
                [
                    ((p.payload or {}).get("doc_id", ""), (p.payload or {}).get("text", ""), p.score)
                    for p in response.points
                ]
            )
    return results
