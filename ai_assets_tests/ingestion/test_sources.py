"""Tests for ai_assets.lib.ingestion.sources against real files and a real HTTP server."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ai_assets.lib.ingestion.html_text import html_to_text
from ai_assets.lib.ingestion.sources import (
    Document,
    HttpSettings,
    SourceProblem,
    SourceSpec,
    iter_watched_files,
    parse_source_specs,
    read_source,
)

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _path_spec(name: str, location: Path) -> SourceSpec:
    return SourceSpec(name=name, location=str(location), kind="path")


def _read(spec: SourceSpec, tmp_path: Path, http: HttpSettings | None = None) -> list[Document | SourceProblem]:
    return list(read_source(spec, http=http or HttpSettings(), cache_dir=tmp_path / "http-cache"))


def _docs(items: list[Document | SourceProblem]) -> list[Document]:
    return [item for item in items if isinstance(item, Document)]


def _problems(items: list[Document | SourceProblem]) -> list[SourceProblem]:
    return [item for item in items if isinstance(item, SourceProblem)]


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8"))
    return path


def _sha(title: str, text: str) -> str:
    return hashlib.sha256(f"{title}\x00{text}".encode()).hexdigest()


# ---------------------------------------------------------------------------
# parse_source_specs
# ---------------------------------------------------------------------------


def test_parse_specs_from_string_with_names_defaults_and_resolution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    specs = parse_source_specs(
        "handbook=./docs/handbook, notes/today.md\n"
        "~/corpus/scifact.jsonl,\n\n"
        "https://example.com/guide.md?lang=en , api=http://example.com/api"
    )
    assert specs == [
        SourceSpec("handbook", str(tmp_path / "docs" / "handbook"), "path"),
        SourceSpec("today", str(tmp_path / "notes" / "today.md"), "path"),
        SourceSpec("scifact", str(tmp_path / "home" / "corpus" / "scifact.jsonl"), "path"),
        SourceSpec("https://example.com/guide.md?lang=en", "https://example.com/guide.md?lang=en", "url"),
        SourceSpec("api", "http://example.com/api", "url"),
    ]


def test_parse_specs_from_list_keeps_folder_names_with_dots(tmp_path: Path) -> None:
    specs = parse_source_specs([str(tmp_path / "site.v2"), f"{tmp_path}/a/../b/", "  "])
    assert specs == [
        SourceSpec("site.v2", str(tmp_path / "site.v2"), "path"),
        SourceSpec("b", str(tmp_path / "b"), "path"),
    ]


def test_parse_specs_rejects_non_http_scheme_with_position() -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_source_specs("docs=/srv/docs, ftp://x")
    assert str(excinfo.value) == ("AI_ASSETS_SOURCES entry 2 'ftp://x': only http and https URLs are supported")


def test_parse_specs_rejects_duplicate_names_naming_both_entries() -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_source_specs(["/srv/a/docs", "/srv/other", "/srv/b/docs"])
    message = str(excinfo.value)
    assert "entries 1 '/srv/a/docs' and 3 '/srv/b/docs'" in message
    assert "'docs'" in message


@pytest.mark.parametrize("entries", ["", " , \n ", []])
def test_parse_specs_rejects_empty_configuration(entries: str | list[str]) -> None:
    with pytest.raises(ValueError, match="AI_ASSETS_SOURCES is empty"):
        parse_source_specs(entries)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("=/srv/docs", "source name before '=' is empty"),
        ("docs=", "location after '=' is empty"),
        ("a#b=/srv/docs", "must not contain '#'"),
        ("http://", "the URL has no host"),
    ],
)
def test_parse_specs_rejects_malformed_entries(entry: str, reason: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_source_specs([entry], setting="MY_SOURCES")
    assert str(excinfo.value).startswith(f"MY_SOURCES entry 1 {entry!r}: ")
    assert reason in str(excinfo.value)


# ---------------------------------------------------------------------------
# folder sources
# ---------------------------------------------------------------------------


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    _write(
        root / "guide.md",
        '---\ntitle: "Front Title"\ntags: [a, b]\n---\n\n# Heading\r\n\r\nBody text   \r\n\n\n',
    )
    _write(root / "notes.txt", "\n\n  indented cafe\u0301\r\nsecond line\t \n\n")
    _write(
        root / "page.html",
        "<html><head><title>Page Title</title><style>p{}</style></head>"
        "<body><h1>Big</h1><p>Hello <b>HTML</b></p></body></html>",
    )
    _write(
        root / "sub" / "deep" / "more.md",
        "Intro line\n\n```bash\n# not a title\n```\n\n## Sub\n\n# Real Title #\n\ntext\n",
    )
    _write(
        root / "corpus.jsonl",
        '{"_id": "d1", "title": "First", "text": "alpha"}\n\n{"_id": 7, "title": "", "text": "beta", "metadata": {}}\n',
    )
    # Everything below must be ignored.
    _write(root / "image.png", b"\x89PNG")
    _write(root / "README", "no extension")
    _write(root / ".hidden.md", "# hidden")
    _write(root / ".git" / "notes.md", "# in a hidden folder")
    _write(root / "sub" / ".cache" / "cached.md", "# cached")
    return root


def test_folder_source_reads_supported_files_in_sorted_order(corpus: Path, tmp_path: Path) -> None:
    items = _read(_path_spec("kb", corpus), tmp_path)
    assert _problems(items) == []
    docs = _docs(items)
    assert [doc.doc_id for doc in docs] == [
        "kb/corpus.jsonl#d1",
        "kb/corpus.jsonl#7",
        "kb/guide.md",
        "kb/notes.txt",
        "kb/page.html",
        "kb/sub/deep/more.md",
    ]
    by_id = {doc.doc_id: doc for doc in docs}

    first = by_id["kb/corpus.jsonl#d1"]
    assert (first.title, first.text, first.uri) == ("First", "First alpha", f"{corpus / 'corpus.jsonl'}#d1")
    numbered = by_id["kb/corpus.jsonl#7"]
    assert (numbered.title, numbered.text, numbered.uri) == ("7", "beta", f"{corpus / 'corpus.jsonl'}#7")

    guide = by_id["kb/guide.md"]
    assert guide.title == "Front Title"
    assert guide.text == "# Heading\n\nBody text"
    assert guide.uri == str(corpus / "guide.md")
    assert guide.source == "kb"

    notes = by_id["kb/notes.txt"]
    assert notes.title == "notes"
    assert notes.text == "  indented caf\u00e9\nsecond line"

    page = by_id["kb/page.html"]
    assert (page.title, page.text) == ("Page Title", "# Big\n\nHello HTML")

    more = by_id["kb/sub/deep/more.md"]
    assert more.title == "Real Title"  # not the commented line in the code fence
    assert more.text.startswith("Intro line\n\n```bash\n# not a title\n```")

    for doc in docs:
        assert doc.content_hash == _sha(doc.title, doc.text)


def test_markdown_and_html_title_fallbacks(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _write(root / "plain-notes.md", "just text, no heading\n")
    _write(root / "h1only.html", "<body><h1>  From   H1 </h1><p>x</p></body>")
    _write(root / "bare.htm", "<p>nothing else</p>")
    _write(root / "unclosed.md", "---\nnot front matter\n\n# Visible\n")
    docs = {doc.doc_id: doc for doc in _docs(_read(_path_spec("t", root), tmp_path))}
    assert docs["t/plain-notes.md"].title == "plain-notes"
    assert docs["t/h1only.html"].title == "From H1"
    assert docs["t/bare.htm"].title == "bare"
    assert docs["t/unclosed.md"].title == "Visible"
    assert docs["t/unclosed.md"].text == "---\nnot front matter\n\n# Visible"


def test_reading_twice_gives_identical_documents_and_hashes(corpus: Path, tmp_path: Path) -> None:
    spec = _path_spec("kb", corpus)
    assert _read(spec, tmp_path) == _read(spec, tmp_path)


def test_content_hash_tracks_content_not_cosmetics(tmp_path: Path) -> None:
    root = tmp_path / "h"
    path = _write(root / "a.md", "# Title\n\nSome text\n")
    spec = _path_spec("h", root)
    (original,) = _docs(_read(spec, tmp_path))

    _write(path, "\r\n# Title   \r\n\r\nSome text\r\n\r\n")  # CRLF, trailing spaces, blank edges
    (cosmetic,) = _docs(_read(spec, tmp_path))
    assert cosmetic == original

    _write(path, "# Title\n\nSome other text\n")
    (changed,) = _docs(_read(spec, tmp_path))
    assert changed.doc_id == original.doc_id
    assert changed.content_hash != original.content_hash
    assert changed.content_hash == _sha("Title", "# Title\n\nSome other text")


def test_undecodable_and_empty_files_are_problems_that_keep_their_doc(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    _write(root / "bad.md", b"# ok\n\xff rest")
    _write(root / "bom.txt", b"\xef\xbb\xbfok\xfe")
    _write(root / "empty.txt", b"  \r\n\n\t\n")
    _write(root / "good.txt", b"\xef\xbb\xbfwith BOM")
    _write(root / "blank.html", "<html><head><title>T</title></head><body><script>x()</script></body></html>")
    items = _read(_path_spec("bad", root), tmp_path)
    assert items == [
        SourceProblem("bad", str(root / "bad.md"), "not valid UTF-8 (byte 0xff at offset 5)", doc_id="bad/bad.md"),
        SourceProblem("bad", str(root / "blank.html"), "empty document", doc_id="bad/blank.html"),
        SourceProblem("bad", str(root / "bom.txt"), "not valid UTF-8 (byte 0xfe at offset 5)", doc_id="bad/bom.txt"),
        SourceProblem("bad", str(root / "empty.txt"), "empty document", doc_id="bad/empty.txt"),
        Document("bad/good.txt", "bad", str(root / "good.txt"), "good", "with BOM", _sha("good", "with BOM")),
    ]


def test_missing_folder_makes_the_source_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert _read(_path_spec("gone", missing), tmp_path) == [
        SourceProblem("gone", str(missing), "no such file or folder", source_unavailable=True)
    ]


def test_file_vanishing_during_the_read_keeps_its_doc(tmp_path: Path) -> None:
    root = tmp_path / "race"
    _write(root / "a.md", "# A\n")
    _write(root / "b.md", "# B\n")
    items = read_source(_path_spec("race", root), http=HttpSettings(), cache_dir=tmp_path)
    first = next(items)
    assert isinstance(first, Document) and first.doc_id == "race/a.md"
    (root / "b.md").unlink()
    rest = list(items)
    assert rest == [
        SourceProblem("race", str(root / "b.md"), "cannot read: No such file or directory", doc_id="race/b.md")
    ]


def _read_as_nobody(spec: SourceSpec, tmp_path: Path) -> list[Document | SourceProblem]:
    """Read in a forked child that dropped root: root reads files regardless of their permissions."""
    if os.geteuid() != 0:
        return _read(spec, tmp_path)
    import pickle

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            payload = pickle.dumps(_read(spec, tmp_path))
            with os.fdopen(write_end, "wb") as out:
                out.write(payload)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as incoming:
        data = incoming.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


def test_unreadable_file_and_folder() -> None:
    # Under /tmp with open permissions so an unprivileged reader can reach it.
    tmp_path = Path(tempfile.mkdtemp(prefix="perm-"))
    tmp_path.chmod(0o755)
    root = tmp_path / "perm"
    locked_file = _write(root / "locked.md", "# secret")
    _write(root / "open.md", "# open")
    locked_dir = root / "private"
    _write(locked_dir / "x.md", "# x")
    locked_file.chmod(0)
    locked_dir.chmod(0)
    try:
        items = _read_as_nobody(_path_spec("perm", root), tmp_path)
    finally:
        locked_file.chmod(0o644)
        locked_dir.chmod(0o755)
        shutil.rmtree(tmp_path)
    assert SourceProblem("perm", str(locked_file), "cannot read: Permission denied", doc_id="perm/locked.md") in items
    assert SourceProblem("perm", str(locked_dir), "cannot read: Permission denied", source_unavailable=True) in items
    assert [doc.doc_id for doc in _docs(items)] == ["perm/open.md"]


# ---------------------------------------------------------------------------
# JSONL
# ---------------------------------------------------------------------------


def test_jsonl_problems_are_reported_per_line_and_valid_lines_still_load(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "c" / "corpus.jsonl",
        b'{"_id": "a", "title": "A", "text": "first"}\n'
        b'{"_id": "d2" "text": "x"}\n'
        b"\n"
        b'{"title": "no id", "text": "t"}\n'
        b'{"_id": "b", "title": "B"}\n'
        b'{"_id": "a", "title": "A again", "text": "second"}\n'
        b'["not", "an", "object"]\n'
        b'{"_id": "u", "text": "caf\xff"}\n'
        b'{"_id": "e", "title": "", "text": "  "}\n'
        b'{"_id": "z", "text": "last"}\r\n',
    )
    items = _read(_path_spec("c", tmp_path / "c"), tmp_path)
    p = str(path)
    assert items == [
        Document("c/corpus.jsonl#a", "c", f"{p}#a", "A", "A first", _sha("A", "A first")),
        SourceProblem("c", f"{p}:2", "invalid JSON: Expecting ',' delimiter (column 14)", doc_id="c/corpus.jsonl#d2"),
        SourceProblem("c", f"{p}:4", "missing '_id' field"),
        SourceProblem("c", f"{p}:5", "missing or non-string 'text' field (got null)", doc_id="c/corpus.jsonl#b"),
        SourceProblem("c", f"{p}:6", "duplicate _id 'a' (first at line 1)"),
        SourceProblem("c", f"{p}:7", "expected a JSON object, got array"),
        SourceProblem("c", f"{p}:8", "not valid UTF-8 (byte 0xff at offset 25)", doc_id="c/corpus.jsonl#u"),
        SourceProblem("c", f"{p}:9", "empty document", doc_id="c/corpus.jsonl#e"),
        Document("c/corpus.jsonl#z", "c", f"{p}#z", "z", "last", _sha("z", "last")),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"_id": null, "text": "x"}', "'_id' must be a string or a number (got null)"),
        ('{"_id": true, "text": "x"}', "'_id' must be a string or a number (got boolean)"),
        ('{"_id": " ", "text": "x"}', "empty '_id' field"),
    ],
)
def test_jsonl_rejects_unusable_ids(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path / "ids.jsonl", line + "\n")
    assert _read(_path_spec("ids", path), tmp_path) == [SourceProblem("ids", f"{path}:1", message)]


def test_single_file_sources(tmp_path: Path) -> None:
    jsonl = _write(tmp_path / "scifact.jsonl", '{"_id": "4983", "title": "T", "text": "body"}\n')
    md = _write(tmp_path / ".hidden-but-named.md", "# Named\n\nexplicitly configured\n")
    html = _write(tmp_path / "one.html", "<title>One</title><p>only</p>")

    assert _read(_path_spec("scifact", jsonl), tmp_path) == [
        Document("scifact#4983", "scifact", f"{jsonl}#4983", "T", "T body", _sha("T", "T body"))
    ]
    (md_doc,) = _read(_path_spec("note", md), tmp_path)
    assert isinstance(md_doc, Document)
    assert (md_doc.doc_id, md_doc.uri, md_doc.title) == ("note", str(md), "Named")
    (html_doc,) = _read(_path_spec("one", html), tmp_path)
    assert isinstance(html_doc, Document)
    assert (html_doc.doc_id, html_doc.title, html_doc.text) == ("one", "One", "only")


def test_single_file_with_unsupported_extension_is_unavailable(tmp_path: Path) -> None:
    pdf = _write(tmp_path / "paper.pdf", b"%PDF")
    (problem,) = _read(_path_spec("paper", pdf), tmp_path)
    assert isinstance(problem, SourceProblem)
    assert problem.source_unavailable
    assert problem.message.startswith("unsupported file type '.pdf'")


def test_empty_jsonl_file_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.jsonl", "\n\n")
    assert _read(_path_spec("e", path), tmp_path) == [SourceProblem("e", str(path), "no records (empty JSONL file)")]


# ---------------------------------------------------------------------------
# iter_watched_files
# ---------------------------------------------------------------------------


def test_iter_watched_files_lists_what_read_source_reads(corpus: Path) -> None:
    spec = _path_spec("kb", corpus)
    watched = list(iter_watched_files(spec))
    relpaths = ["corpus.jsonl", "guide.md", "notes.txt", "page.html", "sub/deep/more.md"]
    assert watched == [(rel, (corpus / rel).stat().st_size, (corpus / rel).stat().st_mtime_ns) for rel in relpaths]

    _write(corpus / "guide.md", "# changed, and longer than before\n")
    os.utime(corpus / "guide.md", ns=(1, 1_000_000_000))
    changed = dict((rel, (size, mtime)) for rel, size, mtime in iter_watched_files(spec))
    assert changed["guide.md"] == (34, 1_000_000_000)


def test_iter_watched_files_single_file_url_and_missing(tmp_path: Path) -> None:
    one = _write(tmp_path / "one.md", "# one\n")
    assert list(iter_watched_files(_path_spec("one", one))) == [("one.md", 6, one.stat().st_mtime_ns)]
    assert list(iter_watched_files(_path_spec("gone", tmp_path / "missing"))) == []
    assert list(iter_watched_files(SourceSpec("u", "http://127.0.0.1:9/x.md", "url"))) == []


# ---------------------------------------------------------------------------
# HTML to text
# ---------------------------------------------------------------------------


def test_html_to_text_structure() -> None:
    result = html_to_text(
        "<!doctype html><html><head><meta charset=utf-8><title> My \n Page </title>"
        "<style>body{}</style><script>var x = '<p>no</p>';</script></head>"
        "<body><h1>Main &amp; title</h1><p>Hello   <b>world</b>,\n this is   text.</p>"
        "<div>line one<br>line two</div>"
        "<ul><li>alpha</li><li>beta<ul><li>nested</li></ul></li></ul>"
        "<h3>Section</h3><pre>\ndef f():\n    return  1\n</pre>"
        "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>"
        "<noscript>enable js</noscript><svg><title>icon</title><text>x</text></svg>"
        "<template><p>tpl</p></template><p>end&nbsp;here</p></body></html>"
    )
    assert result.title == "My Page"
    assert result.text == (
        "# Main & title\n\n"
        "Hello world, this is text.\n\n"
        "line one\nline two\n\n"
        "- alpha\n- beta\n  - nested\n\n"
        "### Section\n\n"
        "def f():\n    return  1\n\n"
        "a | b\n1 | 2\n\n"
        "end here"
    )


def test_html_to_text_title_falls_back_to_first_h1() -> None:
    assert html_to_text("<h2>second</h2><h1>First <i>one</i></h1><h1>other</h1>").title == "First one"
    assert html_to_text("<p>no title</p>").title is None


# ---------------------------------------------------------------------------
# URL sources against a real HTTP server
# ---------------------------------------------------------------------------


@dataclass
class _Resource:
    body: bytes
    content_type: str
    etag: str | None = None
    last_modified: str | None = None


@dataclass
class _ServerState:
    resources: dict[str, _Resource] = field(default_factory=dict)
    # (path, request headers, response status) per request
    log: list[tuple[str, dict[str, str], int]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up early (timeouts, size limits) is the point of some tests


class _Handler(BaseHTTPRequestHandler):
    server: _QuietServer
    state: _ServerState  # set on a per-test subclass

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.state.log.append((self.path, dict(self.headers), status))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        if path in self.state.resources:
            self._serve_resource(self.state.resources[path])
        elif path == "/slow":
            self.state.release.wait(1.0)
            self._reply(200, {"Content-Type": "text/plain", "Content-Length": "4"}, b"late")
        elif path == "/big-declared":
            # Headers promise a huge body that never comes: only a client that
            # trusts Content-Length fails fast instead of timing out.
            self._reply(200, {"Content-Type": "text/plain", "Content-Length": str(10**9)})
            self.wfile.flush()
            self.state.release.wait(2.0)
        elif path == "/big-stream":
            self._reply(200, {"Content-Type": "text/plain"})
            try:
                for _ in range(4):
                    self.wfile.write(b"x" * 16_384)
                    self.wfile.flush()
            except OSError:
                return
            # Then hang: a client that does not stop at its limit times out.
            self.state.release.wait(2.0)
        elif path == "/redirect-ftp":
            self._reply(302, {"Location": "ftp://127.0.0.1/doc.md", "Content-Length": "0"})
        elif path.startswith("/redirect/"):
            remaining = int(path.rsplit("/", 1)[1])
            target = f"/redirect/{remaining - 1}" if remaining else "/doc.md"
            self._reply(302, {"Location": target, "Content-Length": "0"})
        else:
            self._reply(404, {"Content-Type": "text/plain", "Content-Length": "9"}, b"not found")

    def _serve_resource(self, resource: _Resource) -> None:
        validators = {}
        if resource.etag:
            validators["ETag"] = resource.etag
        if resource.last_modified:
            validators["Last-Modified"] = resource.last_modified
        if_none_match = self.headers.get("If-None-Match")
        if_modified_since = self.headers.get("If-Modified-Since")
        if if_none_match is not None:
            not_modified = if_none_match == resource.etag
        else:
            not_modified = if_modified_since is not None and if_modified_since == resource.last_modified
        if not_modified:
            self._reply(304, validators)
            return
        headers = {
            "Content-Type": resource.content_type,
            "Content-Length": str(len(resource.body)),
            **validators,
        }
        self._reply(200, headers, resource.body)


@dataclass
class _Server:
    base: str
    state: _ServerState

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def server() -> Iterator[_Server]:
    state = _ServerState()
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield _Server(f"http://127.0.0.1:{httpd.server_address[1]}", state)
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


_MARKDOWN = "---\nauthor: me\n---\n# Remote Guide\n\nFetched over HTTP.\n"
_LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"


def _url_spec(url: str, name: str = "web") -> SourceSpec:
    return SourceSpec(name=name, location=url, kind="url")


def _only_problem(items: list[Document | SourceProblem]) -> SourceProblem:
    assert len(items) == 1, items
    (problem,) = items
    assert isinstance(problem, SourceProblem), problem
    return problem


def test_url_conditional_requests_use_the_cache(server: _Server, tmp_path: Path) -> None:
    server.state.resources["/doc.md"] = _Resource(
        _MARKDOWN.encode(), "text/markdown; charset=utf-8", etag='"v1"', last_modified=_LAST_MODIFIED
    )
    url = server.url("/doc.md")
    spec = _url_spec(url)
    cache_dir = tmp_path / "cache"

    first = list(read_source(spec, http=HttpSettings(), cache_dir=cache_dir))
    text = "# Remote Guide\n\nFetched over HTTP."
    expected = Document(url, "web", url, "Remote Guide", text, _sha("Remote Guide", text))
    assert first == [expected]
    cache_file = cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()}.json"
    cached = json.loads(cache_file.read_text())
    assert (cached["etag"], cached["last_modified"], cached["text"]) == ('"v1"', _LAST_MODIFIED, text)
    assert [name for name in os.listdir(cache_dir)] == [cache_file.name]  # no tmp left behind

    second = list(read_source(spec, http=HttpSettings(), cache_dir=cache_dir))
    assert second == [expected]
    (_, first_headers, first_status), (_, second_headers, second_status) = server.state.log
    assert "If-None-Match" not in first_headers and first_status == 200
    assert first_headers["User-Agent"] == "ai_assets-ingestion/0.1"
    assert second_headers["If-None-Match"] == '"v1"'
    assert second_headers["If-Modified-Since"] == _LAST_MODIFIED
    assert second_status == 304

    # A new version on the server replaces the cached one.
    server.state.resources["/doc.md"] = _Resource(b"# Remote Guide\n\nRewritten.\n", "text/markdown", etag='"v2"')
    (third,) = read_source(spec, http=HttpSettings(), cache_dir=cache_dir)
    assert isinstance(third, Document)
    assert third.text == "# Remote Guide\n\nRewritten."
    assert third.content_hash != expected.content_hash
    assert server.state.log[-1][2] == 200
    assert json.loads(cache_file.read_text())["etag"] == '"v2"'


def test_url_last_modified_only_revalidates_with_if_modified_since(server: _Server, tmp_path: Path) -> None:
    server.state.resources["/notes.txt"] = _Resource(b"plain notes\r\n", "text/plain", last_modified=_LAST_MODIFIED)
    spec = _url_spec(server.url("/notes.txt"))
    assert [doc.text for doc in _docs(_read(spec, tmp_path))] == ["plain notes"]
    (again,) = _docs(_read(spec, tmp_path))
    assert (again.title, again.text) == ("notes", "plain notes")
    _, headers, status = server.state.log[-1]
    assert headers["If-Modified-Since"] == _LAST_MODIFIED
    assert "If-None-Match" not in headers
    assert status == 304


def test_url_html_page_and_charset(server: _Server, tmp_path: Path) -> None:
    server.state.resources["/page.html"] = _Resource(
        "<html><head><title>Caf\u00e9 Page</title></head><body><h2>Menu</h2><p>cr\u00e8me</p></body></html>".encode(
            "latin-1"
        ),
        "text/html; charset=ISO-8859-1",
    )
    (doc,) = _read(_url_spec(server.url("/page.html")), tmp_path)
    assert isinstance(doc, Document)
    assert (doc.title, doc.text) == ("Caf\u00e9 Page", "## Menu\n\ncr\u00e8me")


def test_url_404_is_unavailable_and_not_cached(server: _Server, tmp_path: Path) -> None:
    url = server.url("/missing.md")
    problem = _only_problem(_read(_url_spec(url), tmp_path))
    assert problem == SourceProblem("web", url, "HTTP 404 Not Found", doc_id=url, source_unavailable=True)
    assert not (tmp_path / "http-cache").exists()


def test_url_timeout(server: _Server, tmp_path: Path) -> None:
    url = server.url("/slow")
    problem = _only_problem(_read(_url_spec(url), tmp_path, HttpSettings(timeout_s=0.2)))
    assert problem.message.startswith(f"timed out after 0.2 s fetching {url}; ")
    assert "HTTP_TIMEOUT_S" in problem.message
    assert problem.source_unavailable


@pytest.mark.parametrize("path", ["/big-declared", "/big-stream"])
def test_url_oversize_body_stops_at_the_limit(server: _Server, tmp_path: Path, path: str) -> None:
    http = HttpSettings(timeout_s=1.5, max_bytes=10_000)
    problem = _only_problem(_read(_url_spec(server.url(path)), tmp_path, http))
    # A client that read on past the limit would end with "timed out" instead.
    assert problem.message == "larger than the 10000-byte limit"
    assert problem.source_unavailable


def test_url_redirect_to_non_http_scheme_is_refused(server: _Server, tmp_path: Path) -> None:
    problem = _only_problem(_read(_url_spec(server.url("/redirect-ftp")), tmp_path))
    assert problem.source_unavailable
    assert "unsupported URL scheme 'ftp'" in problem.message
    assert [entry[0] for entry in server.state.log] == ["/redirect-ftp"]


def test_url_redirects_are_followed_up_to_the_limit(server: _Server, tmp_path: Path) -> None:
    server.state.resources["/doc.md"] = _Resource(_MARKDOWN.encode(), "text/markdown", etag='"v1"')
    url = server.url("/redirect/1")  # /redirect/1 -> /redirect/0 -> /doc.md
    (doc,) = _read(_url_spec(url), tmp_path, HttpSettings(max_redirects=2))
    assert isinstance(doc, Document)
    assert (doc.doc_id, doc.uri, doc.title) == (url, url, "Remote Guide")

    problem = _only_problem(_read(_url_spec(url), tmp_path, HttpSettings(max_redirects=1)))
    assert problem.message == "too many redirects (more than 1)"
    assert problem.source_unavailable


def test_url_unsupported_content_type(server: _Server, tmp_path: Path) -> None:
    server.state.resources["/blob"] = _Resource(b"\x00\x01", "application/octet-stream")
    problem = _only_problem(_read(_url_spec(server.url("/blob")), tmp_path))
    assert problem.message == "unsupported content type application/octet-stream"
    assert problem.source_unavailable


def test_url_undecodable_body(server: _Server, tmp_path: Path) -> None:
    server.state.resources["/bad.txt"] = _Resource(b"ok \xff", "text/plain; charset=utf-8")
    problem = _only_problem(_read(_url_spec(server.url("/bad.txt")), tmp_path))
    assert problem.message == "not valid utf-8 (byte 0xff at offset 3)"
    assert problem.source_unavailable


def test_url_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/doc.md"
    problem = _only_problem(_read(_url_spec(url), tmp_path, HttpSettings(timeout_s=1.0)))
    assert problem.message.startswith("connection failed")
    assert (problem.doc_id, problem.source_unavailable) == (url, True)
