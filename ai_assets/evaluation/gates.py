"""When a quality number should stop a release: thresholds and regressions, as pure functions."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

# Metrics where lower is better; everything else is higher-is-better.
LOWER_IS_BETTER = frozenset({"answer_failures", "metric_errors"})

DEFAULT_THRESHOLDS = {"ndcg_at_10": 0.5, "recall_at_10": 0.7, "mrr_at_10": 0.45, "hit_rate_at_5": 0.7}


def configured_thresholds() -> dict[str, float]:
    """`RAG_THRESHOLDS` (a JSON object of metric -> minimum) replaces the defaults when set."""
    raw = os.environ.get("RAG_THRESHOLDS")
    if not raw:
        return dict(DEFAULT_THRESHOLDS)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"RAG_THRESHOLDS is not valid JSON: {err}") from err
    if not isinstance(value, dict) or not all(isinstance(v, (int, float)) for v in value.values()):
        raise ValueError('RAG_THRESHOLDS must be a JSON object of metric -> number, e.g. {"ndcg_at_10": 0.6}')
    return {str(k): float(v) for k, v in value.items()}


def threshold_failures(metrics: Mapping[str, float], thresholds: Mapping[str, float]) -> dict[str, str]:
    """Each thresholded metric that is below its minimum, or missing, with a reason."""
    failures = {}
    for name, minimum in thresholds.items():
        value = metrics.get(name)
        if value is None:
            failures[name] = "not measured"
        elif value < minimum:
            failures[name] = f"{value:.4f} < {minimum:.4f}"
    return failures


def regressions(
    current: Mapping[str, float], previous: Mapping[str, float], tolerance: float
) -> dict[str, str]:
    """Metrics that got worse than the previous run by more than `tolerance` (absolute)."""
    worse = {}
    for name, before in previous.items():
        now = current.get(name)
        if now is None:
            continue
        drop = (now - before) if name in LOWER_IS_BETTER else (before - now)
        if drop > tolerance:
            worse[name] = f"{before:.4f} -> {now:.4f}"
    return worse
