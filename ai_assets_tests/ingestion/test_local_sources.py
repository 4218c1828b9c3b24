"""Folder sources stay inside their folder, read each file once, and cap the size of one document."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ai_assets.lib.ingestion.sources import (
    Document,
    HttpSettings,
    LocalSettings,
    SourceProblem,
    SourceSpec,
    iter_watched_files,
    read_source,
)
from ai_assets.resources.sources import DocumentSourcesResource

SECRET = "hostname-of-the-ingestion-machine"


def _read(root: Path, tmp_path: Path, **local: object) -> list[Document | SourceProblem]:
    spec = SourceSpec("docs", str(root), "path")
    settings = LocalSettings(**local)  # type: ignore[arg-type]
    return list(read_source(spec, http=HttpSettings(), cache_dir=tmp_path / "cache", local=settings))


def _doc_ids(items: list[Document | SourceProblem]) -> list[str]:
    return [item.doc_id for item in items if isinstance(item, Document)]


def _problems(items: list[Document | SourceProblem]) -> dict[str, SourceProblem]:
    return {item.location: item for item in items if isinstance(item, SourceProblem)}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the source folder, holding what must not be indexed by default."""
    folder = tmp_path / "outside"
    _write(folder / "hostname.txt", SECRET)
    _write(folder / "etc" / "passwd.md", f"# passwd\n\n{SECRET}")
    return folder


# ---------------------------------------------------------------------------
# Symbolic links
# ---------------------------------------------------------------------------


def test_links_out_of_the_folder_are_skipped_and_reported(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "docs"
    _write(root / "notes.md", "# Notes\n\nInside.")
    (root / "hostname.txt").symlink_to(outside / "hostname.txt")
    (root / "etc").symlink_to(outside / "etc", target_is_directory=True)
    # A link to a link inside the folder that leads out: judged by where it finally lands.
    (root / "relay.txt").symlink_to(root / "hostname.txt")

    items = _read(root, tmp_path)
    assert _doc_ids(items) == ["docs/notes.md"]
    assert not any(SECRET in item.text for item in items if isinstance(item, Document))
    problems = _problems(items)
    assert set(problems) == {str(root / "hostname.txt"), str(root / "etc"), str(root / "relay.txt")}
    file_problem = problems[str(root / "hostname.txt")]
    real_outside = Path(os.path.realpath(outside))
    assert file_problem.message == (
        f"skipped: a symbolic link to the file {real_outside / 'hostname.txt'}, outside the source folder "
        f"{root} (set AI_ASSETS_FOLLOW_EXTERNAL_SYMLINKS=true to follow it)"
    )
    assert problems[str(root / "relay.txt")].message == file_problem.message
    assert f"the folder {real_outside / 'etc'}, outside" in problems[str(root / "etc")].message
    # Report-only: a skipped link names no document, so nothing it brought in before is kept.
    assert all(p.doc_id is None and not p.source_unavailable for p in problems.values())


def test_links_out_of_the_folder_are_followed_when_configured(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "docs"
    _write(root / "notes.md", "# Notes\n\nInside.")
    (root / "hostname.txt").symlink_to(outside / "hostname.txt")
    (root / "etc").symlink_to(outside / "etc", target_is_directory=True)

    items = _read(root, tmp_path, follow_external_symlinks=True)
    assert _doc_ids(items) == ["docs/etc/passwd.md", "docs/hostname.txt", "docs/notes.md"]
    assert _problems(items) == {}
    spec = SourceSpec("docs", str(root), "path")
    assert [rel for rel, _, _ in iter_watched_files(spec)] == ["notes.md"]
    assert [rel for rel, _, _ in iter_watched_files(spec, follow_external_symlinks=True)] == [
        "etc/passwd.md",
        "hostname.txt",
        "notes.md",
    ]


def test_links_inside_the_folder_work_once_without_loops(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    _write(root / "guide" / "intro.md", "# Intro\n\nThe guide.")
    _write(root / ".drafts" / "plan.md", "# Plan\n\nA draft reached only through a link.")
    _write(root / ".drafts" / "chapter" / "one.md", "# One\n\nA chapter.")
    (root / "latest.md").symlink_to("guide/intro.md")  # the same file as guide/intro.md
    (root / "plan.md").symlink_to(".drafts/plan.md")
    (root / "chapter").symlink_to(".drafts/chapter", target_is_directory=True)
    (root / "mirror").symlink_to("guide", target_is_directory=True)  # the same folder again
    (root / "guide" / "up").symlink_to("..", target_is_directory=True)  # a loop to the root
    (root / "self").symlink_to(".", target_is_directory=True)  # a loop to itself
    (root / "gone.md").symlink_to("nowhere.md")  # broken
    (root / "knot.md").symlink_to("knot.md")  # loops on itself

    items = _read(root, tmp_path)
    assert _doc_ids(items) == ["docs/chapter/one.md", "docs/guide/intro.md", "docs/plan.md"]
    problems = {Path(location).relative_to(root).as_posix(): p.message for location, p in _problems(items).items()}
    assert problems == {
        "latest.md": f"skipped: a symbolic link to {root / 'guide/intro.md'}, already read",
        "mirror": f"skipped: a folder already read as {root / 'guide'}",
        "guide/up": f"skipped: a folder already read as the source folder {root}",
        "self": f"skipped: a folder already read as the source folder {root}",
        "gone.md": "skipped: a broken symbolic link (its target nowhere.md does not exist)",
        "knot.md": "skipped: a symbolic link that loops",
    }
    # Read through a link, the document keeps the link's path in its id and uri.
    (plan,) = [item for item in items if isinstance(item, Document) and item.doc_id == "docs/plan.md"]
    assert (plan.uri, plan.text) == (str(root / "plan.md"), "# Plan\n\nA draft reached only through a link.")


def test_a_file_replaced_by_a_link_after_the_listing_is_not_followed(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "docs"
    _write(root / "a.md", "# A\n")
    swapped = _write(root / "b.md", "# B\n")
    items = read_source(SourceSpec("docs", str(root), "path"), http=HttpSettings(), cache_dir=tmp_path)
    first = next(items)  # the listing is taken, a.md is read
    assert isinstance(first, Document) and first.doc_id == "docs/a.md"
    swapped.unlink()
    swapped.symlink_to(outside / "hostname.txt")
    (problem,) = list(items)
    assert isinstance(problem, SourceProblem)
    assert (problem.location, problem.doc_id) == (str(swapped), "docs/b.md")  # its old chunks are kept
    assert problem.message.startswith("cannot read: ")


# ---------------------------------------------------------------------------
# The size limit of one local document
# ---------------------------------------------------------------------------


def test_a_file_over_the_limit_is_reported_and_keeps_its_chunks(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    _write(root / "fits.txt", "x" * 100)
    _write(root / "huge.md", "y" * 101)
    items = _read(root, tmp_path, max_file_bytes=100)
    assert _doc_ids(items) == ["docs/fits.txt"]
    assert _problems(items) == {
        str(root / "huge.md"): SourceProblem(
            "docs",
            str(root / "huge.md"),
            "too large: 101 bytes, over the 100-byte limit for one document (max_file_bytes, env "
            "LOCAL_MAX_FILE_BYTES); not read, its indexed chunks are kept",
            doc_id="docs/huge.md",
        )
    }
    # A single-file source obeys the same limit.
    single = list(
        read_source(
            SourceSpec("huge", str(root / "huge.md"), "path"),
            http=HttpSettings(),
            cache_dir=tmp_path,
            local=LocalSettings(max_file_bytes=100),
        )
    )
    assert [(type(item).__name__, item.doc_id) for item in single] == [("SourceProblem", "huge")]


def test_the_jsonl_limit_applies_to_each_record_not_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c" / "corpus.jsonl"
    small = [json.dumps({"_id": f"s{i}", "title": "", "text": "short " * 5}) for i in range(10)]
    big = json.dumps({"_id": "big", "title": "Big", "text": "z" * 1_000_000})
    nameless = json.dumps({"text": "w" * 5_000, "_id": "late"})  # its _id lies past the cut
    path.parent.mkdir()
    path.write_text("\n".join([*small[:5], big, *small[5:], nameless]) + "\n", encoding="utf-8")
    assert path.stat().st_size > 1_000_000  # the file is far over the limit; each small record is not

    items = _read(path.parent, tmp_path, max_file_bytes=1_000)
    assert _doc_ids(items) == [f"docs/corpus.jsonl#s{i}" for i in range(10)]
    assert _problems(items) == {
        f"{path}:6": SourceProblem(
            "docs",
            f"{path}:6",
            f"record too large: {len(big)} bytes, over the 1000-byte limit for one document "
            "(max_file_bytes, env LOCAL_MAX_FILE_BYTES, applies per JSONL record); not read, its indexed "
            "chunks are kept",
            doc_id="docs/corpus.jsonl#big",
        ),
        f"{path}:12": SourceProblem(
            "docs",
            f"{path}:12",
            f"record too large: {len(nameless)} bytes, over the 1000-byte limit for one document "
            "(max_file_bytes, env LOCAL_MAX_FILE_BYTES, applies per JSONL record); not read, no '_id' "
            "found in its first bytes, so any chunks it had are removed",
        ),
    }


def test_a_record_exactly_at_the_limit_is_read(tmp_path: Path) -> None:
    record = json.dumps({"_id": "edge", "text": "e" * 50})
    path = _write(tmp_path / "c" / "edge.jsonl", f"\ufeff{record}\r\n{record[:-1]}")
    items = _read(path.parent, tmp_path, max_file_bytes=len(record))
    assert _doc_ids(items) == ["docs/edge.jsonl#edge"]
    (problem,) = _problems(items).values()
    assert problem.location == f"{path}:2" and problem.message.startswith("invalid JSON")


@pytest.mark.parametrize("value", [0, -1])
def test_a_limit_that_is_not_positive_is_refused_naming_the_setting(value: int) -> None:
    with pytest.raises(ValueError) as excinfo:
        DocumentSourcesResource(max_file_bytes=value).local_settings()
    assert str(excinfo.value) == (
        f"max_file_bytes, env LOCAL_MAX_FILE_BYTES must be a positive number of bytes, got {value}"
    )


def test_the_resource_passes_its_settings_through() -> None:
    resource = DocumentSourcesResource(max_file_bytes=1234, follow_external_symlinks="yes")
    assert resource.local_settings() == LocalSettings(max_file_bytes=1234, follow_external_symlinks=True)
    assert DocumentSourcesResource().local_settings() == LocalSettings(20_000_000, False)


def test_a_file_that_reports_no_size_still_stops_at_the_limit(tmp_path: Path) -> None:
    # /proc files report size 0 whatever they hold; followed on request, the read itself must stop.
    maps = Path(f"/proc/{os.getpid()}/maps")
    if not maps.is_file() or len(maps.read_bytes()) <= 1_000:
        pytest.skip("no /proc maps file longer than the limit here")
    root = tmp_path / "docs"
    root.mkdir()
    (root / "maps.txt").symlink_to(maps)
    items = _read(root, tmp_path, follow_external_symlinks=True, max_file_bytes=1_000)
    assert items == [
        SourceProblem(
            "docs",
            str(root / "maps.txt"),
            "too large: more than 1000 bytes, over the 1000-byte limit for one document (max_file_bytes, "
            "env LOCAL_MAX_FILE_BYTES); not read, its indexed chunks are kept",
            doc_id="docs/maps.txt",
        )
    ]
