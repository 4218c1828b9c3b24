"""Read a BEIR-style JSONL corpus file into one document per record."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ai_assets.lib.ingestion.documents import Document, SourceProblem, SourceSpec, document_or_empty
from ai_assets.lib.ingestion.text_formats import (
    UTF8_BOM,
    describe_decode_error,
    normalize_text,
    normalize_title,
)
from ai_assets.lib.json_values import json_type

__all__ = ["read_jsonl"]


def read_jsonl(
    spec: SourceSpec, path: Path, base_id: str, handle: BinaryIO, *, max_record_bytes: int
) -> Iterator[Document | SourceProblem]:
    """Read a BEIR-style corpus file: one ``{"_id", "title", "text"}`` object per line.

    ``handle`` is read one line at a time, so memory holds one record however
    large the corpus; a record over ``max_record_bytes`` is reported (keeping
    its indexed chunks when its ``_id`` can be found) and skipped unread.
    """
    first_line_of: dict[str, int] = {}
    saw_content = False
    for line_number, (raw_line, cut_size) in enumerate(_lines(handle, max_record_bytes), start=1):
        if line_number == 1 and raw_line.startswith(UTF8_BOM):
            raw_line = raw_line[len(UTF8_BOM) :]
            cut_size = None if cut_size is None else cut_size - len(UTF8_BOM)
        raw_line = raw_line.rstrip(b"\r")
        if not raw_line.strip():
            continue
        size = len(raw_line) if cut_size is None else cut_size
        saw_content = True
        location = f"{path}:{line_number}"

        def problem(message: str, record_id: str | None = None, location: str = location) -> SourceProblem:
            doc_id = f"{base_id}#{record_id}" if record_id is not None else None
            return SourceProblem(spec.name, location, message, doc_id=doc_id)

        if size > max_record_bytes:
            record_id = _salvage_id(raw_line)
            kept = (
                "its indexed chunks are kept"
                if record_id is not None
                else ("no '_id' found in its first bytes, so any chunks it had are removed")
            )
            yield problem(
                f"record too large: {size} bytes, over the {max_record_bytes}-byte limit for one "
                f"document (max_file_bytes, env LOCAL_MAX_FILE_BYTES, applies per JSONL record); "
                f"not read, {kept}",
                record_id,
            )
            continue
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


def _lines(handle: BinaryIO, limit: int) -> Iterator[tuple[bytes, int | None]]:
    """Yield ``(line, cut_size)`` per line, without its ``\\n``.

    A line that cannot hold a record of at most ``limit`` bytes (even with a
    BOM and a ``\\r`` around it) is cut to its first bytes, enough to find
    its ``_id``, and comes with its full size; the rest is read in blocks and
    dropped, so memory never holds more than one record within the limit.
    Other lines come whole, with ``cut_size`` None.
    """
    cap = limit + len(UTF8_BOM) + 2  # a record of exactly `limit` bytes, a BOM and "\r\n"
    while True:
        line = handle.readline(cap)
        if not line:
            return
        if line.endswith(b"\n"):
            yield line[:-1], None
        elif len(line) < cap:
            yield line, None  # the last line, without a line end
        else:
            size, last = len(line), line[-1:]
            while rest := handle.readline(1 << 20):
                ended = rest.endswith(b"\n")
                if ended:
                    rest = rest[:-1]
                size, last = size + len(rest), rest[-1:] or last
                if ended:
                    break
            yield line, size - (last == b"\r")  # the size of the record, not of its "\r\n"


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
