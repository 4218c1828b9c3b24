"""What a batch cost and how it went: pure summaries of output rows, for metadata and checks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ai_assets.lib.llm.items import OutputRow


@dataclass(frozen=True)
class ModelPrice:
    """US dollars per million tokens."""

    prompt_per_million: float
    completion_per_million: float


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def estimated_cost(rows: Sequence[OutputRow], prices: Mapping[str, ModelPrice]) -> tuple[float, list[str]]:
    """Dollars for the rows' tokens, and the models that had no price (counted as free)."""
    total, unpriced = 0.0, set()
    for row in rows:
        price = prices.get(row.model or "")
        if price is None:
            if row.prompt_tokens or row.completion_tokens:
                unpriced.add(row.model or "unknown")
            continue
        total += row.prompt_tokens * price.prompt_per_million / 1e6
        total += row.completion_tokens * price.completion_per_million / 1e6
    return total, sorted(unpriced)


@dataclass(frozen=True)
class CostEstimate:
    """What the rows cost as they were answered, and what all of them would cost in each mode."""

    paid: float  # sync rows at list price, Batch API rows with the discount
    all_sync: float
    all_batch_api: float
    unpriced: list[str]

    @property
    def saved(self) -> float:
        return self.all_sync - self.paid


def estimated_costs(rows: Sequence[OutputRow], prices: Mapping[str, ModelPrice], discount: float) -> CostEstimate:
    """`estimated_cost` for both modes: a row answered by a batch (`batch_id` set) costs `1 - discount` of
    the list price (the Batch API's published 50 % by default)."""
    if not 0 <= discount <= 1:
        raise ValueError(f"discount must be from 0 to 1, got {discount}")
    at_list, unpriced = estimated_cost(rows, prices)
    batched, _ = estimated_cost([r for r in rows if r.batch_id], prices)
    return CostEstimate(
        paid=at_list - batched * discount,
        all_sync=at_list,
        all_batch_api=at_list * (1 - discount),
        unpriced=unpriced,
    )


def error_rate(rows: Sequence[OutputRow]) -> float:
    return sum(1 for r in rows if not r.succeeded) / len(rows) if rows else 0.0


def preview_records(rows: Sequence[OutputRow], limit: int = 5) -> list[dict[str, str | int | None]]:
    """A few outputs and the first errors, as records a person can skim in the UI: `id`, `output`,
    `error`, `prompt_tokens`, `completion_tokens`, `attempts`."""
    shown = [r for r in rows if r.succeeded][:limit] + [r for r in rows if not r.succeeded][:limit]
    return [
        {
            "id": r.id,
            "output": r.output,
            "error": r.error,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "attempts": r.attempts,
        }
        for r in shown
    ]
