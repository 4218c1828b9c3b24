"""An independent audit of the index against the sources, for tests, benchmarks and operators.

It re-derives the expected chunk ids straight from the sources (no Dagster, no stored tables) and
compares them with every point in the collection behind the alias.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import tokenizers

from ai_assets.lib.ingestion.chunking import ChunkingSettings, chunk_id, chunk_texts
from ai_assets.lib.ingestion.sources import Document, HttpSettings, SourceSpec, read_source
from ai_assets.lib.vector_store import VectorStore


def expected_chunk_ids(
    specs: Iterable[SourceSpec],
    tokenizer: tokenizers.Tokenizer,
    settings: ChunkingSettings,
    cache_dir: Path,
) -> set[str]:
    docs = [
        item
        for spec in specs
        for item in read_source(spec, http=HttpSettings(), cache_dir=cache_dir)
        if isinstance(item, Document)
    ]
    ids = set()
    for doc, chunks in zip(docs, chunk_texts([d.text for d in docs], tokenizer, settings), strict=True):
        ids.update(chunk_id(doc.doc_id, c.index, c.chunk_hash) for c in chunks)
    return ids


@dataclass(frozen=True)
class IndexAudit:
    points: int
    expected: int
    stale_points: int  # indexed, but no current chunk has this id
    missing_points: int  # current chunks not indexed
    duplicate_points: int  # extra points for one (document, chunk position)

    @property
    def exact(self) -> bool:
        return self.stale_points == self.missing_points == self.duplicate_points == 0


def audit_collection(store: VectorStore, collection_or_alias: str, expected: set[str]) -> IndexAudit:
    """Compare every point of the collection with the expected chunk ids."""
    ids: set[str] = set()
    positions: Counter = Counter()
    for point_id, payload in store.iter_points(collection_or_alias, ["doc_id", "chunk_index"]):
        ids.add(point_id)
        positions[(payload["doc_id"], payload["chunk_index"])] += 1
    return IndexAudit(
        points=len(ids),
        expected=len(expected),
        stale_points=len(ids - expected),
        missing_points=len(expected - ids),
        duplicate_points=sum(n - 1 for n in positions.values() if n > 1),
    )
