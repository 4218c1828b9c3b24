"""Text normalisation and format helpers shared by every source reader.

``normalize_text`` and ``content_hash`` define what counts as "unchanged" for
the incremental indexer; the rest decodes UTF-8 (with error messages that name
the offending byte) and pulls the title out of Markdown.
"""

from __future__ import annotations

import codecs
import hashlib
import re
import unicodedata

__all__ = [
    "UTF8_BOM",
    "content_hash",
    "decode_utf8",
    "describe_decode_error",
    "markdown_title_and_text",
    "normalize_text",
    "normalize_title",
]

UTF8_BOM = codecs.BOM_UTF8


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


def normalize_title(title: str) -> str:
    return " ".join(unicodedata.normalize("NFC", title).split())


def content_hash(title: str, text: str) -> str:
    """sha256 hex of ``title + "\\x00" + text`` (the NUL keeps the fields apart)."""
    return hashlib.sha256(f"{title}\x00{text}".encode()).hexdigest()


def decode_utf8(data: bytes) -> str:
    """Strict UTF-8 with an optional BOM; error offsets stay relative to ``data``."""
    if data.startswith(UTF8_BOM):
        try:
            return data[len(UTF8_BOM) :].decode("utf-8")
        except UnicodeDecodeError as error:
            raise UnicodeDecodeError(
                error.encoding,
                data,
                error.start + len(UTF8_BOM),
                error.end + len(UTF8_BOM),
                error.reason,
            ) from None
    return data.decode("utf-8")


def describe_decode_error(error: UnicodeDecodeError, encoding: str, data: bytes) -> str:
    offset = error.start
    byte = data[offset] if offset < len(data) else None
    what = f"byte 0x{byte:02x}" if byte is not None else "truncated sequence"
    return f"not valid {encoding} ({what} at offset {offset})"


_FRONT_MATTER_END = re.compile(r"^(?:---|\.\.\.)[ \t]*$")
_FRONT_MATTER_TITLE = re.compile(r"^title:[ \t]*(.*?)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX_H1 = re.compile(r"^ {0,3}#(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")


def markdown_title_and_text(raw: str, *, fallback_title: str) -> tuple[str, str]:
    """Strip YAML front matter; title = front matter ``title:``, else first ``# `` heading."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    front_title, text = _split_front_matter(text)
    text = normalize_text(text)
    title = front_title or _first_h1(text) or fallback_title
    return normalize_title(title) or fallback_title, text


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
            return title, "\n".join(lines[index + 1 :])
    return None, text  # an unterminated block is ordinary Markdown (a rule line)


def _unquote_yaml_scalar(value: str) -> str | None:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    elif value.startswith(("|", ">")):
        return None  # block scalars are not worth a YAML parser; fall back
    else:
        value = value.split(" #", 1)[0]  # plain scalars may carry a comment
    return value.strip() or None


def toggle_fence(open_fence: str | None, marker: str) -> str | None:
    """The open Markdown code fence after seeing `marker` (``` or ~~~, any length): it opens a fence,
    or closes the open one when made of the same character and at least as long (CommonMark)."""
    if open_fence is None:
        return marker
    if marker[0] == open_fence[0] and len(marker) >= len(open_fence):
        return None
    return open_fence


def _first_h1(text: str) -> str | None:
    fence: str | None = None
    for line in text.split("\n"):
        fence_match = _FENCE.match(line)
        if fence_match:
            # A "# comment" inside a shell snippet is not the page title.
            fence = toggle_fence(fence, fence_match.group(1))
            continue
        if fence is not None:
            continue
        match = _ATX_H1.match(line)
        if match and match.group(1) and match.group(1).strip():
            return match.group(1).strip()
    return None
