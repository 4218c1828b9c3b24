"""The shared value types: :class:`SourceSpec` in, :class:`Document` / :class:`SourceProblem` out.

Kept apart from :mod:`ai_assets.lib.ingestion.sources` (which re-exports them) so
the reader modules can share them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ai_assets.lib.ingestion.text_formats import content_hash

__all__ = ["Document", "SourceProblem", "SourceSpec", "document_or_empty", "make_document"]


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


def make_document(spec: SourceSpec, doc_id: str, uri: str, title: str, text: str) -> Document:
    """Build a :class:`Document` of ``spec``, hashing ``title`` and ``text``."""
    return Document(
        doc_id=doc_id,
        source=spec.name,
        uri=uri,
        title=title,
        text=text,
        content_hash=content_hash(title, text),
    )


def document_or_empty(
    spec: SourceSpec, doc_id: str, uri: str, location: str, title: str, text: str
) -> Document | SourceProblem:
    """The document, or a problem keeping ``doc_id``'s old chunks when ``text`` is empty."""
    if not text:
        return SourceProblem(spec.name, location, "empty document", doc_id=doc_id)
    return make_document(spec, doc_id, uri, title, text)
