"""Retrieval metrics as pure functions, following trec_eval / BEIR conventions.

`ranked` is a list of document ids, best first; `relevance` maps a document id to its graded judgement
(> 0 is relevant). Queries without any relevant document are the caller's to exclude.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def dcg_at_k(gains: Sequence[float], k: int) -> float:
    """Discounted cumulative gain with linear gains: sum of gain_i / log2(i + 1), i from 1."""
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]))


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int = 10) -> float:
    """trec_eval's ndcg_cut_k: DCG of the ranking over DCG of the ideal ranking of all judgements."""
    ideal = dcg_at_k(sorted((r for r in relevance.values() if r > 0), reverse=True), k)
    if ideal == 0:
        return 0.0
    return dcg_at_k([max(relevance.get(doc, 0.0), 0.0) for doc in ranked], k) / ideal


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    relevant = {doc for doc, r in relevance.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
