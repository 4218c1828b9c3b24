"""Realistic corpora on disk for tests and benchmarks: slices of BEIR SciFact as Markdown pages."""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SCIFACT = REPO_ROOT.parent / "shared" / "datasets" / "scifact"


def scifact_records(n: int, offset: int = 0) -> list[dict]:
    """The first `n` SciFact abstracts (after `offset`): real scientific prose for realistic chunks."""
    corpus = SCIFACT / "corpus.jsonl"
    if not corpus.exists():
        raise FileNotFoundError(f"{corpus} is missing: the tests read a slice of ../shared/datasets/scifact")
    records = []
    with corpus.open() as f:
        for i, line in enumerate(f):
            if i < offset:
                continue
            if len(records) == n:
                break
            records.append(json.loads(line))
    return records


def write_markdown_corpus(folder: Path, records: list[dict]) -> list[Path]:
    """One Markdown page per record: `# title`, then the abstract split into paragraphs."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for record in records:
        sentences = record["text"].split(". ")
        half = max(1, len(sentences) // 2)
        body = ". ".join(sentences[:half]) + "\n\n" + ". ".join(sentences[half:])
        path = folder / f"doc-{record['_id']}.md"
        path.write_text(f"# {record['title']}\n\n{body}\n")
        paths.append(path)
    return paths
