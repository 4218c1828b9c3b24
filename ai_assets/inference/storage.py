"""Where batch inference keeps its files: an inbox of inputs, ledgers of answers, output files."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from ai_assets.inference.items import OutputRow
from ai_assets.storage import data_dir

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def inbox_dir() -> Path:
    """Input JSONL files, one dynamic partition each: `AI_ASSETS_INFERENCE_INBOX`."""
    configured = os.environ.get("AI_ASSETS_INFERENCE_INBOX")
    return Path(configured).expanduser().resolve() if configured else data_dir() / "inference" / "inbox"


def partition_key_for(path: Path) -> str:
    """A file's partition key: its name, with anything but letters, digits, `.`, `_`, `-` replaced."""
    return _UNSAFE.sub("_", path.name)


def input_path(partition_key: str) -> Path:
    return inbox_dir() / partition_key


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ledger_path(partition_key: str, content_digest: str) -> Path:
    """Answers already paid for, per input content: an edited file starts a fresh ledger."""
    return data_dir() / "inference" / "ledgers" / f"{partition_key}.{content_digest[:16]}.jsonl"


def output_path(partition_key: str) -> Path:
    return data_dir() / "inference" / "outputs" / f"{partition_key}.outputs.jsonl"


def write_outputs(path: Path, rows: Iterable[OutputRow]) -> int:
    """Replace the output file atomically: readers see the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    count = 0
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
            count += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return count


def read_outputs(path: Path) -> list[OutputRow]:
    with path.open() as f:
        return [OutputRow(**json.loads(line)) for line in f if line.strip()]
