"""Threshold and regression gates, worked out by hand."""

import dagster as dg
import pytest

from ai_assets.lib.evaluation.gates import DEFAULT_THRESHOLDS, regressions, threshold_failures
from ai_assets.resources import EvaluationResource, setting_field


def test_threshold_failures_name_the_metric_and_the_gap() -> None:
    thresholds = {"ndcg_at_10": 0.5, "recall_at_10": 0.7, "mrr_at_10": 0.4}
    metrics = {"ndcg_at_10": 0.49, "recall_at_10": 0.7}
    assert threshold_failures(metrics, thresholds) == {"ndcg_at_10": "0.4900 < 0.5000", "mrr_at_10": "not measured"}
    assert threshold_failures({"ndcg_at_10": 0.5, "recall_at_10": 0.9, "mrr_at_10": 0.4}, thresholds) == {}


def test_regressions_respect_tolerance_and_direction() -> None:
    previous = {"ndcg_at_10": 0.70, "recall_at_10": 0.90, "answer_failures": 0.0, "gone": 1.0}
    current = {"ndcg_at_10": 0.675, "recall_at_10": 0.885, "answer_failures": 3.0}
    assert regressions(current, previous, tolerance=0.02) == {
        "ndcg_at_10": "0.7000 -> 0.6750",  # dropped 0.025 > 0.02
        "answer_failures": "0.0000 -> 3.0000",  # lower is better: 3 more failures
    }
    assert regressions(previous, previous, tolerance=0.0) == {}
    assert regressions({"ndcg_at_10": 0.9}, previous, tolerance=0.02) == {}  # improvements pass


def configured_thresholds() -> dict[str, float]:
    """The thresholds a run reads: the `evaluation` resource's field fed by RAG_THRESHOLDS, resolved
    from the environment now, as when a run starts."""
    resource = EvaluationResource(thresholds=setting_field("RAG_THRESHOLDS"))
    with resource.process_config_and_initialize_cm() as resolved:
        return resolved.threshold_map()


def test_thresholds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_THRESHOLDS", '{"ndcg_at_10": 0.6}')
    assert configured_thresholds() == {"ndcg_at_10": 0.6}
    monkeypatch.setenv("RAG_THRESHOLDS", "{not json")
    with pytest.raises(ValueError, match=r"RAG_THRESHOLDS='\{not json': not valid JSON"):
        configured_thresholds()
    monkeypatch.setenv("RAG_THRESHOLDS", '{"ndcg_at_10": "high"}')
    with pytest.raises(ValueError, match="metric -> number"):
        configured_thresholds()
    # The resource's own default (no environment at all) is the documented one.
    assert EvaluationResource().threshold_map() == DEFAULT_THRESHOLDS
    assert EvaluationResource().tolerance() == 0.02
    assert dg.EnvVar("RAG_THRESHOLDS") == setting_field("RAG_THRESHOLDS")
