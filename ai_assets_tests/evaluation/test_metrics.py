"""Metric maths against cases worked out by hand."""

import math

import pytest

from ai_assets.lib.evaluation.metrics import dcg_at_k, ndcg_at_k, recall_at_k


def test_dcg_uses_linear_gains_and_log2_discount() -> None:
    # 3/log2(2) + 2/log2(3) + 0 + 1/log2(5)
    assert dcg_at_k([3, 2, 0, 1], 10) == pytest.approx(3 + 2 / math.log2(3) + 1 / math.log2(5))
    assert dcg_at_k([3, 2, 0, 1], 1) == 3


def test_ndcg_perfect_worst_and_partial() -> None:
    rel = {"a": 1, "b": 1}
    assert ndcg_at_k(["a", "b", "c"], rel) == pytest.approx(1.0)
    assert ndcg_at_k(["c", "d"], rel) == 0.0
    # Relevant docs at ranks 2 and 3: (1/log2(3) + 1/log2(4)) / (1 + 1/log2(3))
    expected = (1 / math.log2(3) + 0.5) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(["x", "a", "b"], rel) == pytest.approx(expected)


def test_ndcg_cut_ignores_ranks_past_k_but_ideal_counts_all_judgements() -> None:
    rel = {f"d{i}": 1 for i in range(12)}
    ranked = [f"d{i}" for i in range(12)]
    assert ndcg_at_k(ranked, rel, k=10) == pytest.approx(1.0)
    # One relevant document, found at rank 11: outside the cut.
    assert ndcg_at_k([f"x{i}" for i in range(10)] + ["d0"], {"d0": 1}, k=10) == 0.0


def test_graded_relevance() -> None:
    rel = {"a": 2, "b": 1}
    # b then a: (1 + 2/log2(3)) / (2 + 1/log2(3))
    assert ndcg_at_k(["b", "a"], rel) == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))


def test_recall_at_k() -> None:
    rel = {"a": 1, "b": 1, "c": 0}
    assert recall_at_k(["a", "x", "b"], rel, 2) == 0.5
    assert recall_at_k(["a", "x", "b"], rel, 3) == 1.0
    assert recall_at_k(["c"], rel, 1) == 0.0


# --- MRR, hit rate and the report over queries -------------------------------------------------

from ai_assets.lib.evaluation.metrics import (  # noqa: E402
    hit_rate_at_k,
    mrr_at_k,
    per_query_retrieval,
    retrieval_report,
)


def test_mrr_is_the_reciprocal_rank_of_the_first_relevant_doc_within_k() -> None:
    rel = {"a": 1, "b": 2, "z": 0}
    assert mrr_at_k(["a", "b"], rel) == 1.0
    assert mrr_at_k(["x", "z", "b", "a"], rel) == pytest.approx(1 / 3)  # "z" is judged but not relevant
    assert mrr_at_k(["x", "y", "b"], rel, k=2) == 0.0
    assert mrr_at_k([f"x{i}" for i in range(10)] + ["a"], rel) == 0.0  # rank 11: outside MRR@10
    assert mrr_at_k([], rel) == 0.0


def test_hit_rate_at_k() -> None:
    rel = {"a": 1, "z": 0}
    assert hit_rate_at_k(["x", "a"], rel, 1) == 0.0
    assert hit_rate_at_k(["x", "a"], rel, 2) == 1.0
    assert hit_rate_at_k(["z", "x"], rel, 2) == 0.0
    # Two relevant docs found: still 1, where recall would be 1.0 only with both.
    assert hit_rate_at_k(["a", "b"], {"a": 1, "b": 1, "c": 1}, 2) == 1.0


def test_report_reproduces_the_guides_worked_examples() -> None:
    # evaluate-retrieval-with-ndcg-recall-mrr.md: first relevant at ranks 1 and 3, and none in the top 10,
    # give MRR@10 = (1 + 1/3 + 0) / 3 = 0.444.
    rankings = {
        "q1": ["r1", "x", "x2"],
        "q2": ["x", "y", "r2"],
        "q3": [f"n{i}" for i in range(10)] + ["r3"],
    }
    qrels = {"q1": {"r1": 1}, "q2": {"r2": 1}, "q3": {"r3": 1}}
    report = retrieval_report(rankings, qrels)
    assert report["mrr_at_10"] == pytest.approx(4 / 9)
    assert report["hit_rate_at_1"] == pytest.approx(1 / 3)
    assert report["hit_rate_at_3"] == pytest.approx(2 / 3)
    assert report["recall_at_100"] == 1.0  # q3's document is at rank 11
    # nDCG@10: 1, 1/log2(4) = 0.5, and 0.
    assert report["ndcg_at_10"] == pytest.approx((1 + 0.5 + 0) / 3)

    # Binary results [0, 1, 0, 1, 0] with 3 relevant items: nDCG ~ 0.498, recall@5 = 2/3, MRR = 0.5.
    one = retrieval_report({"q": ["n1", "a", "n2", "b", "n3"]}, {"q": {"a": 1, "b": 1, "c": 1}})
    assert one["ndcg_at_10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3) + 0.5))
    assert one["ndcg_at_10"] == pytest.approx(0.498, abs=5e-4)
    assert one["recall_at_5"] == pytest.approx(2 / 3)
    assert one["recall_at_3"] == pytest.approx(1 / 3)
    assert one["mrr_at_10"] == 0.5
    assert one["hit_rate_at_1"] == 0.0


def test_report_keys_follow_ks() -> None:
    report = retrieval_report({"q": ["a"]}, {"q": {"a": 1}}, ks=(2, 7))
    assert list(report) == ["ndcg_at_10", "mrr_at_10", "recall_at_2", "recall_at_7", "hit_rate_at_2", "hit_rate_at_7"]
    assert set(retrieval_report({}, {})) == {
        "ndcg_at_10",
        "mrr_at_10",
        *(f"{m}_at_{k}" for m in ("recall", "hit_rate") for k in (1, 3, 5, 10, 100)),
    }
    assert all(v == 0.0 for v in retrieval_report({}, {}).values())


def test_which_queries_count() -> None:
    rankings = {
        "found": ["a"],
        "unjudged": ["a"],  # no qrels: ignored
        "all_zero": ["z"],  # judged, but nothing relevant: excluded (trec_eval / BEIR)
    }
    qrels = {"found": {"a": 1}, "all_zero": {"z": 0}, "not_run": {"b": 1}}
    per_query = per_query_retrieval(rankings, qrels, ks=(1,))
    # A judged query without a ranking scores 0 rather than silently dropping out of the mean.
    assert per_query == {
        "found": {"ndcg_at_10": 1.0, "mrr_at_10": 1.0, "recall_at_1": 1.0, "hit_rate_at_1": 1.0},
        "not_run": {"ndcg_at_10": 0.0, "mrr_at_10": 0.0, "recall_at_1": 0.0, "hit_rate_at_1": 0.0},
    }
    assert retrieval_report(rankings, qrels, ks=(1,)) == {
        "ndcg_at_10": 0.5,
        "mrr_at_10": 0.5,
        "recall_at_1": 0.5,
        "hit_rate_at_1": 0.5,
    }


def test_report_uses_graded_relevance_for_ndcg_only() -> None:
    # Grade-2 doc at rank 2 behind a grade-1 doc: nDCG = (1 + 2/log2(3)) / (2 + 1/log2(3)); MRR and
    # hit rate treat both grades alike.
    per_query = per_query_retrieval({"q": ["low", "high"]}, {"q": {"high": 2, "low": 1}}, ks=(1,))
    assert per_query["q"]["ndcg_at_10"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    assert per_query["q"]["mrr_at_10"] == 1.0
    assert per_query["q"]["recall_at_1"] == 0.5
