"""Where batch inference keeps its files: an inbox of inputs, ledgers of answers, output files.

A partition key is a file name in the inbox, and it also names that file's ledgers and outputs. Keys
come from file names (the inbox sensor, `submit`) and from people (the UI, GraphQL, the CLI), so every
path built from one is checked twice: the key must be a plain file name (`check_partition_key`), and
the resolved path must lie inside its folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from ai_assets.lib.llm.items import OutputRow

# Outputs append ".outputs.jsonl" and ledgers ".<16 hex>.jsonl" to the key; file systems allow 255 bytes
# per name, so keys stay well under that.
MAX_KEY_BYTES = 200
_HASH_CHARS = 8
_KEPT_PUNCTUATION = "._-"


class InvalidPartitionKeyError(ValueError):
    """A partition key that is not a safe file name, or a path built from one that leaves its folder."""


def _kept(char: str) -> bool:
    # Letters, marks and digits of every script (so `日本.jsonl` and `中国.jsonl` stay distinct, and
    # Devanagari vowel signs survive), plus `.`, `_`, `-`. Everything else — separators, controls,
    # format characters such as right-to-left overrides, spaces, `/`, `\` — is replaced.
    return char in _KEPT_PUNCTUATION or unicodedata.category(char)[0] in "LMN"


def key_for_name(name: str) -> str:
    """The partition key of a file called `name`: the name itself when it is already a safe key.

    Otherwise every run of other characters becomes `_`, a leading `.` becomes `_` (no hidden files,
    no `..`), the result is cut to `MAX_KEY_BYTES`, and `-<8 hex of sha256(name)>` goes before the
    extension, so two names that differ only in replaced characters (`a b.jsonl`, `a?b.jsonl`) still
    get different keys. Dagster accepts any string but `...` and control characters; both are replaced.
    """
    normalized = unicodedata.normalize("NFC", name)
    cleaned, replaced, previous_replaced = [], normalized != name, False
    for char in normalized:
        if _kept(char):
            cleaned.append(char)
            previous_replaced = False
        else:
            replaced = True
            if not previous_replaced:
                cleaned.append("_")
            previous_replaced = True
    key = "".join(cleaned)
    if key.startswith("."):
        key, replaced = "_" + key[1:], True
    if "..." in key:
        key, replaced = key.replace("...", "_"), True  # Dagster's partition range separator
    if not key:
        key, replaced = "_", True
    if not replaced and len(key.encode()) <= MAX_KEY_BYTES:
        return key
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    stem, dot, extension = key.rpartition(".")
    if not dot or not stem or len(extension.encode()) > 16:
        stem, extension = key, ""
    suffix = f"-{digest}" + (f".{extension}" if extension else "")
    stem = stem.encode()[: MAX_KEY_BYTES - len(suffix.encode())].decode("utf-8", "ignore")
    return stem + suffix


# The name of the dynamic partitions of `inference_outputs`: one per input file.
PARTITIONS = "inference_files"


def partition_key_for(path: Path) -> str:
    """A file's partition key: see `key_for_name`."""
    return key_for_name(path.name)


def check_partition_key(partition_key: str) -> str:
    """Return `partition_key` if it can name a file in the inbox, else raise `InvalidPartitionKeyError`.

    A valid key is its own `key_for_name`: a plain file name of letters, marks, digits, `.`, `_`, `-`,
    not starting with `.`, at most `MAX_KEY_BYTES` bytes. Keys added by hand in the UI or via GraphQL
    (`../../outside/evil.jsonl`, `/etc/passwd`) fail here, before any file is opened.
    """
    if not isinstance(partition_key, str) or key_for_name(partition_key) != partition_key:
        suggestion = key_for_name(partition_key) if isinstance(partition_key, str) else None
        raise InvalidPartitionKeyError(
            f"partition key {partition_key!r} is not a plain file name in the inference inbox: keys may "
            f"hold only letters, digits, '.', '_' and '-', must not start with '.', and are at most "
            f"{MAX_KEY_BYTES} bytes"
            + (f" (a file with this name would be submitted as {suggestion!r})" if suggestion else "")
        )
    return partition_key


def _inside(folder: Path, name: str, partition_key: str, what: str) -> Path:
    """`folder / name`, refusing it if it resolves outside `folder` (say, through a symlink)."""
    root = folder.resolve()
    path = root / name
    resolved = path.resolve()
    if not resolved.is_relative_to(root) or resolved == root:
        raise InvalidPartitionKeyError(
            f"partition key {partition_key!r}: its {what} {path} resolves to {resolved}, outside {root}"
        )
    return path


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class InferenceFolders:
    """The folders of batch inference: `inbox` (input JSONL files, one dynamic partition each),
    `ledgers` (answers already paid for) and `outputs`. Given by the inference resource."""

    inbox: Path
    ledgers: Path
    outputs: Path

    @classmethod
    def under(cls, data_dir: Path, inbox: Path | None = None) -> InferenceFolders:
        """The folders inside `data_dir/inference`, with `inbox` instead of its default when given."""
        base = data_dir / "inference"
        return cls(inbox=inbox or base / "inbox", ledgers=base / "ledgers", outputs=base / "outputs")

    def input_path(self, partition_key: str) -> Path:
        """The inbox file of a partition; raises `InvalidPartitionKeyError` for an unsafe key."""
        return _inside(self.inbox, check_partition_key(partition_key), partition_key, "input file")

    def ledger_path(self, partition_key: str, content_digest: str) -> Path:
        """Answers already paid for, per input content: an edited file starts a fresh ledger."""
        if len(content_digest) < 16 or any(c not in "0123456789abcdef" for c in content_digest[:16]):
            raise ValueError(f"content digest must be lowercase hex (got {content_digest!r})")
        name = f"{check_partition_key(partition_key)}.{content_digest[:16]}.jsonl"
        return _inside(self.ledgers, name, partition_key, "ledger")

    def output_path(self, partition_key: str) -> Path:
        """The output file of a partition; raises `InvalidPartitionKeyError` for an unsafe key."""
        name = f"{check_partition_key(partition_key)}.outputs.jsonl"
        return _inside(self.outputs, name, partition_key, "output file")


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
