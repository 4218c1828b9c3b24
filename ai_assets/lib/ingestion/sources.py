"""Read the configured document sources of the RAG ingestion pipeline.

This module is deliberately free of Dagster: it turns source specifications
(folders, single files, http(s) URLs) into a stream of :class:`Document` and
:class:`SourceProblem` values. The assets decide what to embed, what to delete
and what to report; this layer only promises three things:

* it never raises for bad input - every failure is a :class:`SourceProblem`;
* the output order and every ``doc_id`` / ``content_hash`` are deterministic,
  so re-reading an unchanged source yields identical values (the incremental
  indexer relies on that to skip unchanged documents);
* a problem says which previously indexed chunks must be *kept*
  (``doc_id`` for one document, ``source_unavailable`` for the whole source),
  so a transient failure never deletes good data from the index.

This module holds the entry points and the configuration parser; the reading
itself lives in :mod:`~ai_assets.lib.ingestion.local_files` (folders and files,
with :mod:`~ai_assets.lib.ingestion.jsonl_corpus` for JSONL corpora) and
:mod:`~ai_assets.lib.ingestion.url_source` (URLs, fetched by
:mod:`~ai_assets.lib.ingestion.http_fetch`). The value types come from
:mod:`~ai_assets.lib.ingestion.documents` and the text helpers from
:mod:`~ai_assets.lib.ingestion.text_formats`; all are re-exported here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from ai_assets.lib.ingestion.documents import Document, SourceProblem, SourceSpec
from ai_assets.lib.ingestion.http_fetch import HttpSettings
from ai_assets.lib.ingestion.local_files import (
    SUPPORTED_EXTENSIONS,
    LocalSettings,
    list_path_source,
    read_path_source,
)
from ai_assets.lib.ingestion.text_formats import content_hash as content_hash
from ai_assets.lib.ingestion.text_formats import normalize_text as normalize_text
from ai_assets.lib.ingestion.url_source import read_url

__all__ = [
    "Document",
    "HttpSettings",
    "LocalSettings",
    "SUPPORTED_EXTENSIONS",
    "SourceProblem",
    "SourceSpec",
    "iter_watched_files",
    "parse_source_specs",
    "read_source",
]


# ---------------------------------------------------------------------------
# Parsing the configuration
# ---------------------------------------------------------------------------


def parse_source_specs(entries: str | Sequence[str], *, setting: str = "AI_ASSETS_SOURCES") -> list[SourceSpec]:
    """Parse source entries into :class:`SourceSpec` values.

    ``entries`` is a comma- or newline-separated string, or a sequence of
    entries. Each entry is ``name=location`` or just ``location``. Blank
    entries are skipped; positions in error messages count the non-blank
    entries from 1. ``setting`` only names the configuration in messages.

    An ``=`` introduces a name only when the text before it contains no ``/``
    or ``\\``, so URLs with query strings and paths containing ``=`` stay
    locations.

    Raises:
        ValueError: no entries, an unsupported URL scheme, an empty name or
            location, or two entries with the same name.
    """
    raw = re.split(r"[,\n]", entries) if isinstance(entries, str) else list(entries)
    stripped = [entry.strip() for entry in raw]
    numbered = list(enumerate((entry for entry in stripped if entry), start=1))
    if not numbered:
        raise ValueError(f"{setting} is empty: configure at least one folder, file or URL")

    specs: list[SourceSpec] = []
    first_entry_by_name: dict[str, tuple[int, str]] = {}
    for position, entry in numbered:
        spec = _parse_entry(entry, position, setting)
        if spec.name in first_entry_by_name:
            first_position, first_entry = first_entry_by_name[spec.name]
            raise ValueError(
                f"{setting} entries {first_position} {first_entry!r} and {position} {entry!r} "
                f"both use the source name {spec.name!r}; give one of them an explicit "
                "name (name=location)"
            )
        first_entry_by_name[spec.name] = (position, entry)
        specs.append(spec)
    return specs


def _parse_entry(entry: str, position: int, setting: str) -> SourceSpec:
    def fail(reason: str) -> ValueError:
        return ValueError(f"{setting} entry {position} {entry!r}: {reason}")

    name: str | None = None
    location = entry
    head, sep, tail = entry.partition("=")
    if sep and "/" not in head and "\\" not in head:
        name, location = head.strip(), tail.strip()
        if not name:
            raise fail("the source name before '=' is empty")
        if "#" in name:
            raise fail("a source name must not contain '#' (it separates JSONL record ids)")
        if not location:
            raise fail("the location after '=' is empty")

    if "://" in location:
        scheme = location.split("://", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise fail("only http and https URLs are supported")
        if not urlsplit(location).netloc:
            raise fail("the URL has no host")
        return SourceSpec(name=name or location, location=location, kind="url")

    # abspath (not resolve) keeps the path the user wrote, symlinks included,
    # so uris stay recognisable in logs and the UI.
    path = os.path.abspath(os.path.expanduser(location))
    return SourceSpec(name=name or _default_path_name(path), location=path, kind="path")


def _default_path_name(path: str) -> str:
    # Decided from the extension, not from the filesystem, so the name (and so
    # every doc id) does not change when a missing path appears later.
    pure = PurePosixPath(path.replace(os.sep, "/"))
    if pure.suffix.lower() in SUPPORTED_EXTENSIONS:
        return pure.stem
    return pure.name or path


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def read_source(
    spec: SourceSpec, *, http: HttpSettings, cache_dir: Path, local: LocalSettings | None = None
) -> Iterator[Document | SourceProblem]:
    """Yield the documents of one source and the problems met reading it.

    Path sources yield documents in sorted relative-path order (JSONL records
    in line order); a URL source yields exactly one document or one problem
    (``source_unavailable=True``). ``local`` limits path sources (defaults:
    :class:`LocalSettings`). Never raises for bad input.
    """
    if spec.kind == "url":
        yield from read_url(spec, http=http, cache_dir=cache_dir)
    else:
        yield from read_path_source(spec, local)


def iter_watched_files(spec: SourceSpec, *, follow_external_symlinks: bool = False) -> Iterator[tuple[str, int, int]]:
    """Yield ``(relative path, size, mtime_ns)`` for every file ``read_source`` would read.

    Meant for a change sensor: sorted, nothing for URL sources and nothing (no
    error) for a missing path. A single-file source reports its file name.
    A file that vanishes between listing and ``stat`` is reported with
    ``-1`` size and mtime so the fingerprint still changes.
    """
    if spec.kind != "path":
        return
    for relative, _path, real in list_path_source(spec, follow_external_symlinks=follow_external_symlinks)[0]:
        try:
            stat = real.stat()
        except OSError:
            yield relative, -1, -1
        else:
            yield relative, stat.st_size, stat.st_mtime_ns
