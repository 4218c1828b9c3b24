"""Turn an HTML page into plain text that keeps its structure visible to a chunker.

Only the stdlib ``html.parser`` is used: pages fed to the ingestion pipeline are
documentation pages, not arbitrary web apps, so a forgiving tokenizer plus a
handful of layout rules is enough and avoids a heavyweight dependency.

Layout rules:

* ``script``, ``style``, ``noscript``, ``template`` and ``svg`` are dropped with
  everything inside them; so is ``<head>``, except that ``<title>`` is captured.
* Block elements end the current line; "paragraph-like" blocks (``p``,
  ``h1``-``h6``, ``pre``, ``table``, ``blockquote``, ...) also leave a blank line.
* ``h1``..``h6`` become Markdown ATX headings (``## Heading``) so the downstream
  Markdown-aware chunker sees the same section boundaries as for ``.md`` files.
* ``li`` becomes ``- item`` (indented two spaces per nesting level).
* Table cells of one row are joined with `` | ``.
* Whitespace runs inside text collapse to one space; ``<pre>`` keeps its
  whitespace verbatim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

__all__ = ["HtmlText", "html_to_text"]

# Content of these elements is never prose (code, styling, vector drawings).
_SKIPPED = frozenset({"script", "style", "noscript", "template", "svg"})

# Blocks that separate paragraphs: a blank line before and after.
_PARAGRAPH_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "details", "dialog", "dl",
        "fieldset", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
        "header", "hr", "main", "nav", "ol", "p", "pre", "section", "table", "ul",
    }
)  # fmt: skip

# Blocks that only need to start on a new line.
_LINE_BLOCKS = frozenset(
    {
        "body", "br", "caption", "dd", "div", "dt", "figcaption", "html", "legend",
        "li", "option", "summary", "tbody", "tfoot", "thead", "tr",
    }
)  # fmt: skip

_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_CELLS = frozenset({"td", "th"})
_LISTS = frozenset({"ul", "ol", "menu"})
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class HtmlText:
    """Result of :func:`html_to_text`.

    ``title`` is the ``<title>`` text, else the first ``<h1>`` text, else
    ``None`` (the caller picks a fallback such as the file stem).
    """

    title: str | None
    text: str


def html_to_text(html: str) -> HtmlText:
    """Convert an HTML document to structured plain text (see module docstring)."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return parser.result()


def _collapse(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


class _TextExtractor(HTMLParser):
    """Streaming converter; output is built as a list of lines plus pending breaks."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._lines: list[str] = []
        # Blank lines owed before the next output: 0 = same line allowed,
        # 1 = new line, 2 = new paragraph. Deferring them (instead of writing
        # them immediately) is what keeps nested blocks from piling up gaps.
        self._pending_break = 0
        self._inline: list[str] = []
        self._prefix = ""  # "## " for headings, "- " for list items
        self._skip_depth = 0
        self._in_head = False
        self._in_title = False
        self._title_parts: list[str] = []
        self._h1_parts: list[str] | None = None  # collecting the first <h1>
        self._first_h1: str | None = None
        self._pre_depth = 0
        self._pre_parts: list[str] = []
        self._list_depth = 0
        self._cell_in_row = 0

    # -- parser callbacks -------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skip_depth += 1
            return
        if self._skip_depth:
            return
        if tag == "head":
            self._in_head = True
            return
        if tag == "title":
            self._in_title = True
            return
        if tag == "body":
            # Tolerate a missing </head>: the body always starts visible output.
            self._in_head = False
        if self._in_head:
            return
        if self._pre_depth:
            if tag == "br":
                self._pre_parts.append("\n")
            elif tag == "pre":
                self._pre_depth += 1
            return

        if tag == "pre":
            self._break(2)
            self._pre_depth = 1
            self._pre_parts = []
        elif tag in _HEADINGS:
            self._break(2)
            self._prefix = "#" * _HEADINGS[tag] + " "
            if tag == "h1" and self._first_h1 is None and self._h1_parts is None:
                self._h1_parts = []
        elif tag in _LISTS:
            self._break(2 if self._list_depth == 0 else 1)
            self._list_depth += 1
        elif tag == "li":
            self._break(1)
            self._prefix = "  " * max(self._list_depth - 1, 0) + "- "
        elif tag == "tr":
            self._break(1)
            self._cell_in_row = 0
        elif tag in _CELLS:
            if self._cell_in_row:
                self._inline.append(" | ")
            self._cell_in_row += 1
        elif tag in _PARAGRAPH_BLOCKS:
            self._break(2)
        elif tag in _LINE_BLOCKS:
            self._break(1)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skip_depth = max(self._skip_depth - 1, 0)
            return
        if self._skip_depth:
            return
        if tag == "title":
            self._in_title = False
            return
        if tag == "head":
            self._in_head = False
            return
        if self._in_head:
            return
        if self._pre_depth:
            if tag == "pre":
                self._pre_depth -= 1
                if self._pre_depth == 0:
                    self._emit_pre()
            return

        if tag in _HEADINGS:
            if tag == "h1" and self._h1_parts is not None:
                self._first_h1 = _collapse("".join(self._h1_parts)) or None
                self._h1_parts = None
            self._break(2)
            self._prefix = ""
        elif tag in _LISTS:
            self._list_depth = max(self._list_depth - 1, 0)
            self._break(2 if self._list_depth == 0 else 1)
        elif tag == "li":
            self._break(1)
            self._prefix = ""
        elif tag in _PARAGRAPH_BLOCKS:
            self._break(2)
        elif tag in _LINE_BLOCKS:
            self._break(1)

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        if self._in_title:
            self._title_parts.append(data)
            return
        if self._in_head:
            return
        if self._pre_depth:
            self._pre_parts.append(data)
            return
        self._inline.append(data)
        if self._h1_parts is not None:
            self._h1_parts.append(data)

    # -- output helpers ---------------------------------------------------

    def _break(self, level: int) -> None:
        """End the current line and owe ``level`` (1 line, 2 paragraph) breaks."""
        self._flush_inline()
        self._pending_break = max(self._pending_break, level)

    def _flush_inline(self) -> None:
        text = _collapse("".join(self._inline))
        self._inline = []
        if not text:
            return
        self._write_line(self._prefix + text)
        # A marker belongs to the first line only: later lines of the same list
        # item are indented under it, later lines of a heading become plain text.
        self._prefix = " " * len(self._prefix) if not self._prefix.startswith("#") else ""

    def _emit_pre(self) -> None:
        text = "".join(self._pre_parts)
        self._pre_parts = []
        # HTML drops one newline right after <pre>; authors rely on that.
        if text.startswith("\n"):
            text = text[1:]
        text = text.rstrip()
        if text.strip():
            self._pending_break = max(self._pending_break, 2)
            for line in text.split("\n"):
                self._write_line(line)
        self._pending_break = 2

    def _write_line(self, line: str) -> None:
        if self._lines:
            self._lines.extend([""] * (self._pending_break - 1))
        self._lines.append(line)
        self._pending_break = 1

    def result(self) -> HtmlText:
        self._flush_inline()
        if self._pre_depth:  # unterminated <pre>: keep what we have
            self._emit_pre()
        title = _collapse("".join(self._title_parts)) or self._first_h1
        return HtmlText(title=title, text="\n".join(self._lines))
