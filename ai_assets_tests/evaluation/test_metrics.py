"""Metric maths against cases worked out by hand."""

import math

import pytest

from ai_assets.evaluation.metrics import dcg_at_k, ndcg_at_k, recall_at_k


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
