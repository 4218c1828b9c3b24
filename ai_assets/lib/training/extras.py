"""The parameters a training script receives as Dagster Pipes extras, checked against its dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

__all__ = ["from_extras"]

P = TypeVar("P")


def from_extras(cls: type[P], extras: Mapping[str, Any]) -> P:
    """`cls(**extras)`, refusing a parameter the script does not know (a typo in a launcher would otherwise
    train with a default nobody chose) and naming the known ones."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(extras) - known)
    if unknown:
        raise ValueError(f"training parameters: unknown {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return cls(**extras)
