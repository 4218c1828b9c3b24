"""One deadline bounds the whole fetch of a URL, against real servers on 127.0.0.1 that trickle bytes.

No test here measures wall-clock time: the server counts the bytes it managed to send one at a time
before the client hung up. A client bound by a deadline of `timeout_s` hangs up after at most about
`timeout_s / interval` of them; one that only bounds each socket read keeps reading for as long as the
server keeps trickling.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ai_assets.lib.ingestion.sources import Document, HttpSettings, SourceProblem, SourceSpec, read_source

INTERVAL_S = 0.2  # one byte per INTERVAL_S, as in the issue
TIMEOUT_S = 1.0
# Bytes that can reach the client before it gives up, plus the two sends the server needs after the
# hang-up to notice it (the first one only draws the client's reset), plus room for a busy machine.
BOUND = int(TIMEOUT_S / INTERVAL_S) + 2 + 3
# What the server has to trickle in all: far more than BOUND, so a client without one deadline for the
# whole fetch (it would read all of it) fails the bound clearly.
TRICKLED = 60

# (bytes sent at once, bytes trickled one per INTERVAL_S) for a request path
Responder = Callable[[str], tuple[bytes, bytes]]


class TrickleServer:
    """A raw HTTP/1.1 server: one connection at a time, one request each, the response trickled."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.trickled = 0  # trickled bytes the socket accepted, over every connection
        self.paths: list[str] = []
        self.hung_up = threading.Event()  # set when a send fails: the client closed the connection
        self.idle = threading.Event()  # set while no connection is being answered
        self.idle.set()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.idle.clear()
            try:
                with conn:
                    self._answer(conn)
            finally:
                self.idle.set()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        request = b""
        try:
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
        except OSError:
            return
        path = request.split(b" ", 2)[1].decode("ascii")
        self.paths.append(path)
        at_once, trickle = self.respond(path)
        try:
            conn.sendall(at_once)
            for byte in trickle:
                if self._stop.wait(INTERVAL_S):
                    return
                conn.sendall(bytes([byte]))
                self.trickled += 1
        except OSError:
            self.hung_up.set()


@pytest.fixture
def trickle_server() -> Iterator[Callable[[Responder], TrickleServer]]:
    servers: list[TrickleServer] = []

    def start(respond: Responder) -> TrickleServer:
        servers.append(TrickleServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _fetch_problem(url: str, tmp_path: Path, **http: object) -> SourceProblem:
    items = list(
        read_source(
            SourceSpec("web", url, "url"),
            http=HttpSettings(timeout_s=TIMEOUT_S, **http),  # type: ignore[arg-type]
            cache_dir=tmp_path / "cache",
        )
    )
    assert len(items) == 1 and isinstance(items[0], SourceProblem), items
    return items[0]


def _assert_bounded(server: TrickleServer, problem: SourceProblem, url: str) -> None:
    assert problem.message.startswith(f"timed out after {TIMEOUT_S} s fetching {url}"), problem.message
    assert "HTTP_TIMEOUT_S" in problem.message
    assert (problem.doc_id, problem.source_unavailable) == (url, True)
    # The client has returned and closed its sockets: the server notices within two more sends.
    assert server.idle.wait(30 * INTERVAL_S), "the server is still sending to a client that gave up"
    assert server.trickled <= BOUND, f"the server trickled {server.trickled} bytes before the hang-up"


_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"


def test_headers_trickled_a_byte_at_a_time_hit_the_deadline(
    trickle_server: Callable[[Responder], TrickleServer], tmp_path: Path
) -> None:
    # Every byte arrives well within the per-read timeout, so only a deadline over the whole fetch ends it.
    headers = _HEAD + b"X-Padding: " + b"p" * TRICKLED + b"\r\nContent-Length: 2\r\n\r\nok"
    server = trickle_server(lambda path: (b"", headers))
    url = f"{server.base}/doc.txt"
    _assert_bounded(server, _fetch_problem(url, tmp_path), url)
    assert server.hung_up.is_set()  # it gave up in the middle of the headers
    assert server.paths == ["/doc.txt"]


def test_body_trickled_a_byte_at_a_time_hits_the_deadline(
    trickle_server: Callable[[Responder], TrickleServer], tmp_path: Path
) -> None:
    head = _HEAD + f"Content-Length: {TRICKLED}\r\n\r\n".encode()
    server = trickle_server(lambda path: (head, b"b" * TRICKLED))
    url = f"{server.base}/doc.txt"
    _assert_bounded(server, _fetch_problem(url, tmp_path), url)
    assert server.hung_up.is_set()


def test_one_deadline_spans_every_redirect_hop(
    trickle_server: Callable[[Responder], TrickleServer], tmp_path: Path
) -> None:
    # Each hop alone ends well within the timeout (two trickled bytes); the chain of them does not.
    def respond(path: str) -> tuple[bytes, bytes]:
        hop = int(path.rsplit("/", 1)[1])
        head = (
            f"HTTP/1.1 302 Found\r\nLocation: /hop/{hop + 1}\r\nContent-Length: 0\r\nConnection: close\r\n"
        ).encode()
        return head, b"\r\n"

    server = trickle_server(respond)
    url = f"{server.base}/hop/0"
    problem = _fetch_problem(url, tmp_path, max_redirects=50)
    assert problem.message.startswith(f"timed out after {TIMEOUT_S} s fetching {url} (stalled at the redirect to ")
    _assert_bounded(server, problem, url)
    assert len(server.paths) <= BOUND // 2 + 2, server.paths


def test_a_proxy_from_the_environment_is_bound_by_the_deadline_too(
    trickle_server: Callable[[Responder], TrickleServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = _HEAD + b"X-Padding: " + b"p" * TRICKLED + b"\r\nContent-Length: 2\r\n\r\nok"
    proxy = trickle_server(lambda path: (b"", headers))
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.base)
    monkeypatch.setenv("http_proxy", proxy.base)
    url = "http://docs.example.invalid/guide.txt"
    _assert_bounded(proxy, _fetch_problem(url, tmp_path), url)
    assert proxy.paths == [url]  # the request went through the proxy


def test_a_prompt_server_is_read_whole_through_the_deadline(
    trickle_server: Callable[[Responder], TrickleServer], tmp_path: Path
) -> None:
    body = b"# Guide\n\nServed at once."
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/markdown\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode()
    server = trickle_server(lambda path: (head + body, b""))
    url = f"{server.base}/guide.md"
    (doc,) = read_source(SourceSpec("web", url, "url"), http=HttpSettings(timeout_s=TIMEOUT_S), cache_dir=tmp_path)
    assert isinstance(doc, Document) and doc.text == "# Guide\n\nServed at once."
    assert server.trickled == 0
