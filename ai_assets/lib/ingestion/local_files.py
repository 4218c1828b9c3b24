"""Read path sources: a folder tree or a single file of a supported type.

A folder is read without leaving it: a symbolic link is followed only when
its target lies inside the folder (or ``follow_external_symlinks`` is set),
every file is read once however many links reach it, folder loops end, and
every link skipped is reported with the reason.
"""

from __future__ import annotations

import errno
import heapq
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from ai_assets.lib.ingestion.documents import Document, SourceProblem, SourceSpec, document_or_empty
from ai_assets.lib.ingestion.html_text import html_to_text
from ai_assets.lib.ingestion.jsonl_corpus import read_jsonl
from ai_assets.lib.ingestion.text_formats import (
    decode_utf8,
    describe_decode_error,
    markdown_title_and_text,
    normalize_text,
)

__all__ = ["SUPPORTED_EXTENSIONS", "ListedFile", "LocalSettings", "list_path_source", "read_path_source"]

MARKDOWN_EXTENSIONS = frozenset({".md", ".markdown"})
TEXT_EXTENSIONS = frozenset({".txt"})
HTML_EXTENSIONS = frozenset({".html", ".htm"})
JSONL_EXTENSIONS = frozenset({".jsonl"})
SUPPORTED_EXTENSIONS = MARKDOWN_EXTENSIONS | TEXT_EXTENSIONS | HTML_EXTENSIONS | JSONL_EXTENSIONS

_SIZE_SETTING = "max_file_bytes, env LOCAL_MAX_FILE_BYTES"
_FOLLOW_SETTING = "AI_ASSETS_FOLLOW_EXTERNAL_SYMLINKS=true"


@dataclass(frozen=True)
class LocalSettings:
    """Limits for reading folder and file sources.

    ``max_file_bytes`` caps one document: a Markdown, text or HTML file, or
    one record of a JSONL corpus. ``follow_external_symlinks`` lets symbolic
    links lead out of the source folder.
    """

    max_file_bytes: int = 20_000_000
    follow_external_symlinks: bool = False

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_file_bytes, bool)
            or not isinstance(self.max_file_bytes, int)
            or (self.max_file_bytes < 1)
        ):
            raise ValueError(f"{_SIZE_SETTING} must be a positive number of bytes, got {self.max_file_bytes!r}")


class ListedFile(NamedTuple):
    """A file to read: its id path, the path as listed (for uris) and its real path (to open)."""

    relative: str
    path: Path
    real: Path


def read_path_source(spec: SourceSpec, local: LocalSettings | None = None) -> Iterator[Document | SourceProblem]:
    local = local or LocalSettings()
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
    files, listing_problems = list_path_source(spec, follow_external_symlinks=local.follow_external_symlinks)
    yield from listing_problems
    single_file = root.is_file()
    for listed in files:
        doc_id = spec.name if single_file else f"{spec.name}/{listed.relative}"
        yield from _read_file(spec, listed, doc_id, local.max_file_bytes)


def list_path_source(
    spec: SourceSpec, *, follow_external_symlinks: bool = False
) -> tuple[list[ListedFile], list[SourceProblem]]:
    """List the readable candidates of a path source, sorted by relative path.

    The listing is taken eagerly so a file deleted while documents are being
    read surfaces as a read problem (keeping its chunks) instead of changing
    the listing halfway. Symbolic links that are skipped (outside the folder,
    broken, looping, or reaching what is already listed) come back as
    report-only problems: they name no document, so whatever such a link
    brought into the index before is removed from it.
    """
    root = Path(spec.location)
    try:
        if root.is_file():
            # A single file is what the user named, link or not.
            return [ListedFile(root.name, root, Path(os.path.realpath(root)))], []
        if not root.is_dir():
            message = "no such file or folder" if not os.path.lexists(root) else ("not a regular file or folder")
            return [], [SourceProblem(spec.name, spec.location, message, source_unavailable=True)]
    except OSError as error:
        return [], [_unavailable(spec, spec.location, error)]
    return _FolderListing(spec, root, follow_external_symlinks).run()


class _FolderListing:
    """One walk of a folder source: real folders first, then the links, in sorted order.

    Walking every real folder before following any link makes the path a
    file is listed under independent of link names: a file keeps its own
    path as its id, and a link reaching it is reported as a duplicate.
    """

    def __init__(self, spec: SourceSpec, root: Path, follow_external: bool) -> None:
        self.spec = spec
        self.root = root
        self.real_root = Path(os.path.realpath(root))
        self.follow_external = follow_external
        self.files: dict[Path, ListedFile] = {}  # by real path: one entry per file
        self.folders: dict[Path, str] = {}  # real folder -> relative path it was read as
        self.links: list[tuple[str, str]] = []  # heap of (relative path, listed path)
        self.problems: list[SourceProblem] = []

    def run(self) -> tuple[list[ListedFile], list[SourceProblem]]:
        self._walk(self.root, self.real_root, "")
        while self.links:
            relative, listed = heapq.heappop(self.links)
            self._follow(relative, Path(listed))
        return sorted(self.files.values(), key=lambda item: item.relative), self.problems

    def _walk(self, folder: Path, real_folder: Path, relative: str) -> None:
        """List ``folder`` and its real subfolders; links are queued, not followed."""
        pending = [(folder, real_folder, relative)]
        while pending:
            folder, real_folder, relative = pending.pop()
            if real_folder in self.folders:
                self._skip(folder, f"a folder already read as {self._shown(self.folders[real_folder])}")
                continue
            self.folders[real_folder] = relative
            try:
                with os.scandir(folder) as scan:
                    entries = list(scan)
            except OSError as error:
                # Files under this folder would otherwise look deleted; claiming the
                # whole source unavailable keeps their chunks until it is readable.
                self.problems.append(_unavailable(self.spec, str(folder), error))
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                child = f"{relative}/{entry.name}" if relative else entry.name
                try:
                    if entry.is_symlink():
                        heapq.heappush(self.links, (child, entry.path))
                    elif entry.is_dir(follow_symlinks=False):
                        pending.append((Path(entry.path), real_folder / entry.name, child))
                    elif entry.is_file(follow_symlinks=False) and _supported(entry.name):
                        self._add(child, Path(entry.path), real_folder / entry.name)
                except OSError:
                    continue  # vanished while listing: treated as absent

    def _follow(self, relative: str, link: Path) -> None:
        try:
            os.stat(link)
        except OSError as error:
            if error.errno == errno.ELOOP:
                self._skip(link, "a symbolic link that loops")
            elif error.errno == errno.ENOENT:
                self._skip(link, f"a broken symbolic link (its target {_readlink(link)} does not exist)")
            else:
                self._skip(link, f"a symbolic link that cannot be followed: {error.strerror or error}")
            return
        target = Path(os.path.realpath(link))
        is_dir = target.is_dir()
        if not is_dir and not _supported(link.name):
            return  # not a document type: ignored like any other such file
        inside = target == self.real_root or target.is_relative_to(self.real_root)
        if not inside and not self.follow_external:
            kind = "folder" if is_dir else "file"
            self._skip(
                link,
                f"a symbolic link to the {kind} {target}, outside the source folder "
                f"{self.root} (set {_FOLLOW_SETTING} to follow it)",
            )
        elif is_dir:
            self._walk(link, target, relative)
        elif target in self.files:
            self._skip(link, f"a symbolic link to {self._shown(self.files[target].relative)}, already read")
        elif target.is_file():
            self._add(relative, link, target)

    def _add(self, relative: str, path: Path, real: Path) -> None:
        self.files.setdefault(real, ListedFile(relative, path, real))

    def _skip(self, path: Path, why: str) -> None:
        self.problems.append(SourceProblem(self.spec.name, str(path), f"skipped: {why}"))

    def _shown(self, relative: str) -> str:
        return str(self.root / relative) if relative else f"the source folder {self.root}"


def _supported(name: str) -> bool:
    return Path(name).suffix.lower() in SUPPORTED_EXTENSIONS


def _readlink(link: Path) -> str:
    try:
        return os.readlink(link)
    except OSError:
        return "(unreadable)"


def _unavailable(spec: SourceSpec, location: str, error: OSError) -> SourceProblem:
    return SourceProblem(
        spec.name,
        location,
        f"cannot read: {error.strerror or error}",
        source_unavailable=True,
    )


def _read_file(spec: SourceSpec, listed: ListedFile, doc_id: str, max_bytes: int) -> Iterator[Document | SourceProblem]:
    path = listed.path
    suffix = path.suffix.lower()
    try:
        handle = _open_listed(listed)
    except OSError as error:
        if suffix in JSONL_EXTENSIONS:
            # The record ids inside are unknown, so only keeping the whole
            # source protects the records' chunks.
            yield _unavailable(spec, str(path), error)
        else:
            yield SourceProblem(spec.name, str(path), f"cannot read: {error.strerror or error}", doc_id=doc_id)
        return

    with handle:
        if suffix in JSONL_EXTENSIONS:
            # The limit applies per record, not per file: a record is the
            # document (what chunking and embedding hold in memory), the file
            # is streamed one line at a time, and a corpus of many small
            # records routinely exceeds any sensible per-document limit.
            try:
                yield from read_jsonl(spec, path, doc_id, handle, max_record_bytes=max_bytes)
            except OSError as error:
                # Records after the failure are unknown: keep the whole source.
                yield _unavailable(spec, str(path), error)
            return
        try:
            size = os.fstat(handle.fileno()).st_size
            # Read one byte past the limit: a file growing after the stat (or a
            # special file that reports size 0) is still caught.
            data = handle.read(max_bytes + 1) if size <= max_bytes else b""
        except OSError as error:
            yield SourceProblem(spec.name, str(path), f"cannot read: {error.strerror or error}", doc_id=doc_id)
            return
    if size > max_bytes or len(data) > max_bytes:
        shown = f"{size} bytes" if size > max_bytes else f"more than {max_bytes} bytes"
        yield SourceProblem(
            spec.name,
            str(path),
            f"too large: {shown}, over the {max_bytes}-byte limit for one document ({_SIZE_SETTING}); "
            "not read, its indexed chunks are kept",
            doc_id=doc_id,
        )
        return

    try:
        raw_text = decode_utf8(data)
    except UnicodeDecodeError as error:
        yield SourceProblem(spec.name, str(path), describe_decode_error(error, "UTF-8", data), doc_id=doc_id)
        return

    if suffix in MARKDOWN_EXTENSIONS:
        title, text = markdown_title_and_text(raw_text, fallback_title=path.stem)
    elif suffix in HTML_EXTENSIONS:
        converted = html_to_text(raw_text)
        title, text = converted.title or path.stem, normalize_text(converted.text)
    else:
        title, text = path.stem, normalize_text(raw_text)
    yield document_or_empty(spec, doc_id, str(path), str(path), title, text)


def _open_listed(listed: ListedFile) -> BinaryIO:
    """Open the real path found while listing, refusing a link put in its place since.

    Opening the listed path instead would follow a link swapped in after the
    listing checked where it leads.
    """
    fd = os.open(listed.real, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    return os.fdopen(fd, "rb")
