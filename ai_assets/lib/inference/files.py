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
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

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


def fingerprint(path: Path, known: list | None) -> list:
    """`[size, mtime_ns, sha256 hex]` of `path`; the digest of `known` (the same list from a sensor's
    cursor) is reused while size and mtime are unchanged, so a large file is hashed only when it changes."""
    stat = path.stat()
    if known and known[:2] == [stat.st_size, stat.st_mtime_ns]:
        return [stat.st_size, stat.st_mtime_ns, known[2]]
    return [stat.st_size, stat.st_mtime_ns, file_digest(path)]


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


# The formats `write_outputs` can write: "rows", one `OutputRow` as a JSON object per line (everything
# recorded), or "batch", the output format of the OpenAI Batch API (one result line per row).
ROWS_OUTPUT = "rows"
BATCH_OUTPUT = "batch"
OUTPUT_FORMATS = (ROWS_OUTPUT, BATCH_OUTPUT)

_ROW_FIELDS = frozenset(f.name for f in fields(OutputRow))
# `OutputRow.error` as `Failure.describe` writes it: `kind (HTTP status): message` or `kind: message`.
_ERROR = re.compile(r"(?P<kind>[^\s:()]+)(?: \(HTTP (?P<status>\d+)\))?: (?P<message>.*)", re.DOTALL)


def write_outputs(path: Path, rows: Iterable[OutputRow], *, output_format: str = ROWS_OUTPUT) -> int:
    """Replace the output file atomically: readers see the old file or the complete new one.

    `output_format` is one of `OUTPUT_FORMATS`: "rows" writes each `OutputRow` whole; "batch" writes
    the OpenAI Batch API output format (see `batch_output_line`), in the order of `rows`. Raises
    ValueError for any other format, before anything is written. Returns the number of lines written.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(
            f"output_format must be one of {', '.join(repr(f) for f in OUTPUT_FORMATS)} (got {output_format!r})"
        )
    encode = asdict if output_format == ROWS_OUTPUT else batch_output_line
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    count = 0
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(encode(row), ensure_ascii=False) + "\n")
            count += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return count


def batch_request_id(custom_id: str) -> str:
    """The `id` of a batch output line for a row without a `request_id`: stable, from the custom_id."""
    digest = hashlib.sha256(custom_id.encode("utf-8", "surrogatepass")).hexdigest()
    return "batch_req_" + digest[:24]


def batch_output_line(row: OutputRow) -> dict[str, Any]:
    """One line of the OpenAI Batch API output format for `row`.

    A success carries a chat completion rebuilt from what the ledger records (the answer, model,
    finish reason, token counts and request id; `created` is 0, as the time is not recorded). A
    failure with an HTTP status (`kind (HTTP 500): message`) is an error response with that status;
    one without (`kind: message`) is a line-level `error` with the kind as its code; an error in no
    such form is a line-level `error` whose code is null and whose message is the whole text. Latency,
    attempts, metadata and batch id have no place in the format and are not written; nor are model,
    finish reason and tokens of a failure.
    """
    line_id = row.request_id or batch_request_id(row.id)
    if row.succeeded:
        usage = {
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "total_tokens": row.prompt_tokens + row.completion_tokens,
        }
        body = {
            "id": row.request_id,
            "object": "chat.completion",
            "created": 0,
            "model": row.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": row.output},
                    "finish_reason": row.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": usage,
        }
        response: dict[str, Any] | None = {"status_code": 200, "request_id": row.request_id, "body": body}
        error: dict[str, Any] | None = None
    else:
        match = _ERROR.fullmatch(row.error or "")
        if match is None:
            response, error = None, {"code": None, "message": row.error}
        elif match["status"] is not None:
            detail = {"message": match["message"], "type": match["kind"], "param": None, "code": None}
            response = {"status_code": int(match["status"]), "request_id": row.request_id, "body": {"error": detail}}
            error = None
        else:
            response, error = None, {"code": match["kind"], "message": match["message"]}
    return {"id": line_id, "custom_id": row.id, "response": response, "error": error}


def read_outputs(path: Path) -> list[OutputRow]:
    """The rows of an output file in either format, decided per line: a line with `custom_id` is a
    Batch API output line (see `row_from_batch_output`), any other is an `OutputRow` whose unknown
    keys (a newer writer) are dropped. Raises ValueError naming `path:LINE` for a line that is neither."""
    rows = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if isinstance(obj, dict) and "custom_id" in obj:
                rows.append(row_from_batch_output(obj))
            elif isinstance(obj, dict) and isinstance(obj.get("id"), str):
                rows.append(OutputRow(**{k: v for k, v in obj.items() if k in _ROW_FIELDS}))
            else:
                raise ValueError(f"{path}:{number}: expected an output row or a batch output line")
    return rows


def row_from_batch_output(line: dict[str, Any]) -> OutputRow:
    """The `OutputRow` of one Batch API output line, the inverse of `batch_output_line`.

    The error is rebuilt as `kind (HTTP status): message` or `kind: message`, so `succeeded` and the
    error kind survive a round trip. `request_id` is the line's `id` unless that is the one
    `batch_request_id` made up for a row without one. Fields the format has no place for keep their
    defaults (latency 0, attempts 0, no metadata, no batch id).
    """
    custom_id = line["custom_id"]
    if not isinstance(custom_id, str):
        raise ValueError(f"custom_id must be a string (got {custom_id!r})")
    line_id = line.get("id")
    request_id = line_id if isinstance(line_id, str) and line_id != batch_request_id(custom_id) else None
    row = OutputRow(id=custom_id, request_id=request_id)
    response, error = line.get("response"), line.get("error")
    if isinstance(response, dict) and response.get("status_code") == 200:
        body = _object(response.get("body"))
        choices = body.get("choices")
        choice = _object(choices[0] if isinstance(choices, list) and choices else None)
        usage = _object(body.get("usage"))
        row.output = _object(choice.get("message")).get("content")
        row.model = body.get("model")
        row.finish_reason = choice.get("finish_reason")
        row.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        row.completion_tokens = int(usage.get("completion_tokens") or 0)
    elif isinstance(response, dict):
        body = response.get("body")
        detail = body.get("error") if isinstance(body, dict) else None
        detail = detail if isinstance(detail, dict) else {}
        kind = detail.get("type") or detail.get("code") or "http_error"
        message = detail.get("message") or ""
        row.error = f"{kind} (HTTP {response.get('status_code')}): {message}"
    elif isinstance(error, dict):
        message = error.get("message") if isinstance(error.get("message"), str) else ""
        row.error = f"{error['code']}: {message}" if error.get("code") else message
    else:
        row.error = "malformed_response: a batch output line with neither a response nor an error"
    return row


def _object(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one (for reading lines written by others)."""
    return value if isinstance(value, dict) else {}
