"""Checks on each inference partition: complete, and within the tolerated error rate.

They are declared as the asset's `check_specs` and evaluated by the asset on the file it just wrote:
checks with their own partitions are still a preview API in Dagster 1.13.
"""

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from ai_assets.lib.inference.files import read_outputs
from ai_assets.lib.llm.report import error_rate

CHECK_SPECS = [
    dg.AssetCheckSpec(
        "one_output_per_input",
        asset="inference_outputs",
        blocking=True,
        description="Every valid input id has exactly one output row and there is no row for anything "
        "else: a consumer joining outputs back to inputs never loses or double-counts an item.",
    ),
    dg.AssetCheckSpec(
        "error_rate_within_threshold",
        asset="inference_outputs",
        description="At most INFERENCE_MAX_ERROR_RATE (default 1%) of the items ended in an error. Above "
        "it, the provider, the prompts or the limits need a look before anyone trusts the batch.",
    ),
]


def one_output_per_input(input_ids: Sequence[str], output_file: Path) -> dg.AssetCheckResult:
    counts = Counter(row.id for row in read_outputs(output_file))
    missing = [i for i in input_ids if i not in counts]
    duplicated = [i for i, n in counts.items() if n > 1]
    unexpected = sorted(set(counts) - set(input_ids))
    return dg.AssetCheckResult(
        check_name="one_output_per_input",
        passed=not (missing or duplicated or unexpected),
        metadata={
            "inputs": len(input_ids),
            "outputs": sum(counts.values()),
            "missing": len(missing),
            "duplicated": len(duplicated),
            "unexpected": len(unexpected),
            "examples": ", ".join((missing + duplicated + unexpected)[:5]) or "none",
        },
    )


def error_rate_within_threshold(output_file: Path, threshold: float) -> dg.AssetCheckResult:
    """`threshold`: the `inference` resource's tolerated error rate (INFERENCE_MAX_ERROR_RATE)."""
    rows = read_outputs(output_file)
    rate = error_rate(rows)
    errors = Counter((r.error or "").split(":")[0] for r in rows if not r.succeeded)
    return dg.AssetCheckResult(
        check_name="error_rate_within_threshold",
        passed=rate <= threshold,
        metadata={
            "error_rate": round(rate, 4),
            "threshold": threshold,
            "failed": sum(errors.values()),
            "items": len(rows),
            "errors_by_kind": ", ".join(f"{k}: {n}" for k, n in errors.most_common(5)) or "none",
        },
    )
