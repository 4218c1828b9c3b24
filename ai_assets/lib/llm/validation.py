"""Check a JSONL file of inference requests before a single request is sent.

Two formats are accepted, one per file.

The requests format, one JSON object per line::

    {"id": "q1", "prompt": "Hello"}
    {"id": 2, "messages": [{"role": "user", "content": "Hi"}], "model": "m", "max_tokens": 64,
     "temperature": 0.2, "response_format": {"type": "json_object"}, "metadata": {"k": "v"}}

The OpenAI Batch API input format, one request per line::

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 64}}

A file is in the batch format when its first non-blank line that parses as a JSON object has a
``custom_id`` key, and in the requests format otherwise (``ValidatedInput.format``; a file with no
object at all counts as requests). Lines before that one are whole-line problems either way.

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
  The known top-level keys are those of the file's format (``REQUEST_KEYS`` or ``BATCH_KEYS``).
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

In the batch format:

* ``custom_id`` is the item's id and must be a non-empty string, as the Batch API requires (an
  integer is a problem, not converted). It is claimed like an id: by the first line carrying it.
* ``method`` must be ``"POST"`` and ``url`` must be ``/v1/chat/completions``: batch inference sends
  chat completions only. ``body`` must be an object; missing ``custom_id``/``method``/``url``/``body``
  is reported as ``missing``.
* The body is checked like a requests-format line, with fields named ``body.``: ``body.messages``
  is required (a chat completions body has no ``prompt``; ``body.prompt`` is a problem),
  ``body.model``, ``body.max_tokens``, ``body.temperature``, ``body.response_format`` and the size
  limit as above. ``body.stream`` must not be true (a batch answers non-streaming) and ``body.n``
  must be 1 or absent (one output per input); neither is passed on.
* Every other body key (``top_p``, ``seed``, ``stop``, ``tools``, ``tool_choice``,
  ``max_completion_tokens``, ``metadata``, ...) goes unchanged into ``InferenceItem.extra`` for the
  server to judge; ``InferenceItem.metadata`` is None (the body's ``metadata`` is a request option).

One format per file: a line of the other format is reported with one problem that says so
(``id: missing (this line is in the batch format; ...)`` in a requests file, when the line has a
``custom_id`` and no ``id``; ``custom_id: missing (this line is in the requests format; ...)`` in a
batch file, when the line has no ``custom_id`` but an ``id``, ``prompt`` or ``messages``). Its
fields are not checked further, and its keys of the other format are not warned about as unknown.
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
    "BATCH_FORMAT",
    "BATCH_KEYS",
    "BATCH_URL",
    "INPUT_FORMATS",
    "MAX_LISTED_PROBLEMS",
    "MAX_WARNINGS_PER_KEY",
    "REQUESTS_FORMAT",
    "REQUEST_KEYS",
    "ROLES",
    "InputProblem",
    "InputValidationError",
    "ValidatedInput",
    "validate_jsonl",
]

ROLES = ("system", "user", "assistant", "developer", "tool")
# The two input formats (`ValidatedInput.format`); see the module docstring.
REQUESTS_FORMAT = "requests"
BATCH_FORMAT = "batch"
INPUT_FORMATS = (REQUESTS_FORMAT, BATCH_FORMAT)

# The top-level keys of a line, per format.
REQUEST_KEYS = frozenset(
    {"id", "prompt", "messages", "model", "max_tokens", "temperature", "response_format", "metadata"}
)
KNOWN_KEYS = REQUEST_KEYS  # the name before the batch format existed
BATCH_KEYS = frozenset({"custom_id", "method", "url", "body"})
BATCH_URL = "/v1/chat/completions"
# Body keys validated here; every other body key goes to `InferenceItem.extra` unchanged.
_CHECKED_BODY_KEYS = frozenset(
    {"messages", "prompt", "model", "max_tokens", "temperature", "response_format", "stream", "n"}
)
# Keys that mark a line of the requests format in a batch file.
_REQUESTS_MARKERS = ("id", "prompt", "messages")
_OTHER_FORMAT_HINT = "this line is in the {} format; a file holds one format, set by its first line"
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
    format: str = REQUESTS_FORMAT  # one of INPUT_FORMATS, set by the file's first object

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
    input_format: str | None = None  # set by the first line that parses as an object
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
            if input_format is None:
                input_format = BATCH_FORMAT if "custom_id" in record else REQUESTS_FORMAT
            if input_format == BATCH_FORMAT:
                known = BATCH_KEYS
                other_format = "custom_id" not in record and any(key in record for key in _REQUESTS_MARKERS)
                other_keys = REQUEST_KEYS
            else:
                known = REQUEST_KEYS
                other_format = "custom_id" in record and "id" not in record
                other_keys = BATCH_KEYS
            for key in record:
                if key not in known and not (other_format and key in other_keys):
                    ignored_keys.setdefault(key, number)
                    unknown.seen(key, number, known)
            if other_format:
                id_field, other = (
                    ("custom_id", REQUESTS_FORMAT) if input_format == BATCH_FORMAT else ("id", BATCH_FORMAT)
                )
                problems.append(InputProblem(location, id_field, f"missing ({_OTHER_FORMAT_HINT.format(other)})"))
                continue
            if input_format == BATCH_FORMAT:
                item, faults = _check_batch_record(record, number, first_line_of, max_prompt_chars)
            else:
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
        format=input_format or REQUESTS_FORMAT,
    )


class _UnknownKeys:
    """Warnings for unknown top-level keys: the first lines of each, then a count of the rest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listed: list[InputProblem] = []
        self.count: dict[str, int] = {}
        self.last_line: dict[str, int] = {}

    def seen(self, key: str, number: int, known: frozenset[str] = REQUEST_KEYS) -> None:
        self.count[key] = self.count.get(key, 0) + 1
        self.last_line[key] = number
        if self.count[key] <= MAX_WARNINGS_PER_KEY:
            self.listed.append(InputProblem(f"{self.path}:{number}", _key_label(key), _unknown_key_message(key, known)))

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


def _unknown_key_message(key: str, keys: frozenset[str] = REQUEST_KEYS) -> str:
    """`unknown field, ignored`, with the closest of `keys` when there is a likely one."""
    known = sorted(keys)
    guess = key.strip().lower() if key.strip().lower() in keys else None
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
    model, max_tokens, temperature, response_format = _check_options(record, "", fault)

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


def _check_options(
    source: dict[str, Any], prefix: str, fault: Callable[[str | None, str], None]
) -> tuple[Any, Any, Any, Any]:
    """Check the request options of a line (or of a batch body, fields named `prefix` + key).

    Returns ``(model, max_tokens, temperature, response_format)``, temperature as a float when valid;
    a value is only meaningful when no fault was reported.
    """
    model = source.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        fault(f"{prefix}model", f"must be a non-empty string (got {_show(model)})")

    max_tokens = source.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        fault(f"{prefix}max_tokens", f"must be a positive integer (got {_show(max_tokens)})")

    temperature = source.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            fault(f"{prefix}temperature", f"must be a number from 0 to 2 (got {_show(temperature)})")
        elif not 0 <= temperature <= 2:
            fault(f"{prefix}temperature", f"must be from 0 to 2 (got {temperature})")
        else:
            temperature = float(temperature)

    response_format = source.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict):
            fault(f"{prefix}response_format", f"must be an object (got {_show(response_format)})")
        elif "type" not in response_format:
            fault(f"{prefix}response_format.type", "missing")
        elif not isinstance(response_format["type"], str) or not response_format["type"]:
            fault(f"{prefix}response_format.type", f"must be a non-empty string (got {_show(response_format['type'])})")
    return model, max_tokens, temperature, response_format


def _check_batch_record(
    record: dict[str, Any], number: int, first_line_of: dict[str, int], max_prompt_chars: int
) -> tuple[InferenceItem | None, list[tuple[str | None, str]]]:
    """Check one parsed line of the batch format: the item when all is well, and every fault found."""
    faults: list[tuple[str | None, str]] = []

    def fault(where: str | None, message: str) -> None:
        faults.append((where, message))

    item_id = _check_custom_id(record, number, first_line_of, fault)

    if "method" not in record:
        fault("method", "missing")
    elif record["method"] != "POST":
        fault("method", f"must be 'POST' (got {_show(record['method'])})")

    if "url" not in record:
        fault("url", "missing")
    elif record["url"] != BATCH_URL:
        fault(
            "url",
            f"unsupported {_show(record['url'])}: batch inference sends chat completions, url must be {BATCH_URL}",
        )

    if "body" not in record:
        fault("body", "missing")
        return None, faults
    body = record["body"]
    if not isinstance(body, dict):
        fault("body", f"must be an object (got {_show(body)})")
        return None, faults

    messages: tuple[dict[str, Any], ...] | None = None
    prompt = body.get("prompt")
    if prompt is not None:
        fault("body.prompt", "not a chat completions field; give the conversation as body.messages")
    if body.get("messages") is None:
        if prompt is None:
            fault("body.messages", "missing")
    else:
        messages, chars = _check_messages(body["messages"], "body.messages", fault)
        if chars > max_prompt_chars:
            fault("body.messages", f"{chars:,} characters of content, over the limit of {max_prompt_chars:,}")
    model, max_tokens, temperature, response_format = _check_options(body, "body.", fault)

    stream = body.get("stream")
    if stream is not None and stream is not False:
        fault("body.stream", f"must be false or absent: a batch answers non-streaming (got {_show(stream)})")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        fault("body.n", f"must be 1 or absent: batch inference writes one output per input (got {_show(n)})")

    if faults or item_id is None or messages is None:
        return None, faults
    extra = {key: value for key, value in body.items() if key not in _CHECKED_BODY_KEYS}
    return (
        InferenceItem(
            id=item_id,
            messages=messages,
            line=number,
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            response_format=response_format,
            metadata=None,
            extra=extra or None,
        ),
        faults,
    )


def _check_custom_id(
    record: dict[str, Any], number: int, first_line_of: dict[str, int], fault: Callable[[str | None, str], None]
) -> str | None:
    if "custom_id" not in record:
        fault("custom_id", "missing")
        return None
    value = record["custom_id"]
    if isinstance(value, int) and not isinstance(value, bool):
        fault("custom_id", f"must be a string, as the Batch API requires (got the integer {_show(value)})")
        return None
    if not isinstance(value, str):
        fault("custom_id", f"must be a non-empty string (got {_show(value)})")
        return None
    if not value.strip():
        fault("custom_id", "must not be empty")
        return None
    first = first_line_of.setdefault(value, number)
    if first != number:
        fault("custom_id", f"duplicate custom_id {value!r} (first at line {first})")
        return None
    return value


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
    checked, chars = _check_messages(messages, "messages", fault)
    return checked, chars, "messages"


def _check_messages(
    messages: Any, where: str, fault: Callable[[str | None, str], None]
) -> tuple[tuple[dict[str, Any], ...] | None, int]:
    """Check a list of chat messages named `where`: ``(messages or None, content characters)``."""
    if not isinstance(messages, list):
        fault(where, f"must be a list of message objects (got {_show(messages)})")
        return None, 0
    if not messages:
        fault(where, "must not be empty")
        return None, 0
    counter = _FaultCounter(fault)
    chars = 0
    for index, message in enumerate(messages):
        chars += _check_message(f"{where}[{index}]", message, counter)
    if counter.count:
        return None, chars
    return tuple(messages), chars


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
