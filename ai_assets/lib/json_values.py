"""Naming JSON values in error messages the way the person who wrote the file thinks of them."""

from __future__ import annotations

from collections.abc import Mapping


def json_type(value: object) -> str:
    """The JSON type name of a decoded value: null, boolean, number, string, array or object."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__
