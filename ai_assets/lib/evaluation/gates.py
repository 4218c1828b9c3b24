"""When a quality number should stop a release: thresholds and regressions, as pure functions."""

from __future__ import annotations

from collections.abc import Mapping

# The defaults of RAG_THRESHOLDS; the deployment's thresholds come from the `evaluation` resource.
from ai_assets.lib.settings import DEFAULT_THRESHOLDS

# Metrics where lower is better; everything else is higher-is-better.
LOWER_IS_BETTER = frozenset({"answer_failures", "metric_errors"})

__all__ = [
    "DEFAULT_THRESHOLDS",
    "LOWER_IS_BETTER",
    "regressions",
    "threshold_failures",
]


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


def regressions(current: Mapping[str, float], previous: Mapping[str, float], tolerance: float) -> dict[str, str]:
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
