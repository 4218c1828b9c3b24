"""The deployment gate: what a fine-tuned model must score on the validation split to replace the
deployed one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Gate", "LlmGate", "exact_match", "gate_failures", "llm_gate_failures", "normalise_answer"]


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


# --- the LLM -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlmGate:
    min_exact_match: float  # the candidate's exact match on the validation split, at least this
    min_improvement: float  # ... and at least this much above the serving model's


def normalise_answer(text: str) -> str:
    """An answer as exact match compares it: case, surrounding whitespace and quotes, and trailing
    punctuation do not count ("Ingestion." is "ingestion"); inner whitespace is collapsed."""
    words = text.strip().strip("\"'`").strip().rstrip(".!;:,").split()
    return " ".join(words).lower()


def exact_match(predictions: list[str], references: list[str]) -> float:
    """The share of predictions equal to their reference after `normalise_answer`; 0.0 for none."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return 0.0
    hits = sum(normalise_answer(p) == normalise_answer(r) for p, r in zip(predictions, references, strict=True))
    return hits / len(references)


def llm_gate_failures(
    candidate_em: float,
    serving_em: float,
    candidate_loss: float,
    base_loss: float,
    gate: LlmGate,
    serving_name: str,
) -> list[str]:
    """Why the fine-tuned LLM must not be deployed (empty: it may be), each naming the setting it misses.

    Exact match is the candidate's and the serving model's (`serving_name`) on the validation split. The
    validation loss must also be below the base model's on the same split: a model that matches more
    labels while its loss rises has learnt the answers' format and lost the language, which the task
    metric alone would not show."""
    failures = []
    if candidate_em < gate.min_exact_match:
        failures.append(f"exact match {candidate_em:.4f} is below LLM_MIN_EXACT_MATCH {gate.min_exact_match}")
    if candidate_em - serving_em < gate.min_improvement:
        failures.append(
            f"exact match {candidate_em:.4f} is {candidate_em - serving_em:+.4f} against the serving model's "
            f"({serving_name}) {serving_em:.4f}, less than LLM_MIN_IMPROVEMENT {gate.min_improvement:+}"
        )
    if not candidate_loss < base_loss:
        failures.append(f"validation loss {candidate_loss:.4f} is not below the base model's {base_loss:.4f}")
    return failures
