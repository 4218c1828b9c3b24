"""Read a BEIR-style JSONL corpus file into one document per record."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ai_assets.ingestion.documents import Document, SourceProblem, SourceSpec, document_or_empty
from ai_assets.ingestion.text_formats import (
    UTF8_BOM,
    describe_decode_error,
    normalize_text,
    normalize_title,
)
from ai_assets.json_values import json_type

__all__ = ["read_jsonl"]


def read_jsonl(
    spec: SourceSpec, path: Path, base_id: str, data: bytes
) -> Iterator[Document | SourceProblem]:
    """Read a BEIR-style corpus file: one ``{"_id", "title", "text"}`` object per line."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    first_line_of: dict[str, int] = {}
    saw_content = False
    for line_number, raw_line in enumerate(data.split(b"\n"), start=1):
        raw_line = raw_line.rstrip(b"\r")
        if not raw_line.strip():
            continue
        saw_content = True
        location = f"{path}:{line_number}"

        def problem(message: str, record_id: str | None = None) -> SourceProblem:
            doc_id = f"{base_id}#{record_id}" if record_id is not None else None
            return SourceProblem(spec.name, location, message, doc_id=doc_id)

        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as error:
            yield problem(describe_decode_error(error, "UTF-8", raw_line), _salvage_id(raw_line))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            yield problem(f"invalid JSON: {error.msg} (column {error.colno})", _salvage_id(raw_line))
            continue
        if not isinstance(record, dict):
            yield problem(f"expected a JSON object, got {json_type(record)}")
            continue

        record_id, id_error = _record_id(record)
        if record_id is None:
            yield problem(id_error)
            continue
        if record_id in first_line_of:
            # The first occurrence is already indexed this run; no doc_id here,
            # because keeping "old chunks" would fight the fresh document.
            yield problem(f"duplicate _id {record_id!r} (first at line {first_line_of[record_id]})")
            continue
        first_line_of[record_id] = line_number

        body = record.get("text")
        if not isinstance(body, str):
            yield problem(f"missing or non-string 'text' field (got {json_type(body)})", record_id)
            continue
        record_title = record.get("title")
        if record_title is None:
            record_title = ""
        if not isinstance(record_title, str):
            yield problem(f"non-string 'title' field (got {json_type(record_title)})", record_id)
            continue

        record_title = normalize_title(record_title)
        text = normalize_text(f"{record_title} {body}" if record_title else body)
        yield document_or_empty(
            spec,
            f"{base_id}#{record_id}",
            f"{path}#{record_id}",
            location,
            record_title or record_id,
            text,
        )
    if not saw_content:
        # Not an error for the index (no ids to keep), but a silently empty
        # corpus file is almost always a broken export worth surfacing.
        yield SourceProblem(spec.name, str(path), "no records (empty JSONL file)")


def _record_id(record: dict[str, Any]) -> tuple[str | None, str]:
    """Return ``(id, "")`` or ``(None, reason)`` for a JSONL record's ``_id``."""
    if "_id" not in record:
        return None, "missing '_id' field"
    value = record["_id"]
    # bool is an int subclass, but true/false is certainly not an id.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None, f"'_id' must be a string or a number (got {json_type(value)})"
    if isinstance(value, float) and not math.isfinite(value):
        return None, f"'_id' must be a finite number (got {value})"
    record_id = value if isinstance(value, str) else str(value)
    if not record_id.strip():
        return None, "empty '_id' field"
    return record_id, ""


_ID_PATTERN = re.compile(rb'"_id"\s*:\s*(?:"((?:[^"\\]|\\.)*)"|(-?\d+))')


def _salvage_id(raw_line: bytes) -> str | None:
    """Best-effort ``_id`` of a line that is not valid JSON or UTF-8.

    Finding it lets the problem name the document, so a typo in one record
    keeps that record's old chunks instead of silently deleting them.
    """
    match = _ID_PATTERN.search(raw_line)
    if match is None:
        return None
    if match.group(2) is not None:
        return match.group(2).decode("ascii")
    try:
        value = json.loads(b'"' + match.group(1) + b'"')
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) and value.strip() else None

