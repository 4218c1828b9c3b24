"""Fetch one http(s) URL: checked redirects, size and time limits, conditional requests.

The conditional-request cache (ETag / Last-Modified plus the extracted text)
lives here too, so a 304 answer can be served without the body.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "FetchError",
    "Fetched",
    "HttpSettings",
    "NotModified",
    "fetch",
    "load_cache",
    "write_json_atomically",
]

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class HttpSettings:
    """Limits for fetching URL sources."""

    timeout_s: float = 10.0
    max_bytes: int = 5_000_000
    max_redirects: int = 5
    user_agent: str = "ai_assets-ingestion/0.1"


@dataclass(frozen=True)
class Fetched:
    """A successful 200 response body."""

    final_url: str
    content_type: str
    charset: str | None
    body: bytes
    etag: str | None
    last_modified: str | None


class FetchError(Exception):
    """A failure to fetch, carrying the human readable message."""


class NotModified(Exception):
    """The server answered 304: the cached copy is current."""


def fetch(url: str, http: HttpSettings, cached: dict[str, Any] | None) -> Fetched:
    """GET ``url`` following redirects by hand, so that every hop is checked.

    Raises:
        NotModified: on 304 with a cached copy.
        FetchError: on any failure, with the message for the problem.
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
    timed_out = FetchError(f"timed out after {float(http.timeout_s)} s")
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
            raise FetchError(f"too many redirects (more than {http.max_redirects})")
    except httpx.TimeoutException:
        raise timed_out from None
    except httpx.ConnectError as error:
        raise FetchError(f"connection failed: {error}") from None
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        raise FetchError(f"request failed: {type(error).__name__}: {error}") from None


def _next_hop(response: httpx.Response) -> httpx.URL:
    try:
        target = response.url.join(response.headers["location"])
    except httpx.InvalidURL as error:
        raise FetchError(f"redirect to an invalid URL: {error}") from None
    if target.scheme not in ("http", "https"):
        raise FetchError(
            f"redirect to an unsupported URL scheme {target.scheme!r} ({target}); "
            "only http and https are followed"
        )
    return target


def _finish_response(
    response: httpx.Response,
    http: HttpSettings,
    cached: dict[str, Any] | None,
    deadline: float,
    timed_out: FetchError,
) -> Fetched:
    if response.status_code == 304:
        if cached is None:
            raise FetchError("HTTP 304 Not Modified, but there is no cached copy")
        raise NotModified
    if response.status_code != 200:
        raise FetchError(f"HTTP {response.status_code} {response.reason_phrase}".rstrip())

    too_large = FetchError(f"larger than the {http.max_bytes}-byte limit")
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
    return Fetched(
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

def load_cache(cache_path: Path, url: str) -> dict[str, Any] | None:
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


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
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
