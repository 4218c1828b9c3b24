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


def mrr_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int = 10) -> float:
    """Reciprocal rank of the first relevant document within the top k, else 0 (trec_eval's recip_rank
    on a run cut at k, as BEIR/MTEB report MRR@10); the mean over queries is MRR@k."""
    for rank, doc in enumerate(ranked[:k], start=1):
        if relevance.get(doc, 0.0) > 0:
            return 1.0 / rank
    return 0.0


def hit_rate_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    """1.0 if at least one relevant document is in the top k, else 0.0 (success@k)."""
    return 1.0 if any(relevance.get(doc, 0.0) > 0 for doc in ranked[:k]) else 0.0


def per_query_retrieval(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, float]],
    ks: Sequence[int] = (1, 3, 5, 10, 100),
) -> dict[str, dict[str, float]]:
    """Per-query `ndcg_at_10`, `mrr_at_10`, `recall_at_{k}` and `hit_rate_at_{k}`, in qrels order.

    Only queries with at least one relevant judgement (> 0) are scored. A judged query missing from
    `rankings` counts as an empty ranking and scores 0 everywhere (trec_eval -c), so a query that
    failed to retrieve cannot flatter the mean; rankings of unjudged queries are ignored.
    """
    results: dict[str, dict[str, float]] = {}
    for qid, relevance in qrels.items():
        if not any(r > 0 for r in relevance.values()):
            continue
        ranked = rankings.get(qid, ())
        scores = {"ndcg_at_10": ndcg_at_k(ranked, relevance, 10), "mrr_at_10": mrr_at_k(ranked, relevance, 10)}
        scores.update({f"recall_at_{k}": recall_at_k(ranked, relevance, k) for k in ks})
        scores.update({f"hit_rate_at_{k}": hit_rate_at_k(ranked, relevance, k) for k in ks})
        results[qid] = scores
    return results


def retrieval_report(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, float]],
    ks: Sequence[int] = (1, 3, 5, 10, 100),
) -> dict[str, float]:
    """Macro averages of `per_query_retrieval` over the judged queries: `ndcg_at_10`, `mrr_at_10`,
    then `recall_at_{k}` and `hit_rate_at_{k}` for each k. Every value is 0.0 when no query is judged."""
    per_query = per_query_retrieval(rankings, qrels, ks)
    names = ["ndcg_at_10", "mrr_at_10", *(f"recall_at_{k}" for k in ks), *(f"hit_rate_at_{k}" for k in ks)]
    return {name: mean([scores[name] for scores in per_query.values()]) for name in names}
