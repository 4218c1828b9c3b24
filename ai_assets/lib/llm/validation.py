"""Check a JSONL file of inference requests before a single request is sent.

One JSON object per line::

    {"id": "q1", "prompt": "Hello"}
    {"id": 2, "messages": [{"role": "user", "content": "Hi"}], "model": "m", "max_tokens": 64,
     "temperature": 0.2, "response_format": {"type": "json_object"}, "metadata": {"k": "v"}}

Every problem names ``path:LINE`` (1-based, physical lines) and the offending field, so a
10-million-line file can be fixed without guessing. The file is read line by line in binary
and decoded per line; a line longer than ``max_line_bytes`` is skipped without being held in
memory or parsed. The valid items themselves are kept in memory (they are the result).

Decisions worth knowing:

* Unknown top-level keys are ignored and not passed on (``InferenceItem`` has no place for
  them), but never silently: each occurrence is a warning in ``ValidatedInput.warnings``
  (``path:LINE: temprature: unknown field, ignored (did you mean 'temperature'?)``), up to
  ``MAX_WARNINGS_PER_KEY`` lines per key and then one line counting the rest, so an export with an
  extra column on every line does not flood the run log. Warnings do not make a line invalid.
  ``ValidatedInput.ignored_keys`` maps each unknown key to its first line. Keys inside a message
  (``name``, ``tool_calls``, ``tool_call_id``) are passed through unchanged for the server to judge.
* ``null`` for an optional field (``model``, ``max_tokens``, ``temperature``,
  ``response_format``, ``metadata``) and for ``prompt``/``messages`` means "not given", as
  DataFrame exports write it. ``"id": null`` is a problem.
* An id is claimed by the first line that carries it, valid or not: a later line with the same
  id is a duplicate even if the first line was rejected for another reason. The integer ``7``
  and the string ``"7"`` are the same id.
* An assistant message that carries ``tool_calls`` may have ``content`` null or absent, as in
  the OpenAI API; every other message needs a string or a non-empty list of content parts.
* The prompt size counts the characters of string contents and of ``text`` parts; image,
  audio and file parts do not count (``max_line_bytes`` bounds those).
* ``NaN``/``Infinity`` literals and ``\\ud800``-style unpaired surrogate escapes are rejected:
  Python's ``json`` accepts them, but they cannot be sent or written back out.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ai_assets.lib.json_values import json_type
from ai_assets.lib.llm.items import InferenceItem

__all__ = [
    "MAX_LISTED_PROBLEMS",
    "MAX_WARNINGS_PER_KEY",
    "ROLES",
    "InputProblem",
    "InputValidationError",
    "ValidatedInput",
    "validate_jsonl",
]

ROLES = ("system", "user", "assistant", "developer", "tool")
KNOWN_KEYS = frozenset(
    {"id", "prompt", "messages", "model", "max_tokens", "temperature", "response_format", "metadata"}
)
MAX_LISTED_PROBLEMS = 20
MAX_WARNINGS_PER_KEY = 5

_BOM = b"\xef\xbb\xbf"
_DRAIN_CHUNK = 1 << 20
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


@dataclass(frozen=True)
class InputProblem:
    """One thing wrong with one input line."""

    location: str  # "path:LINE", 1-based
    field: str | None  # e.g. "id", "messages[1].role"; None when the whole line is at fault
    message: str

    def __str__(self) -> str:
        if self.field is None:
            return f"{self.location}: {self.message}"
        return f"{self.location}: {self.field}: {self.message}"


class InputValidationError(ValueError):
    """The input cannot be used: nothing valid in it, or any problem in strict mode."""

    def __init__(self, headline: str, problems: list[InputProblem]) -> None:
        self.headline = headline
        self.problems = list(problems)
        listed = [f"  {problem}" for problem in self.problems[:MAX_LISTED_PROBLEMS]]
        if len(self.problems) > MAX_LISTED_PROBLEMS:
            listed.append(f"  ... and {len(self.problems) - MAX_LISTED_PROBLEMS} more")
        super().__init__("\n".join([headline, *listed]))


@dataclass(frozen=True)
class ValidatedInput:
    """The outcome of `validate_jsonl`: the usable items and everything that was wrong."""

    items: list[InferenceItem]  # valid lines, in file order
    problems: list[InputProblem]  # in file order
    lines: int  # non-blank lines seen, valid or not
    path: Path
    ignored_keys: dict[str, int] = field(default_factory=dict)  # unknown key -> first line it was on
    # Not problems (the line is still used): unknown keys, per file:line; see the module docstring.
    warnings: list[InputProblem] = field(default_factory=list)

    def raise_if_unusable(self, strict: bool) -> None:
        """Raise `InputValidationError` when no line is valid, or when `strict` and any line is not."""
        if not self.items:
            plural = "" if self.lines == 1 else "s"
            headline = f"{self.path}: no valid request among {self.lines} line{plural}"
        elif strict and self.problems:
            bad = len({problem.location for problem in self.problems})
            headline = (
                f"{self.path}: {bad} of {self.lines} lines invalid "
                f"({len(self.problems)} problem{'' if len(self.problems) == 1 else 's'}); strict mode uses none"
            )
        else:
            return
        raise InputValidationError(headline, self.problems)


def validate_jsonl(path: Path, *, max_prompt_chars: int = 200_000, max_line_bytes: int = 10_000_000) -> ValidatedInput:
    """Validate every line of a JSONL request file; see the module docstring for the rules.

    Raises FileNotFoundError (naming the path) when the file does not exist.
    """
    for name, value in (("max_prompt_chars", max_prompt_chars), ("max_line_bytes", max_line_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    path = Path(path)
    items: list[InferenceItem] = []
    problems: list[InputProblem] = []
    first_line_of: dict[str, int] = {}
    ignored_keys: dict[str, int] = {}
    unknown = _UnknownKeys(path)
    lines = 0
    with path.open("rb") as handle:
        for number, start, raw, size in _read_lines(handle, max_line_bytes):
            location = f"{path}:{number}"
            if raw is None:
                lines += 1
                problems.append(
                    InputProblem(
                        location, None, f"line is {size:,} bytes, over the limit of {max_line_bytes:,}; not parsed"
                    )
                )
                continue
            bom = 0
            if number == 1 and raw.startswith(_BOM):
                raw, bom = raw[len(_BOM) :], len(_BOM)
            if not raw.strip():
                continue
            lines += 1
            record, whole_line_problem = _parse(raw, bom, start)
            if whole_line_problem is not None:
                problems.append(InputProblem(location, None, whole_line_problem))
                continue
            for key in record:
                if key not in KNOWN_KEYS:
                    ignored_keys.setdefault(key, number)
                    unknown.seen(key, number)
            item, faults = _check_record(record, number, first_line_of, max_prompt_chars)
            problems.extend(InputProblem(location, where, message) for where, message in faults)
            if item is not None:
                items.append(item)
    return ValidatedInput(
        items=items,
        problems=problems,
        lines=lines,
        path=path,
        ignored_keys=ignored_keys,
        warnings=unknown.warnings(),
    )


class _UnknownKeys:
    """Warnings for unknown top-level keys: the first lines of each, then a count of the rest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listed: list[InputProblem] = []
        self.count: dict[str, int] = {}
        self.last_line: dict[str, int] = {}

    def seen(self, key: str, number: int) -> None:
        self.count[key] = self.count.get(key, 0) + 1
        self.last_line[key] = number
        if self.count[key] <= MAX_WARNINGS_PER_KEY:
            self.listed.append(InputProblem(f"{self.path}:{number}", _key_label(key), _unknown_key_message(key)))

    def warnings(self) -> list[InputProblem]:
        rest = [
            InputProblem(
                f"{self.path}:{self.last_line[key]}",
                _key_label(key),
                f"unknown field also on {count - MAX_WARNINGS_PER_KEY:,} more lines up to this one, ignored",
            )
            for key, count in self.count.items()
            if count > MAX_WARNINGS_PER_KEY
        ]
        return self.listed + rest


def _unknown_key_message(key: str) -> str:
    """`unknown field, ignored`, with the closest known field when there is a likely one."""
    known = sorted(KNOWN_KEYS)
    guess = key.strip().lower() if key.strip().lower() in KNOWN_KEYS else None
    if guess is None:
        close = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.6)
        guess = close[0] if close else None
    hint = f" (did you mean {guess!r}?)" if guess else f"; known fields: {', '.join(known)}"
    return f"unknown field, ignored{hint}"


def _key_label(key: str) -> str:
    """A key as it can be printed on one log line: as it is when short and printable, else quoted and cut."""
    return key if key.isprintable() and 0 < len(key) <= 40 else _show(key)


def _read_lines(handle: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, int, bytes | None, int]]:
    """Yield ``(line number, file offset of the line, content or None if too long, content bytes)``.

    Content excludes the ``\\n`` or ``\\r\\n`` ending. A line over the limit is read in chunks
    and dropped, so no more than about ``max_line_bytes`` is ever held at once.
    """
    number = 0
    offset = 0
    limit = max_line_bytes + 2  # room for the content at the limit plus "\r\n"
    while True:
        chunk = handle.readline(limit)
        if not chunk:
            return
        number += 1
        start = offset
        offset += len(chunk)
        if chunk.endswith(b"\n") or len(chunk) < limit:  # a whole line (the last may lack "\n")
            content = _strip_line_ending(chunk)
            if len(content) > max_line_bytes:
                yield number, start, None, len(content)
            else:
                yield number, start, content, len(content)
            continue
        total = len(chunk)
        tail = chunk[-1:]
        while not chunk.endswith(b"\n"):
            chunk = handle.readline(_DRAIN_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            offset += len(chunk)
            tail = (tail + chunk)[-2:]
        if tail.endswith(b"\n"):
            total -= 2 if tail == b"\r\n" else 1
        yield number, start, None, total


def _strip_line_ending(chunk: bytes) -> bytes:
    if chunk.endswith(b"\r\n"):
        return chunk[:-2]
    if chunk.endswith(b"\n"):
        return chunk[:-1]
    return chunk


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse(raw: bytes, bom: int, start: int) -> tuple[Any, str | None]:
    """Decode and parse one line: ``(object, None)`` or ``(None, what is wrong with the whole line)``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        at = error.start + bom
        return None, (
            f"not valid UTF-8: byte 0x{raw[error.start]:02x} at offset {at} of the line "
            f"(offset {start + at} in the file)"
        )
    try:
        record = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        return None, f"invalid JSON: {error.msg} (column {error.colno})"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    except ValueError as error:  # NaN/Infinity, integers over Python's digit limit
        return None, f"invalid JSON: {error}"
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {json_type(record)}"
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as error:
            bad = error.object[error.start : error.end]
            code = f"\\u{ord(bad[0]):04x}" if bad else "a surrogate"
            return None, f"unpaired surrogate escape {code}: the text cannot be encoded as UTF-8"
    return record, None


def _check_record(
    record: dict[str, Any], number: int, first_line_of: dict[str, int], max_prompt_chars: int
) -> tuple[InferenceItem | None, list[tuple[str | None, str]]]:
    """Check the fields of one parsed line: the item when all is well, and every fault found."""
    faults: list[tuple[str | None, str]] = []

    def fault(where: str | None, message: str) -> None:
        faults.append((where, message))

    item_id = _check_id(record, number, first_line_of, fault)
    messages, chars, size_field = _check_conversation(record, fault)
    if chars > max_prompt_chars:
        fault(size_field, f"{chars:,} characters of content, over the limit of {max_prompt_chars:,}")

    model = record.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        fault("model", f"must be a non-empty string (got {_show(model)})")

    max_tokens = record.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        fault("max_tokens", f"must be a positive integer (got {_show(max_tokens)})")

    temperature = record.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            fault("temperature", f"must be a number from 0 to 2 (got {_show(temperature)})")
        elif not 0 <= temperature <= 2:
            fault("temperature", f"must be from 0 to 2 (got {temperature})")
        else:
            temperature = float(temperature)

    response_format = record.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict):
            fault("response_format", f"must be an object (got {_show(response_format)})")
        elif "type" not in response_format:
            fault("response_format.type", "missing")
        elif not isinstance(response_format["type"], str) or not response_format["type"]:
            fault("response_format.type", f"must be a non-empty string (got {_show(response_format['type'])})")

    metadata = record.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        fault("metadata", f"must be an object (got {_show(metadata)})")

    if faults or item_id is None or messages is None:
        return None, faults
    return (
        InferenceItem(
            id=item_id,
            messages=messages,
            line=number,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            response_format=response_format,
            metadata=metadata,
        ),
        faults,
    )


def _check_id(
    record: dict[str, Any], number: int, first_line_of: dict[str, int], fault: Callable[[str | None, str], None]
) -> str | None:
    if "id" not in record:
        fault("id", "missing")
        return None
    value = record["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        fault("id", f"must be a non-empty string or an integer (got {_show(value)})")
        return None
    if isinstance(value, str) and not value.strip():
        fault("id", "must not be empty")
        return None
    item_id = value if isinstance(value, str) else str(value)
    first = first_line_of.setdefault(item_id, number)
    if first != number:
        fault("id", f"duplicate id {item_id!r} (first at line {first})")
        return None
    return item_id


def _check_conversation(
    record: dict[str, Any], fault: Callable[[str | None, str], None]
) -> tuple[tuple[dict[str, Any], ...] | None, int, str]:
    """Check ``prompt`` / ``messages``: ``(messages or None, content characters, field to blame for size)``."""
    prompt = record.get("prompt")
    messages = record.get("messages")
    if prompt is not None and messages is not None:
        fault(None, "has both 'prompt' and 'messages'; give exactly one")
        return None, 0, "prompt"
    if prompt is None and messages is None:
        fault(None, "needs 'prompt' or 'messages'")
        return None, 0, "prompt"
    if prompt is not None:
        if not isinstance(prompt, str):
            fault("prompt", f"must be a string (got {_show(prompt)})")
            return None, 0, "prompt"
        if not prompt.strip():
            fault("prompt", "must not be empty")
            return None, 0, "prompt"
        return ({"role": "user", "content": prompt},), len(prompt), "prompt"
    if not isinstance(messages, list):
        fault("messages", f"must be a list of message objects (got {_show(messages)})")
        return None, 0, "messages"
    if not messages:
        fault("messages", "must not be empty")
        return None, 0, "messages"
    counter = _FaultCounter(fault)
    chars = 0
    for index, message in enumerate(messages):
        chars += _check_message(f"messages[{index}]", message, counter)
    if counter.count:
        return None, chars, "messages"
    return tuple(messages), chars, "messages"


class _FaultCounter:
    """Forwards faults and counts them, to tell whether a nested check found anything."""

    def __init__(self, fault: Callable[[str | None, str], None]) -> None:
        self.fault = fault
        self.count = 0

    def __call__(self, where: str | None, message: str) -> None:
        self.count += 1
        self.fault(where, message)


def _check_message(where: str, message: Any, fault: Callable[[str | None, str], None]) -> int:
    """Check one chat message; return the characters of text it carries."""
    if not isinstance(message, dict):
        fault(where, f"must be an object with 'role' and 'content' (got {_show(message)})")
        return 0
    role = message.get("role")
    if "role" not in message:
        fault(f"{where}.role", "missing")
    elif not isinstance(role, str) or role not in ROLES:
        fault(f"{where}.role", f"must be one of {', '.join(ROLES)} (got {_show(role)})")
    content = message.get("content")
    if content is None:
        if role == "assistant" and message.get("tool_calls"):
            return 0
        if "content" not in message:
            fault(f"{where}.content", "missing")
        else:
            fault(f"{where}.content", "must be a string or a list of content parts (got null)")
        return 0
    if isinstance(content, str):
        return len(content)
    if not isinstance(content, list):
        fault(f"{where}.content", f"must be a string or a list of content parts (got {_show(content)})")
        return 0
    if not content:
        fault(f"{where}.content", "must not be an empty list")
        return 0
    chars = 0
    for index, part in enumerate(content):
        at = f"{where}.content[{index}]"
        if not isinstance(part, dict):
            fault(at, f"must be an object with a 'type' (got {_show(part)})")
            continue
        kind = part.get("type")
        if "type" not in part:
            fault(f"{at}.type", "missing")
        elif not isinstance(kind, str) or not kind:
            fault(f"{at}.type", f"must be a non-empty string (got {_show(kind)})")
        elif kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                fault(f"{at}.text", f"must be a string (got {_show(text)})")
            else:
                chars += len(text)
    return chars


def _show(value: Any) -> str:
    """A short description of a wrong value: strings quoted (and cut), numbers as they are, else the JSON type."""
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        shown = repr(value)
        return shown if len(shown) <= 40 else shown[:40] + "..."
    return json_type(value)
