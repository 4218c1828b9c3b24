"""What the embedding model is trained on: queries with their relevant documents, split so that no
document and no query is in both the training and the validation split, and hard negatives mined from
the index for each.

A split by query alone leaks: two queries judged against one document would put that document's text in
both splits, and validation would reward memorising it. Queries that share a relevant document are
therefore kept together (the connected parts of the query-document graph), and each part goes to one
split by a hash of its smallest document id, so a split does not move when unrelated data is added.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ai_assets.lib.vector_store import VectorStore

__all__ = [
    "TRAIN",
    "VALIDATION",
    "ExampleStats",
    "RankedChunk",
    "TrainingDataError",
    "TrainingQuery",
    "build_examples",
    "check_splits",
    "mine_negatives",
    "split_by_document",
]

TRAIN = "train"
VALIDATION = "validation"


class TrainingDataError(ValueError):
    """Training data that cannot train or validate a model; raised before any training starts."""


@dataclass(frozen=True)
class RankedChunk:
    """One search result for a query: the chunk, its document and its cosine score."""

    chunk_id: str
    doc_id: str
    score: float


def _relevant_docs(relevant: Mapping[str, float]) -> list[str]:
    return sorted(doc for doc, grade in relevant.items() if grade > 0)


def split_by_document(
    relevant_by_query: Mapping[str, Mapping[str, float]], validation_fraction: float, salt: str = ""
) -> dict[str, str]:
    """Query id -> "train" or "validation", for every query with at least one relevant document.

    Queries that share a relevant document (directly or through other queries) form one group, and a
    group goes whole to one split: its smallest document id, hashed with `salt`, falls below
    `validation_fraction` or not. When no group lands in validation but there are several, the one whose
    hash is smallest goes there, so a small dataset still has something to validate on.

    Raises:
        TrainingDataError: `validation_fraction` outside (0, 1), or fewer than two groups (one split
            would be empty).
    """
    if not 0 < validation_fraction < 1:
        raise TrainingDataError(f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction}")
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving keeps the trees flat
            node = parent[node]
        return node

    def union(a: str, b: str) -> None:
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)

    # Documents and queries are nodes of one graph; the prefixes keep their ids apart.
    for query, relevant in relevant_by_query.items():
        docs = _relevant_docs(relevant)
        if not docs:
            continue
        parent.setdefault(f"q:{query}", f"q:{query}")
        for doc in docs:
            parent.setdefault(f"d:{doc}", f"d:{doc}")
            union(f"q:{query}", f"d:{doc}")

    smallest_doc: dict[str, str] = {}
    for node in parent:
        if node.startswith("d:"):
            root = find(node)
            smallest_doc[root] = min(smallest_doc.get(root, node[2:]), node[2:])
    if len(smallest_doc) < 2:
        raise TrainingDataError(
            f"cannot split {sum(1 for n in parent if n.startswith('q:'))} judged queries into training and "
            "validation without a document in both: they all share relevant documents (one group). "
            "Add queries judged against other documents."
        )
    position = {root: _unit_hash(f"{salt}\x00{doc}") for root, doc in smallest_doc.items()}
    validation_roots = {root for root, value in position.items() if value < validation_fraction}
    if not validation_roots:
        validation_roots = {min(position, key=position.__getitem__)}
    elif len(validation_roots) == len(position):
        validation_roots.discard(max(position, key=position.__getitem__))
    return {
        node[2:]: VALIDATION if find(node) in validation_roots else TRAIN for node in parent if node.startswith("q:")
    }


def _unit_hash(text: str) -> float:
    """A stable number in [0, 1) for `text`."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


def mine_negatives(
    ranked: Sequence[RankedChunk],
    positive_docs: Iterable[str],
    positive_score: float,
    count: int,
    skip_top: int = 3,
    relative_margin: float = 0.05,
) -> list[str]:
    """Chunk ids of up to `count` hard negatives for one query, from its search results in rank order.

    Never a chunk of a relevant document. The first `skip_top` other results are skipped, and so is any
    result scoring within `relative_margin` of the positive (above `positive_score * (1 -
    relative_margin)`): the closest results to a query are often relevant passages nobody judged, and
    training against them would teach the model to push true answers away.
    """
    if count < 0 or skip_top < 0 or not 0 <= relative_margin < 1:
        raise TrainingDataError(
            f"negatives: count ({count}) and skip_top ({skip_top}) must be >= 0 and relative_margin "
            f"({relative_margin}) in [0, 1)"
        )
    excluded = set(positive_docs)
    ceiling = positive_score * (1 - relative_margin)
    others = [hit for hit in ranked if hit.doc_id not in excluded]
    return [hit.chunk_id for hit in others[skip_top:] if hit.score <= ceiling][:count]


def check_splits(
    split_of: Mapping[str, str], positives: Mapping[str, int], min_train_pairs: int, where: str
) -> dict[str, int]:
    """Pairs per split, after checking there is enough to train and something to validate.

    `split_of` maps query id -> split, `positives` query id -> how many positive chunks it has; `where`
    names the data in messages (a file, a setting).

    Raises:
        TrainingDataError: fewer than `min_train_pairs` training pairs, or a validation split without
            a single positive.
    """
    pairs = {TRAIN: 0, VALIDATION: 0}
    for query, split in split_of.items():
        pairs[split] += positives.get(query, 0)
    if pairs[TRAIN] < min_train_pairs:
        raise TrainingDataError(
            f"{where}: {pairs[TRAIN]} training pairs, fewer than the {min_train_pairs} needed to train "
            "(min_train_pairs); add judged queries or lower the minimum"
        )
    if pairs[VALIDATION] == 0:
        raise TrainingDataError(
            f"{where}: the validation split has no query with a positive chunk, so the candidate model "
            "could not be compared with the deployed one; add judged queries or raise validation_fraction"
        )
    return pairs


@dataclass(frozen=True)
class TrainingQuery:
    """A question with the documents that answer it, and `positive_text` when the passage that answers it
    is known (the chunk a synthetic question was written from)."""

    id: str
    text: str
    relevant: Mapping[str, float]
    synthetic: bool = False
    positive_text: str | None = None


@dataclass
class ExampleStats:
    pairs: int = 0
    # A relevant document that is not in the index gives no positive passage: reported, not trained on.
    positives_not_indexed: int = 0
    # No result far enough from the positive to be a safe negative, even with the rules relaxed.
    dropped_without_negative: int = 0


def build_examples(
    queries: Sequence[TrainingQuery],
    vectors: Sequence[Sequence[float]],
    store: VectorStore,
    collection: str,
    negatives: int = 1,
    search_limit: int = 30,
    skip_top: int = 3,
    relative_margin: float = 0.05,
) -> tuple[list[dict[str, str]], ExampleStats]:
    """Training rows `{"query_id", "anchor", "positive", "negative_1", ...}`, one per (query, relevant
    document), from the index: the positive is the document's chunk closest to the query (or the
    query's known passage), the negatives are mined from the query's top `search_limit` chunks
    (`mine_negatives`). A row for which no negative survives the rules is mined again with them relaxed
    (no skipped ranks, no margin: still never the positive's document) and dropped only when even that
    finds none, so every row has as many negatives, as the trainer needs."""
    rows: list[dict[str, str]] = []
    stats = ExampleStats()
    for query, vector in zip(queries, vectors, strict=True):
        docs = _relevant_docs(query.relevant)
        if not docs:
            continue
        ranked_hits = store.search(collection, [vector], search_limit, ["doc_id", "text"])[0]
        texts = {hit.id: str(hit.payload.get("text", "")) for hit in ranked_hits}
        ranked = [RankedChunk(hit.id, str(hit.payload.get("doc_id", "")), hit.score) for hit in ranked_hits]
        for doc in docs:
            best = store.search(collection, [vector], 1, ["text"], where={"doc_id": doc})[0]
            if not best:
                stats.positives_not_indexed += 1
                continue
            positive = query.positive_text or str(best[0].payload.get("text", ""))
            mined = mine_negatives(ranked, docs, best[0].score, negatives, skip_top, relative_margin)
            if len(mined) < negatives:
                mined = mine_negatives(ranked, docs, float("inf"), negatives, skip_top=0, relative_margin=0.0)
            if len(mined) < negatives:
                stats.dropped_without_negative += 1
                continue
            row = {"query_id": query.id, "anchor": query.text, "positive": positive}
            row.update({f"negative_{i}": texts[chunk] for i, chunk in enumerate(mined, start=1)})
            rows.append(row)
            stats.pairs += 1
    return rows, stats
