"""Training data: document-disjoint splits, hard-negative mining, and the checks before training."""

from __future__ import annotations

import pytest

from ai_assets.lib.evaluation.eval_set import load_beir
from ai_assets.lib.training.dataset import (
    TRAIN,
    VALIDATION,
    RankedChunk,
    TrainingDataError,
    check_splits,
    mine_negatives,
    split_by_document,
)
from ai_assets_tests.corpora import SCIFACT


def docs_by_split(relevant: dict[str, dict[str, float]], split_of: dict[str, str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {TRAIN: set(), VALIDATION: set()}
    for query, split in split_of.items():
        found[split] |= {doc for doc, grade in relevant[query].items() if grade > 0}
    return found


def test_queries_sharing_a_document_stay_together() -> None:
    relevant = {
        "q1": {"d1": 1.0},
        "q2": {"d1": 1.0, "d2": 1.0},  # joins q1 (d1) and q3 (d2) into one group
        "q3": {"d2": 1.0},
        **{f"q{i}": {f"d{i}": 1.0} for i in range(4, 40)},
        "q-unjudged": {"d1": 0.0},  # grade 0: not relevant, so not split at all
    }
    split_of = split_by_document(relevant, 0.25)
    assert "q-unjudged" not in split_of and len(split_of) == 39
    assert split_of["q1"] == split_of["q2"] == split_of["q3"]
    by_split = docs_by_split(relevant, split_of)
    assert by_split[TRAIN] and by_split[VALIDATION] and not by_split[TRAIN] & by_split[VALIDATION]
    # The same data, the same split; more data does not move what was already placed.
    assert split_by_document(relevant, 0.25) == split_of
    grown = split_by_document({**relevant, **{f"new{i}": {f"other{i}": 1.0} for i in range(50)}}, 0.25)
    assert {q: grown[q] for q in split_of} == split_of
    assert split_by_document(relevant, 0.25, salt="another seed") != split_of


def test_a_tiny_dataset_still_gets_both_splits() -> None:
    two = {"a": {"d1": 1.0}, "b": {"d2": 1.0}}
    for fraction in (0.01, 0.5, 0.99):
        assert sorted(split_by_document(two, fraction).values()) == [TRAIN, VALIDATION]


def test_a_split_that_cannot_be_made_is_refused_before_training() -> None:
    with pytest.raises(TrainingDataError, match="share relevant documents"):
        split_by_document({"a": {"d1": 1.0}, "b": {"d1": 2.0, "d2": 1.0}}, 0.2)
    with pytest.raises(TrainingDataError, match="share relevant documents"):
        split_by_document({}, 0.2)
    with pytest.raises(TrainingDataError, match="validation_fraction"):
        split_by_document({"a": {"d1": 1.0}, "b": {"d2": 1.0}}, 1.0)


def test_scifact_train_queries_split_without_a_shared_document() -> None:
    questions = load_beir(SCIFACT, split="train", doc_id_prefix="scifact#")
    relevant = {q.id: q.relevant for q in questions}
    split_of = split_by_document(relevant, 0.1)
    assert len(split_of) == len(questions) == 809
    by_split = docs_by_split(relevant, split_of)
    assert not by_split[TRAIN] & by_split[VALIDATION]
    share = sum(split == VALIDATION for split in split_of.values()) / len(split_of)
    assert 0.06 <= share <= 0.14, share


def test_hard_negatives_skip_the_positive_documents_the_top_ranks_and_near_ties() -> None:
    ranked = [
        RankedChunk("p1", "pos", 0.90),  # the positive itself
        RankedChunk("x1", "a", 0.89),  # skipped: top rank among the others
        RankedChunk("x2", "b", 0.80),  # skipped: top rank
        RankedChunk("p2", "pos", 0.79),  # another chunk of the positive's document: never a negative
        RankedChunk("x3", "c", 0.88),  # past the skipped ranks but within 5 % of the positive: skipped
        RankedChunk("x4", "d", 0.70),
        RankedChunk("x5", "e", 0.60),
        RankedChunk("x6", "f", 0.50),
    ]
    assert mine_negatives(ranked, {"pos"}, 0.90, count=2, skip_top=2) == ["x4", "x5"]
    assert mine_negatives(ranked, {"pos"}, 0.90, count=10, skip_top=0, relative_margin=0.0) == [
        "x1",
        "x2",
        "x3",
        "x4",
        "x5",
        "x6",
    ]
    assert mine_negatives(ranked, {"pos", "d"}, 0.90, count=5, skip_top=2) == ["x5", "x6"]
    assert mine_negatives(ranked[:2], {"pos"}, 0.90, count=3) == []
    with pytest.raises(TrainingDataError, match="relative_margin"):
        mine_negatives(ranked, {"pos"}, 0.9, count=1, relative_margin=1.5)


def test_too_little_to_train_or_nothing_to_validate_is_named() -> None:
    split_of = {"a": TRAIN, "b": TRAIN, "c": VALIDATION}
    assert check_splits(split_of, {"a": 2, "b": 1, "c": 1}, 3, "qrels/train.tsv") == {TRAIN: 3, VALIDATION: 1}
    with pytest.raises(TrainingDataError, match=r"qrels/train.tsv: 3 training pairs, fewer than the 10"):
        check_splits(split_of, {"a": 2, "b": 1, "c": 1}, 10, "qrels/train.tsv")
    with pytest.raises(TrainingDataError, match="validation split has no query with a positive chunk"):
        check_splits(split_of, {"a": 2, "b": 1}, 1, "golden.jsonl")
