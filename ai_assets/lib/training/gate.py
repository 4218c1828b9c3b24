"""The deployment gate: what a fine-tuned model must score on the validation split to replace the
deployed one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Gate", "gate_failures"]


@dataclass(frozen=True)
class Gate:
    min_accuracy: float  # accuracy@k (hit rate at k) at least this
    accuracy_k: int
    min_improvement: float  # nDCG@10 at least this much above the deployed model's


def gate_failures(candidate: Mapping[str, float], deployed: Mapping[str, float], gate: Gate) -> list[str]:
    """Why the candidate must not be deployed (empty: it may be), each naming the setting it misses."""
    failures = []
    accuracy = candidate.get(f"hit_rate_at_{gate.accuracy_k}", 0.0)
    if accuracy < gate.min_accuracy:
        failures.append(f"accuracy@{gate.accuracy_k} {accuracy:.4f} is below TRAINING_MIN_ACCURACY {gate.min_accuracy}")
    ndcg, deployed_ndcg = candidate.get("ndcg_at_10", 0.0), deployed.get("ndcg_at_10", 0.0)
    if ndcg - deployed_ndcg < gate.min_improvement:
        failures.append(
            f"nDCG@10 {ndcg:.4f} is {ndcg - deployed_ndcg:+.4f} against the deployed model's {deployed_ndcg:.4f}, "
            f"less than TRAINING_MIN_IMPROVEMENT {gate.min_improvement:+}"
        )
    return failures
