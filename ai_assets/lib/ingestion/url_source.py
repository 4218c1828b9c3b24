"""Read a URL source: fetch the page and turn it into exactly one document or problem."""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from ai_assets.lib.ingestion.documents import (
    Document,
    SourceProblem,
    SourceSpec,
    document_or_empty,
    make_document,
)
from ai_assets.lib.ingestion.html_text import html_to_text
from ai_assets.lib.ingestion.http_fetch import (
    FetchError,
    HttpSettings,
    NotModified,
    fetch,
    load_cache,
    write_json_atomically,
)
from ai_assets.lib.ingestion.text_formats import (
    decode_utf8,
    describe_decode_error,
    markdown_title_and_text,
    normalize_text,
)

__all__ = ["read_url"]

_MARKDOWN_CONTENT_TYPES = frozenset({"text/markdown", "text/x-markdown", "text/plain"})
_HTML_CONTENT_TYPES = frozenset({"text/html", "application/xhtml+xml"})


def read_url(spec: SourceSpec, *, http: HttpSettings, cache_dir: Path) -> Iterator[Document | SourceProblem]:
    url = spec.location

    def unavailable(message: str) -> SourceProblem:
        # A URL source is a single document, so both flags describe it.
        return SourceProblem(spec.name, url, message, doc_id=url, source_unavailable=True)

    cache_path = cache_dir / f"{hashlib.sha256(url.encode('utf-8')).hexdigest()}.json"
    cached = load_cache(cache_path, url)
    try:
        fetched = fetch(url, http, cached)
    except NotModified:
        assert cached is not None  # only sent conditionally when cached
        yield document_or_empty(spec, url, url, url, cached["title"], cached["text"])
        return
    except FetchError as error:
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
            raw_text = decode_utf8(fetched.body)
        else:
            raw_text = fetched.body.decode(codec.name)
    except UnicodeDecodeError as error:
        yield unavailable(describe_decode_error(error, charset, fetched.body))
        return

    fallback_title = _url_title(fetched.final_url)
    if mime in _HTML_CONTENT_TYPES:
        converted = html_to_text(raw_text)
        title, text = converted.title or fallback_title, normalize_text(converted.text)
    else:
        title, text = markdown_title_and_text(raw_text, fallback_title=fallback_title)

    if not text:
        yield unavailable("empty document")
        return
    yield make_document(spec, url, url, title, text)
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
        write_json_atomically(cache_path, cache_entry)
    except OSError as error:
        # The document itself is fine; only the next run loses its 304 shortcut.
        yield SourceProblem(spec.name, str(cache_path), f"could not write the HTTP cache: {error.strerror or error}")


def _url_title(url: str) -> str:
    """Fallback title for a page: its last path segment without extension, else the host."""
    parts = urlsplit(url)
    segment = PurePosixPath(parts.path).name
    return PurePosixPath(segment).stem if segment else (parts.hostname or url)
