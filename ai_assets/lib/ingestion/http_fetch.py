"""Fetch one http(s) URL: checked redirects, size and time limits, conditional requests.

The conditional-request cache (ETag / Last-Modified plus the extracted text)
lives here too, so a 304 answer can be served without the body.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
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

    ``http.timeout_s`` is one deadline for the whole fetch of ``url``:
    connecting, sending, the response headers of every redirect hop and the
    body. A server that trickles bytes cannot stretch it.

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
    deadline = _Deadline(time.monotonic() + http.timeout_s)
    current = url
    try:
        with httpx.Client(timeout=http.timeout_s, follow_redirects=False) as client:
            _bound_by_deadline(client, deadline)
            for _hop in range(http.max_redirects + 1):
                with client.stream("GET", current, headers=headers) as response:
                    if response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
                        current = str(_next_hop(response))
                        deadline.check(httpx.ConnectTimeout)
                        continue
                    return _finish_response(response, http, cached, deadline)
            raise FetchError(f"too many redirects (more than {http.max_redirects})")
    except httpx.TimeoutException:
        raise _timed_out(url, current, http.timeout_s) from None
    except httpx.ConnectError as error:
        raise FetchError(f"connection failed: {error}") from None
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        raise FetchError(f"request failed: {type(error).__name__}: {error}") from None


def _timed_out(url: str, current: str, timeout_s: float) -> FetchError:
    where = url if current == url else f"{url} (stalled at the redirect to {current})"
    return FetchError(
        f"timed out after {float(timeout_s)} s fetching {where}; the limit (HTTP_TIMEOUT_S) covers "
        "connecting, the headers of every redirect and the body"
    )


# ---------------------------------------------------------------------------
# One deadline for every socket operation of a fetch
# ---------------------------------------------------------------------------


class _Deadline:
    """A point in ``time.monotonic()`` after which no socket operation may start."""

    def __init__(self, at: float) -> None:
        self.at = at

    def check(self, timeout_error: type[Exception]) -> None:
        if time.monotonic() >= self.at:
            raise timeout_error("the fetch deadline has passed")

    def bound(self, timeout: float | None, timeout_error: type[Exception]) -> float:
        """The time one operation may block: its own timeout, cut to what is left."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise timeout_error("the fetch deadline has passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read and write ends by the fetch deadline.

    httpx's timeouts apply to each socket operation, so a server sending one
    header byte per second never trips a 10 s read timeout; cutting each
    operation's timeout to the time left makes the total bounded.
    """

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.bound(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.bound(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = self._deadline.bound(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bounded), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's blocking socket backend, with every stream bound by one deadline.

    Name resolution inside ``connect_tcp`` is the system resolver's, which
    cannot be interrupted without a thread; its own timeout bounds it.
    """

    def __init__(self, deadline: _Deadline) -> None:
        self._inner = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = self._deadline.bound(timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, bounded, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = self._deadline.bound(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, bounded, socket_options), self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _bound_by_deadline(client: httpx.Client, deadline: _Deadline) -> None:
    """Make every connection ``client`` opens (direct or through a proxy) obey ``deadline``.

    httpx offers no public hook for httpcore's network backend, so this sets
    the pools' backend attribute (httpx 0.28 / httpcore 1.0, pinned). If a new
    version moves it, fail loudly rather than silently lose the bound.
    """
    transports = [client._transport, *(t for t in client._mounts.values() if t is not None)]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        if not isinstance(pool, httpcore.ConnectionPool) or not hasattr(pool, "_network_backend"):
            raise RuntimeError(
                f"cannot bound HTTP fetches by a deadline with httpx {httpx.__version__} / httpcore "
                f"{httpcore.__version__}: {type(transport).__name__} has no httpcore connection pool "
                "with a network backend; pin the versions in pyproject.toml"
            )
        pool._network_backend = _DeadlineBackend(deadline)


def _next_hop(response: httpx.Response) -> httpx.URL:
    try:
        target = response.url.join(response.headers["location"])
    except httpx.InvalidURL as error:
        raise FetchError(f"redirect to an invalid URL: {error}") from None
    if target.scheme not in ("http", "https"):
        raise FetchError(
            f"redirect to an unsupported URL scheme {target.scheme!r} ({target}); only http and https are followed"
        )
    return target


def _finish_response(
    response: httpx.Response,
    http: HttpSettings,
    cached: dict[str, Any] | None,
    deadline: _Deadline,
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
        # Decoded bytes may come from a buffer without touching the socket.
        deadline.check(httpx.ReadTimeout)
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
