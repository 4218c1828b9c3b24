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
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import re
import tempfile
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from ai_assets.ingestion.html_text import html_to_text

__all__ = [
    "Document",
    "HttpSettings",
    "SUPPORTED_EXTENSIONS",
    "SourceProblem",
    "SourceSpec",
    "iter_watched_files",
    "parse_source_specs",
    "read_source",
]

MARKDOWN_EXTENSIONS = frozenset({".md", ".markdown"})
TEXT_EXTENSIONS = frozenset({".txt"})
HTML_EXTENSIONS = frozenset({".html", ".htm"})
JSONL_EXTENSIONS = frozenset({".jsonl"})
SUPPORTED_EXTENSIONS = MARKDOWN_EXTENSIONS | TEXT_EXTENSIONS | HTML_EXTENSIONS | JSONL_EXTENSIONS

_UTF8_BOM = codecs.BOM_UTF8
_MARKDOWN_CONTENT_TYPES = frozenset({"text/markdown", "text/x-markdown", "text/plain"})
_HTML_CONTENT_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


# ---------------------------------------------------------------------------
# Public data types
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    """One configured source.

    ``name`` is unique and prefixes every document id of the source;
    ``location`` is an absolute path (folder or single file) or an http(s) URL.
    """

    name: str
    location: str
    kind: Literal["path", "url"]


@dataclass(frozen=True)
class Document:
    """One readable document, ready to be chunked and embedded."""

    doc_id: str
    source: str
    uri: str
    title: str
    text: str
    content_hash: str


@dataclass(frozen=True)
class SourceProblem:
    """Something that could not be read.

    ``doc_id`` names a document whose previously indexed chunks must be kept;
    ``source_unavailable`` means the whole source could not be read, so every
    chunk of the source must be kept. With neither set, the problem only
    reports (e.g. a malformed JSONL line whose id is unknown).
    """

    source: str
    location: str
    message: str
    doc_id: str | None = None
    source_unavailable: bool = False


@dataclass(frozen=True)
class HttpSettings:
    """Limits for fetching URL sources."""

    timeout_s: float = 10.0
    max_bytes: int = 5_000_000
    max_redirects: int = 5
    user_agent: str = "ai_assets-ingestion/0.1"


# ---------------------------------------------------------------------------
# Parsing the configuration
# ---------------------------------------------------------------------------


def parse_source_specs(
    entries: str | Sequence[str], *, setting: str = "AI_ASSETS_SOURCES"
) -> list[SourceSpec]:
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
    spec: SourceSpec, *, http: HttpSettings, cache_dir: Path
) -> Iterator[Document | SourceProblem]:
    """Yield the documents of one source and the problems met reading it.

    Path sources yield documents in sorted relative-path order (JSONL records
    in line order); a URL source yields exactly one document or one problem
    (``source_unavailable=True``). Never raises for bad input.
    """
    if spec.kind == "url":
        yield from _read_url(spec, http=http, cache_dir=cache_dir)
    else:
        yield from _read_path_source(spec)


def iter_watched_files(spec: SourceSpec) -> Iterator[tuple[str, int, int]]:
    """Yield ``(relative path, size, mtime_ns)`` for every file ``read_source`` would read.

    Meant for a change sensor: sorted, nothing for URL sources and nothing (no
    error) for a missing path. A single-file source reports its file name.
    A file that vanishes between listing and ``stat`` is reported with
    ``-1`` size and mtime so the fingerprint still changes.
    """
    if spec.kind != "path":
        return
    for relative, path in _list_path_source(spec)[0]:
        try:
            stat = path.stat()
        except OSError:
            yield relative, -1, -1
        else:
            yield relative, stat.st_size, stat.st_mtime_ns


# -- path sources -----------------------------------------------------------


def _read_path_source(spec: SourceSpec) -> Iterator[Document | SourceProblem]:
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
    files, listing_problems = _list_path_source(spec)
    yield from listing_problems
    single_file = root.is_file()
    for relative, path in files:
        doc_id = spec.name if single_file else f"{spec.name}/{relative}"
        yield from _read_file(spec, path, doc_id)


def _list_path_source(spec: SourceSpec) -> tuple[list[tuple[str, Path]], list[SourceProblem]]:
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
        yield from _read_jsonl(spec, path, doc_id, data)
        return

    try:
        raw_text = _decode_utf8(data)
    except UnicodeDecodeError as error:
        yield SourceProblem(spec.name, str(path), _describe_decode_error(error, "UTF-8", data),
                            doc_id=doc_id)
        return

    if suffix in MARKDOWN_EXTENSIONS:
        title, text = _markdown_title_and_text(raw_text, fallback_title=path.stem)
    elif suffix in HTML_EXTENSIONS:
        converted = html_to_text(raw_text)
        title, text = converted.title or path.stem, normalize_text(converted.text)
    else:
        title, text = path.stem, normalize_text(raw_text)
    yield _document_or_empty(spec, doc_id, str(path), str(path), title, text)


def _read_jsonl(
    spec: SourceSpec, path: Path, base_id: str, data: bytes
) -> Iterator[Document | SourceProblem]:
    """Read a BEIR-style corpus file: one ``{"_id", "title", "text"}`` object per line."""
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
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
            yield problem(_describe_decode_error(error, "UTF-8", raw_line), _salvage_id(raw_line))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            yield problem(f"invalid JSON: {error.msg} (column {error.colno})", _salvage_id(raw_line))
            continue
        if not isinstance(record, dict):
            yield problem(f"expected a JSON object, got {_json_type(record)}")
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
            yield problem(f"missing or non-string 'text' field (got {_json_type(body)})", record_id)
            continue
        record_title = record.get("title")
        if record_title is None:
            record_title = ""
        if not isinstance(record_title, str):
            yield problem(f"non-string 'title' field (got {_json_type(record_title)})", record_id)
            continue

        record_title = _normalize_title(record_title)
        text = normalize_text(f"{record_title} {body}" if record_title else body)
        yield _document_or_empty(
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
        return None, f"'_id' must be a string or a number (got {_json_type(value)})"
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


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string",
            list: "array", dict: "object"}.get(type(value), type(value).__name__)


# -- URL sources ------------------------------------------------------------


@dataclass(frozen=True)
class _Fetched:
    """A successful 200 response body."""

    final_url: str
    content_type: str
    charset: str | None
    body: bytes
    etag: str | None
    last_modified: str | None


class _FetchError(Exception):
    """A failure to fetch, carrying the human readable message."""


class _NotModified(Exception):
    """The server answered 304: the cached copy is current."""


def _read_url(
    spec: SourceSpec, *, http: HttpSettings, cache_dir: Path
) -> Iterator[Document | SourceProblem]:
    url = spec.location

    def unavailable(message: str) -> SourceProblem:
        # A URL source is a single document, so both flags describe it.
        return SourceProblem(spec.name, url, message, doc_id=url, source_unavailable=True)

    cache_path = cache_dir / f"{hashlib.sha256(url.encode('utf-8')).hexdigest()}.json"
    cached = _load_cache(cache_path, url)
    try:
        fetched = _fetch(url, http, cached)
    except _NotModified:
        assert cached is not None  # only sent conditionally when cached
        yield _document_or_empty(spec, url, url, url, cached["title"], cached["text"])
        return
    except _FetchError as error:
        yield unavailable(str(error))
        return

    mime = fetched.content_type
    if mime not in _HTML_CONTENT_TYPES and mime not in _MARKDOWN_CONTENT_TYPES:
        yield unavailable(f"unsupported content type {mime or '(missing)'}")
        return
    charset = fetched.charset or "utf-8"
    try:
        codec = codecs.lookup(charset)
    except LookupError:
        yield unavailable(f"unknown charset {charset!r}")
        return
    try:
        if codec.name == "utf-8":
            raw_text = _decode_utf8(fetched.body)
        else:
            raw_text = fetched.body.decode(codec.name)
    except UnicodeDecodeError as error:
        yield unavailable(_describe_decode_error(error, charset, fetched.body))
        return

    fallback_title = _url_title(fetched.final_url)
    if mime in _HTML_CONTENT_TYPES:
        converted = html_to_text(raw_text)
        title, text = converted.title or fallback_title, normalize_text(converted.text)
    else:
        title, text = _markdown_title_and_text(raw_text, fallback_title=fallback_title)

    if not text:
        yield unavailable("empty document")
        return
    yield _document(spec, url, url, title, text)
    cache_entry = {
        "url": url,
        "final_url": fetched.final_url,
        "etag": fetched.etag,
        "last_modified": fetched.last_modified,
        "content_type": mime,
        "title": title,
        "text": text,
    }
    try:
        _write_json_atomically(cache_path, cache_entry)
    except OSError as error:
        # The document itself is fine; only the next run loses its 304 shortcut.
        yield SourceProblem(
            spec.name, str(cache_path), f"could not write the HTTP cache: {error.strerror or error}"
        )


def _fetch(url: str, http: HttpSettings, cached: dict[str, Any] | None) -> _Fetched:
    """GET ``url`` following redirects by hand, so that every hop is checked.

    Raises:
        _NotModified: on 304 with a cached copy.
        _FetchError: on any failure, with the message for the problem.
    """
    headers = {"User-Agent": http.user_agent, "Accept": "text/html, text/markdown, text/plain;q=0.9"}
    if cached is not None:
        if cached.get("etag"):
            headers["If-None-Match"] = cached["etag"]
        if cached.get("last_modified"):
            headers["If-Modified-Since"] = cached["last_modified"]
    # httpx timeouts apply per operation; the deadline bounds the whole fetch,
    # so a server trickling bytes cannot hold a run hostage.
    deadline = time.monotonic() + http.timeout_s
    timed_out = _FetchError(f"timed out after {float(http.timeout_s)} s")
    try:
        with httpx.Client(timeout=http.timeout_s, follow_redirects=False) as client:
            current = httpx.URL(url)
            for _hop in range(http.max_redirects + 1):
                with client.stream("GET", current, headers=headers) as response:
                    if response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
                        current = _next_hop(response)
                        if time.monotonic() > deadline:
                            raise timed_out
                        continue
                    return _finish_response(response, http, cached, deadline, timed_out)
            raise _FetchError(f"too many redirects (more than {http.max_redirects})")
    except httpx.TimeoutException:
        raise timed_out from None
    except httpx.ConnectError as error:
        raise _FetchError(f"connection failed: {error}") from None
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        raise _FetchError(f"request failed: {type(error).__name__}: {error}") from None


def _next_hop(response: httpx.Response) -> httpx.URL:
    try:
        target = response.url.join(response.headers["location"])
    except httpx.InvalidURL as error:
        raise _FetchError(f"redirect to an invalid URL: {error}") from None
    if target.scheme not in ("http", "https"):
        raise _FetchError(
            f"redirect to an unsupported URL scheme {target.scheme!r} ({target}); "
            "only http and https are followed"
        )
    return target


def _finish_response(
    response: httpx.Response,
    http: HttpSettings,
    cached: dict[str, Any] | None,
    deadline: float,
    timed_out: _FetchError,
) -> _Fetched:
    if response.status_code == 304:
        if cached is None:
            raise _FetchError("HTTP 304 Not Modified, but there is no cached copy")
        raise _NotModified
    if response.status_code != 200:
        raise _FetchError(f"HTTP {response.status_code} {response.reason_phrase}".rstrip())

    too_large = _FetchError(f"larger than the {http.max_bytes}-byte limit")
    declared = response.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > http.max_bytes:
        raise too_large
    chunks: list[bytes] = []
    received = 0
    # iter_bytes yields decoded bytes, so the limit also caps decompression.
    for chunk in response.iter_bytes():
        received += len(chunk)
        if received > http.max_bytes:
            raise too_large
        if time.monotonic() > deadline:
            raise timed_out
        chunks.append(chunk)

    mime, charset = _parse_content_type(response.headers.get("content-type", ""))
    return _Fetched(
        final_url=str(response.url),
        content_type=mime,
        charset=charset,
        body=b"".join(chunks),
        etag=response.headers.get("etag"),
        last_modified=response.headers.get("last-modified"),
    )


def _parse_content_type(value: str) -> tuple[str, str | None]:
    """Split ``text/html; charset=ISO-8859-1`` into ``("text/html", "ISO-8859-1")``."""
    mime, *params = value.split(";")
    charset = None
    for param in params:
        key, _, param_value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = param_value.strip().strip('"').strip("'") or None
    return mime.strip().lower(), charset


def _url_title(url: str) -> str:
    """Fallback title for a page: its last path segment without extension, else the host."""
    parts = urlsplit(url)
    segment = PurePosixPath(parts.path).name
    return PurePosixPath(segment).stem if segment else (parts.hostname or url)


def _load_cache(cache_path: Path, url: str) -> dict[str, Any] | None:
    """Return the cache entry for ``url``, or ``None`` if absent or unusable.

    A damaged entry is ignored rather than reported: the only cost is one
    unconditional download, which then rewrites the entry.
    """
    try:
        entry = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("url") != url:
        return None
    if not isinstance(entry.get("title"), str) or not isinstance(entry.get("text"), str):
        return None
    if not (entry.get("etag") or entry.get("last_modified")):
        return None  # nothing to validate against
    return entry


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    # tmp + os.replace: a crash mid-write must never leave a truncated entry
    # that a later run would trust.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, ensure_ascii=False, sort_keys=True)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise


# -- text helpers -----------------------------------------------------------


def normalize_text(text: str) -> str:
    """NFC, ``\\n`` line ends, no trailing spaces, no leading/trailing blank lines.

    Applied to every document so that cosmetic differences (an editor's line
    endings or trailing spaces) do not change content hashes.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    start = 0
    while start < len(lines) and not lines[start]:
        start += 1
    end = len(lines)
    while end > start and not lines[end - 1]:
        end -= 1
    return "\n".join(lines[start:end])


def _normalize_title(title: str) -> str:
    return " ".join(unicodedata.normalize("NFC", title).split())


def content_hash(title: str, text: str) -> str:
    """sha256 hex of ``title + "\\x00" + text`` (the NUL keeps the fields apart)."""
    return hashlib.sha256(f"{title}\x00{text}".encode("utf-8")).hexdigest()


def _decode_utf8(data: bytes) -> str:
    """Strict UTF-8 with an optional BOM; error offsets stay relative to ``data``."""
    if data.startswith(_UTF8_BOM):
        try:
            return data[len(_UTF8_BOM):].decode("utf-8")
        except UnicodeDecodeError as error:
            raise UnicodeDecodeError(
                error.encoding, data, error.start + len(_UTF8_BOM), error.end + len(_UTF8_BOM),
                error.reason,
            ) from None
    return data.decode("utf-8")


def _describe_decode_error(error: UnicodeDecodeError, encoding: str, data: bytes) -> str:
    offset = error.start
    byte = data[offset] if offset < len(data) else None
    what = f"byte 0x{byte:02x}" if byte is not None else "truncated sequence"
    return f"not valid {encoding} ({what} at offset {offset})"


_FRONT_MATTER_END = re.compile(r"^(?:---|\.\.\.)[ \t]*$")
_FRONT_MATTER_TITLE = re.compile(r"^title:[ \t]*(.*?)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX_H1 = re.compile(r"^ {0,3}#(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")


def _markdown_title_and_text(raw: str, *, fallback_title: str) -> tuple[str, str]:
    """Strip YAML front matter; title = front matter ``title:``, else first ``# `` heading."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    front_title, text = _split_front_matter(text)
    text = normalize_text(text)
    title = front_title or _first_h1(text) or fallback_title
    return _normalize_title(title) or fallback_title, text


def _split_front_matter(text: str) -> tuple[str | None, str]:
    lines = text.split("\n")
    if not lines or lines[0].rstrip() != "---":
        return None, text
    for index in range(1, len(lines)):
        if _FRONT_MATTER_END.match(lines[index]):
            title = None
            for line in lines[1:index]:
                match = _FRONT_MATTER_TITLE.match(line)
                if match:
                    title = _unquote_yaml_scalar(match.group(1))
                    break
            return title, "\n".join(lines[index + 1:])
    return None, text  # an unterminated block is ordinary Markdown (a rule line)


def _unquote_yaml_scalar(value: str) -> str | None:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    elif value.startswith(("|", ">")):
        return None  # block scalars are not worth a YAML parser; fall back
    else:
        value = value.split(" #", 1)[0]  # plain scalars may carry a comment
    return value.strip() or None


def _first_h1(text: str) -> str | None:
    fence: str | None = None
    for line in text.split("\n"):
        fence_match = _FENCE.match(line)
        if fence_match:
            marker = fence_match.group(1)
            # A "# comment" inside a shell snippet is not the page title.
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = None
            continue
        if fence is not None:
            continue
        match = _ATX_H1.match(line)
        if match and match.group(1) and match.group(1).strip():
            return match.group(1).strip()
    return None


def _document(spec: SourceSpec, doc_id: str, uri: str, title: str, text: str) -> Document:
    return Document(
        doc_id=doc_id,
        source=spec.name,
        uri=uri,
        title=title,
        text=text,
        content_hash=content_hash(title, text),
    )


def _document_or_empty(
    spec: SourceSpec, doc_id: str, uri: str, location: str, title: str, text: str
) -> Document | SourceProblem:
    if not text:
        return SourceProblem(spec.name, location, "empty document", doc_id=doc_id)
    return _document(spec, doc_id, uri, title, text)
