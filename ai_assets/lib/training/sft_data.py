"""What the instruction-tuned LLM is fine-tuned on: conversations whose last turn is the answer to learn,
read from JSONL, deduplicated and split so that no prompt is in both the training and the validation split.

The file is checked strictly, before any GPU is asked for, and every problem is reported at once by
file:line and field: a file fixed one error per attempt would cost one training launch per error. A
prompt identifies an example (`SftExample.key`): the same question with two answers would teach both and
could land in both splits, so the first one wins. Each prompt goes to a split by a hash of its key, so an
example's split does not move when data is added and validation scores stay comparable across versions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

__all__ = [
    "ROLES",
    "SftDataError",
    "SftExample",
    "check_lengths",
    "content_version",
    "dedupe",
    "jsonl_text",
    "read_sft_jsonl",
    "split",
]

ROLES = ("system", "user", "assistant")
# Enough to fix a file in one pass without burying the first problems under thousands of lines.
MAX_LISTED_ERRORS = 20
# Fewer for examples too long: the trainer finds those in its own process, and the launcher's error keeps
# only the process's last 20 lines, which must still hold the message's first line.
MAX_LISTED_TOO_LONG = 10


class SftDataError(ValueError):
    """Instruction data that cannot train or validate a model; raised before any training starts."""


def _non_empty_string(value: Any) -> str | None:
    """The problem with `value` as message text, or None."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "must not be empty or whitespace"
    return None


def _message_problems(messages: Sequence[tuple[Any, Any]]) -> list[tuple[str, str]]:
    """(field, problem) for each way `messages` is not a conversation the trainer can learn from: known
    roles and non-empty text, an optional system message, then user and assistant alternating, ending with
    the assistant's answer."""
    if not messages:
        return [("messages", "must be a non-empty list of messages")]
    problems: list[tuple[str, str]] = []
    for index, (role, content) in enumerate(messages):
        if role not in ROLES:
            problems.append((f"messages[{index}].role", f"must be one of {', '.join(ROLES)}, got {json.dumps(role)}"))
        if problem := _non_empty_string(content):
            problems.append((f"messages[{index}].content", problem))
    # The order is judged only once every message is readable: otherwise one bad role is reported twice.
    if problems:
        return problems
    roles = [role for role, _ in messages]
    start = 1 if roles[0] == "system" else 0
    for index in range(start, len(roles)):
        # Only the last turn is trained on; any other shape would be rendered by the chat template into a
        # prompt the model never sees when it is asked a question.
        expected = "user" if (index - start) % 2 == 0 else "assistant"
        if roles[index] == "system":
            problems.append((f"messages[{index}].role", '"system" is allowed only as the first message'))
        elif roles[index] != expected:
            problems.append(
                (
                    f"messages[{index}].role",
                    f'expected "{expected}", got "{roles[index]}": after an optional system message, user and '
                    "assistant alternate",
                )
            )
    if "user" not in roles:
        problems.append(("messages", 'no "user" message'))
    if roles[-1] != "assistant":
        problems.append(
            (f"messages[{len(roles) - 1}].role", f'the last message must be "assistant", got "{roles[-1]}"')
        )
    return problems


@dataclass(frozen=True)
class SftExample:
    """One conversation to learn: `messages` are (role, content) pairs ending with the assistant's answer;
    `source` is where it came from ("examples.jsonl:12"), `synthetic` whether a model wrote it.

    Raises:
        SftDataError: the messages do not form a learnable conversation (see `read_sft_jsonl`).
    """

    messages: tuple[tuple[str, str], ...]
    source: str
    synthetic: bool = False

    def __post_init__(self) -> None:
        # Lists from a generator would make the example unhashable and the frozen promise hollow.
        object.__setattr__(self, "messages", tuple((role, content) for role, content in self.messages))
        problems = _message_problems(self.messages)
        if problems:
            raise SftDataError(
                f"{self.source or 'example'}: " + "; ".join(f"{field}: {problem}" for field, problem in problems)
            )

    @property
    def prompt(self) -> tuple[tuple[str, str], ...]:
        """The messages before the final assistant turn: what the model sees."""
        return self.messages[:-1]

    @property
    def answer(self) -> str:
        """The final assistant message: what the model learns to say."""
        return self.messages[-1][1]

    def chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def prompt_chat(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.prompt]

    @cached_property
    def key(self) -> str:
        """A stable sha256 hex of the prompt: two examples asking the same thing share it."""
        canonical = json.dumps([list(message) for message in self.prompt], ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self, with_origin: bool = False) -> dict[str, Any]:
        row: dict[str, Any] = {"messages": self.chat()}
        if self.synthetic:
            row["synthetic"] = True
        if with_origin:
            row["origin"] = self.source
        return row


def _parse_row(row: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(messages, [(field, problem), ...]) for one JSON object in either accepted format."""
    chat_format = "messages" in row
    pair_format = "prompt" in row or "completion" in row
    if chat_format and pair_format:
        return [], [("messages", 'both "messages" and "prompt"/"completion" given; use one format per line')]
    if not chat_format and not pair_format:
        return [], [
            (
                "messages",
                'neither chat format {"messages": [...]} nor {"prompt": ..., "completion": ...}; '
                f"keys found: {sorted(row) or 'none'}",
            )
        ]
    problems: list[tuple[str, str]] = []
    if pair_format:
        messages: list[tuple[str, str]] = []
        if "system" in row:
            if problem := _non_empty_string(row["system"]):
                problems.append(("system", problem))
            messages.append(("system", row["system"]))
        for field, role in (("prompt", "user"), ("completion", "assistant")):
            if field not in row:
                problems.append((field, "missing"))
            elif problem := _non_empty_string(row[field]):
                problems.append((field, problem))
            messages.append((role, row.get(field)))
        return messages, problems

    raw = row["messages"]
    if not isinstance(raw, list) or not raw:
        kind = "an empty list" if isinstance(raw, list) else type(raw).__name__
        return [], [("messages", f"must be a non-empty list of messages, got {kind}")]
    not_objects = [
        (f"messages[{index}]", f"must be an object with role and content, got {type(message).__name__}")
        for index, message in enumerate(raw)
        if not isinstance(message, dict)
    ]
    if not_objects:
        return [], not_objects
    messages = [(message.get("role"), message.get("content")) for message in raw]
    return messages, _message_problems(messages)


def read_sft_jsonl(path: Path) -> list[SftExample]:
    """Every example in `path`, one JSON object per non-blank line, in file order.

    A line is either `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}` or
    `{"prompt": str, "completion": str}` with an optional `"system": str`; an optional `"synthetic": bool`
    marks model-written data, and an optional `"origin": str` (written by `jsonl_text(with_origin=True)`)
    is where the example was first read, which later errors then name instead of this file. Contents must
    be non-empty strings; the roles are an optional system message, then user and assistant alternating,
    ending with the assistant's answer. Other keys are ignored.

    Raises:
        SftDataError: a missing, unreadable or empty file, or every problem in it (the first
            `MAX_LISTED_ERRORS`, then a count), each as `path:line: field: problem`.
    """
    try:
        # utf-8-sig: files saved by spreadsheet tools start with a byte-order mark that is no JSON.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SftDataError(f"{path}: training data file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SftDataError(f"{path}: cannot read training data: {error}") from None

    examples: list[SftExample] = []
    errors: list[str] = []
    # Only "\n" ends a JSONL line: str.splitlines would also split on U+2028 and friends, which JSON writers
    # leave unescaped inside strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            errors.append(f"{where}: json: invalid JSON ({error})")
            continue
        if not isinstance(row, dict):
            errors.append(f"{where}: json: expected an object, got {type(row).__name__}")
            continue
        messages, problems = _parse_row(row)
        synthetic = row.get("synthetic", False)
        if not isinstance(synthetic, bool):
            problems.append(("synthetic", f"must be true or false, got {json.dumps(synthetic)}"))
        origin = row.get("origin", where)
        if not isinstance(origin, str) or not origin:
            problems.append(("origin", f"must be a non-empty string, got {json.dumps(origin)}"))
        if problems:
            errors.extend(f"{where}: {field}: {problem}" for field, problem in problems)
            continue
        examples.append(SftExample(tuple(messages), source=origin, synthetic=synthetic))

    if errors:
        listed = errors[:MAX_LISTED_ERRORS]
        if len(errors) > MAX_LISTED_ERRORS:
            listed.append(f"... and {len(errors) - MAX_LISTED_ERRORS} more")
        raise SftDataError(f"{path}: {len(errors)} problem(s) in the training data:\n" + "\n".join(listed))
    if not examples:
        raise SftDataError(f"{path}: no examples (the file is empty or blank)")
    return examples


def dedupe(examples: Iterable[SftExample]) -> tuple[list[SftExample], int]:
    """(the first example of each prompt, in order; how many later ones were dropped).

    Same prompt, same key, whatever the answers: a second answer would teach the model two answers to one
    question, and could put that question in both splits.
    """
    kept: list[SftExample] = []
    seen: set[str] = set()
    dropped = 0
    for example in examples:
        if example.key in seen:
            dropped += 1
            continue
        seen.add(example.key)
        kept.append(example)
    return kept, dropped


def _unit_hash(text: str) -> float:
    """A stable number in [0, 1) for `text`."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


def split(
    examples: Sequence[SftExample], validation_fraction: float, seed: str = ""
) -> tuple[list[SftExample], list[SftExample]]:
    """(train, validation), each in input order: an example is in validation when the hash of `seed` and
    its prompt key falls below `validation_fraction`, so adding data never moves an existing example.

    Examples sharing a prompt share a split. When no prompt lands in validation but there are several, the
    one with the smallest hash goes there (and the largest stays in training when all would leave it), so
    a small set still has something to train and to validate on.

    Raises:
        SftDataError: `validation_fraction` outside (0, 1), or fewer than two distinct prompts.
    """
    if not 0 < validation_fraction < 1:
        raise SftDataError(f"LLM_VALIDATION_FRACTION must be between 0 and 1 (exclusive), got {validation_fraction}")
    position = {example.key: _unit_hash(f"{seed}\x00{example.key}") for example in examples}
    if len(position) < 2:
        raise SftDataError(
            f"cannot split {len(examples)} example(s) with {len(position)} distinct prompt(s) into training "
            "and validation: at least 2 distinct prompts are needed; add examples"
        )
    validation_keys = {key for key, value in position.items() if value < validation_fraction}
    if not validation_keys:
        validation_keys = {min(position, key=position.__getitem__)}
    elif len(validation_keys) == len(position):
        validation_keys.discard(max(position, key=position.__getitem__))
    train = [example for example in examples if example.key not in validation_keys]
    validation = [example for example in examples if example.key in validation_keys]
    return train, validation


def check_lengths(examples: Iterable[SftExample], count_tokens: Callable[[SftExample], int], max_tokens: int) -> None:
    """Refuse examples whose tokenised conversation is longer than `max_tokens`.

    Truncating them instead would cut the answer, the only part trained on, and teach half-answers.

    Raises:
        SftDataError: naming each such example by its source, with its token count and the limit.
    """
    too_long = [(example.source, count) for example in examples if (count := count_tokens(example)) > max_tokens]
    if not too_long:
        return
    listed = [f"{source}: {count} tokens > {max_tokens}" for source, count in too_long[:MAX_LISTED_TOO_LONG]]
    if len(too_long) > MAX_LISTED_TOO_LONG:
        listed.append(f"... and {len(too_long) - MAX_LISTED_TOO_LONG} more")
    raise SftDataError(
        f"{len(too_long)} example(s) longer than max_seq_len ({max_tokens} tokens); shorten them or raise "
        "max_seq_len:\n" + "\n".join(listed)
    )


def _json_line(example: SftExample, with_origin: bool = False) -> str:
    # Sorted keys and fixed separators: the same examples are the same bytes, so versions and caches agree.
    return json.dumps(example.to_json(with_origin), ensure_ascii=False, sort_keys=True)


def jsonl_text(examples: Iterable[SftExample], *, with_origin: bool = False) -> str:
    """The examples as JSONL, one per line, in a canonical form: `read_sft_jsonl` reads it back to the same
    examples, and the same examples always give the same bytes. `with_origin`: each line also keeps the
    example's `source`, so a file derived from the user's (a split) still names the user's file:line."""
    return "".join(_json_line(example, with_origin) + "\n" for example in examples)


def content_version(examples: Iterable[SftExample]) -> str:
    """The data version: a hash of the examples' content in order (not of where they were read from)."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update((_json_line(example) + "\n").encode())
    return digest.hexdigest()[:16]
