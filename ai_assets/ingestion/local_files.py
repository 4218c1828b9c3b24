"""Read path sources: a folder tree or a single file of a supported type."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ai_assets.ingestion.documents import Document, SourceProblem, SourceSpec, document_or_empty
from ai_assets.ingestion.html_text import html_to_text
from ai_assets.ingestion.jsonl_corpus import read_jsonl
from ai_assets.ingestion.text_formats import (
    decode_utf8,
    describe_decode_error,
    markdown_title_and_text,
    normalize_text,
)

__all__ = ["SUPPORTED_EXTENSIONS", "list_path_source", "read_path_source"]

MARKDOWN_EXTENSIONS = frozenset({".md", ".markdown"})
TEXT_EXTENSIONS = frozenset({".txt"})
HTML_EXTENSIONS = frozenset({".html", ".htm"})
JSONL_EXTENSIONS = frozenset({".jsonl"})
SUPPORTED_EXTENSIONS = MARKDOWN_EXTENSIONS | TEXT_EXTENSIONS | HTML_EXTENSIONS | JSONL_EXTENSIONS


def read_path_source(spec: SourceSpec) -> Iterator[Document | SourceProblem]:
    root = Path(spec.location)
    if root.is_file() and root.suffix.lower() not in SUPPORTED_EXTENSIONS:
        supported = ", ".join(sorted(SUPPORTED_EXTENSIONS))
        yield SourceProblem(
            spec.name,
            spec.location,
            f"unsupported file type {root.suffix or '(none)'!r} (supported: {supported})",
            source_unavailable=True,
        )
        return
    files, listing_problems = list_path_source(spec)
    yield from listing_problems
    single_file = root.is_file()
    for relative, path in files:
        doc_id = spec.name if single_file else f"{spec.name}/{relative}"
        yield from _read_file(spec, path, doc_id)


def list_path_source(spec: SourceSpec) -> tuple[list[tuple[str, Path]], list[SourceProblem]]:
    """List ``(relative posix path, absolute path)`` of readable candidates, sorted.

    The listing is taken eagerly so a file deleted while documents are being
    read surfaces as a read problem (keeping its chunks) instead of changing
    the listing halfway.
    """
    root = Path(spec.location)
    try:
        if root.is_file():
            return [(root.name, root)], []
        if not root.is_dir():
            message = "no such file or folder" if not os.path.lexists(root) else (
                "not a regular file or folder"
            )
            return [], [SourceProblem(spec.name, spec.location, message, source_unavailable=True)]
    except OSError as error:
        return [], [_unavailable(spec, spec.location, error)]

    files: list[tuple[str, Path]] = []
    problems: list[SourceProblem] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as scan:
                entries = list(scan)
        except OSError as error:
            # Files under this folder would otherwise look deleted; claiming the
            # whole source unavailable keeps their chunks until it is readable.
            problems.append(_unavailable(spec, str(folder), error))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file() and Path(entry.name).suffix.lower() in SUPPORTED_EXTENSIONS:
                    path = Path(entry.path)
                    files.append((path.relative_to(root).as_posix(), path))
            except OSError:
                continue  # vanished or dangling while listing: treated as absent
    files.sort(key=lambda item: item[0])
    return files, problems


def _unavailable(spec: SourceSpec, location: str, error: OSError) -> SourceProblem:
    return SourceProblem(
        spec.name,
        location,
        f"cannot read: {error.strerror or error}",
        source_unavailable=True,
    )


def _read_file(spec: SourceSpec, path: Path, doc_id: str) -> Iterator[Document | SourceProblem]:
    suffix = path.suffix.lower()
    try:
        data = path.read_bytes()
    except OSError as error:
        if suffix in JSONL_EXTENSIONS:
            # The record ids inside are unknown, so only keeping the whole
            # source protects the records' chunks.
            yield _unavailable(spec, str(path), error)
        else:
            yield SourceProblem(
                spec.name, str(path), f"cannot read: {error.strerror or error}", doc_id=doc_id
            )
        return

    if suffix in JSONL_EXTENSIONS:
        yield from read_jsonl(spec, path, doc_id, data)
        return

    try:
        raw_text = decode_utf8(data)
    except UnicodeDecodeError as error:
        yield SourceProblem(spec.name, str(path), describe_decode_error(error, "UTF-8", data),
                            doc_id=doc_id)
        return

    if suffix in MARKDOWN_EXTENSIONS:
        title, text = markdown_title_and_text(raw_text, fallback_title=path.stem)
    elif suffix in HTML_EXTENSIONS:
        converted = html_to_text(raw_text)
        title, text = converted.title or path.stem, normalize_text(converted.text)
    else:
        title, text = path.stem, normalize_text(raw_text)
    yield document_or_empty(spec, doc_id, str(path), str(path), title, text)
