"""The inference input validator, run against real JSONL files on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ai_assets.lib.llm.items import InferenceItem
from ai_assets.lib.llm.validation import (
    MAX_WARNINGS_PER_KEY,
    InputProblem,
    InputValidationError,
    ValidatedInput,
    validate_jsonl,
)


def write(tmp_path: Path, *lines: dict[str, Any] | str | bytes, ending: bytes = b"\n", name: str = "in.jsonl") -> Path:
    """One line per argument: dicts become JSON, str/bytes are written as they are."""
    path = tmp_path / name
    encoded = [
        json.dumps(line).encode() if isinstance(line, dict) else line if isinstance(line, bytes) else line.encode()
        for line in lines
    ]
    path.write_bytes(b"".join(line + ending for line in encoded))
    return path


def where(result: ValidatedInput) -> list[tuple[str, str | None]]:
    """(location, field) of every problem, in order."""
    return [(problem.location, problem.field) for problem in result.problems]


def only_problem(result: ValidatedInput) -> InputProblem:
    assert len(result.problems) == 1, [str(problem) for problem in result.problems]
    return result.problems[0]


def check_one(tmp_path: Path, record: dict[str, Any] | str | bytes, **limits: int) -> InputProblem:
    """Validate a file of one good line then `record` on line 2; return the one problem (on line 2)."""
    path = write(tmp_path, {"id": "good", "prompt": "hi"}, record)
    result = validate_jsonl(path, **limits)
    problem = only_problem(result)
    assert problem.location == f"{path}:2"
    assert [item.id for item in result.items] == ["good"]
    assert result.lines == 2
    return problem


# --- valid input ------------------------------------------------------------------------------


def test_valid_lines_become_items_with_every_option(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"id": "a", "prompt": "Hello"},
        {
            "id": "b",
            "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
            "model": "small",
            "max_tokens": 64,
            "temperature": 1,
            "response_format": {"type": "json_object"},
            "metadata": {"source": "x", "n": 1},
        },
    )
    result = validate_jsonl(path)
    assert result.problems == []
    assert result.lines == 2
    assert result.path == path
    first, second = result.items
    assert first == InferenceItem(id="a", messages=({"role": "user", "content": "Hello"},), line=1)
    assert second.id == "b" and second.line == 2
    assert second.messages == ({"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"})
    assert second.model == "small"
    assert second.max_tokens == 64
    assert second.temperature == 1.0 and isinstance(second.temperature, float)
    assert second.response_format == {"type": "json_object"}
    assert second.metadata == {"source": "x", "n": 1}
    result.raise_if_unusable(strict=True)  # nothing wrong: no error


def test_integer_ids_become_strings(tmp_path: Path) -> None:
    path = write(tmp_path, {"id": 7, "prompt": "a"}, {"id": 0, "prompt": "b"}, {"id": -3, "prompt": "c"})
    result = validate_jsonl(path)
    assert result.problems == []
    assert [item.id for item in result.items] == ["7", "0", "-3"]


def test_unknown_keys_are_ignored_not_passed_on(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"id": "a", "prompt": "p", "temprature": 0.5, "extra": {"x": 1}},
        {"id": "b", "prompt": "p", "extra": 2},
    )
    result = validate_jsonl(path)
    assert result.problems == []
    assert result.ignored_keys == {"temprature": 1, "extra": 1}
    kwargs = result.items[0].request_kwargs("default-model")
    assert kwargs == {"model": "default-model", "messages": [{"role": "user", "content": "p"}]}
    assert result.items[0].temperature is None


def test_unknown_keys_warn_per_line_with_a_suggestion(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"id": "a", "prompt": "p", "temprature": 0.5},
        {"id": "b", "prompt": "p"},
        {"id": "c", "prompt": "p", "Model": "m", "max_token": 5, "source": "crm"},
        {"id": "d", "prompt": "p", "temprature": 0.7},
    )
    result = validate_jsonl(path)
    assert result.problems == [] and len(result.items) == 4  # a warning does not invalidate a line
    assert [str(warning) for warning in result.warnings] == [
        f"{path}:1: temprature: unknown field, ignored (did you mean 'temperature'?)",
        f"{path}:3: Model: unknown field, ignored (did you mean 'model'?)",
        f"{path}:3: max_token: unknown field, ignored (did you mean 'max_tokens'?)",
        f"{path}:3: source: unknown field, ignored; known fields: id, max_tokens, messages, metadata, model, "
        "prompt, response_format, temperature",
        f"{path}:4: temprature: unknown field, ignored (did you mean 'temperature'?)",
    ]


def test_unknown_key_warnings_are_bounded_per_key(tmp_path: Path) -> None:
    lines = [{"id": i, "prompt": "p", "exported_at": "2024"} for i in range(1000)]
    lines[500]["bad\nkey"] = 1
    result = validate_jsonl(write(tmp_path, *lines))
    path = tmp_path / "in.jsonl"
    listed = [w.location for w in result.warnings if w.field == "exported_at"]
    assert listed == [f"{path}:{n}" for n in range(1, MAX_WARNINGS_PER_KEY + 1)] + [f"{path}:1000"]
    assert result.warnings[-1].message == (
        f"unknown field also on {1000 - MAX_WARNINGS_PER_KEY:,} more lines up to this one, ignored"
    )
    odd = [w for w in result.warnings if w.location == f"{path}:501"]
    assert [w.field for w in odd] == ["'bad\\nkey'"]  # quoted: one warning stays one log line
    assert result.ignored_keys == {"exported_at": 1, "bad\nkey": 501}


def test_null_options_mean_not_given(tmp_path: Path) -> None:
    record = {
        "id": "a",
        "prompt": "p",
        "messages": None,
        "model": None,
        "max_tokens": None,
        "temperature": None,
        "response_format": None,
        "metadata": None,
    }
    result = validate_jsonl(write(tmp_path, record))
    assert result.problems == []
    assert result.items[0] == InferenceItem(id="a", messages=({"role": "user", "content": "p"},), line=1)


def test_every_role_and_content_parts_are_accepted(tmp_path: Path) -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "developer", "content": [{"type": "text", "text": "d"}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe"},
                {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "assistant", "content": ""},
    ]
    result = validate_jsonl(write(tmp_path, {"id": "a", "messages": messages}))
    assert result.problems == []
    # Messages, including keys beyond role/content, go to the server unchanged.
    assert result.items[0].messages == tuple(messages)


def test_blank_lines_are_ignored_and_lines_keep_their_physical_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "", {"id": "a", "prompt": "p"}, "   ", "\t", {"id": 5}, "")
    result = validate_jsonl(path)
    assert result.lines == 2
    assert [(item.id, item.line) for item in result.items] == [("a", 2)]
    assert where(result) == [(f"{path}:5", None)]


def test_crlf_line_endings(tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "a", "prompt": "p"}, "", {"id": "b", "prompt": "q"}, "{bad", ending=b"\r\n")
    result = validate_jsonl(path)
    assert [(item.id, item.line) for item in result.items] == [("a", 1), ("b", 3)]
    assert result.items[1].messages[0]["content"] == "q"  # no stray "\r"
    problem = only_problem(result)
    assert problem.location == f"{path}:4" and problem.message.startswith("invalid JSON:")


def test_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "p"}\n{"id": "b", "prompt": "q"}')
    result = validate_jsonl(path)
    assert [item.id for item in result.items] == ["a", "b"]


def test_bom_on_the_first_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "p"}\r\n{"id": "b", "prompt": "q"}\r\n')
    result = validate_jsonl(path)
    assert result.problems == []
    assert [item.id for item in result.items] == ["a", "b"]


def test_bom_on_a_later_line_is_invalid_json(tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "a", "prompt": "p"}, b'\xef\xbb\xbf{"id": "b", "prompt": "q"}')
    problem = only_problem(validate_jsonl(path))
    assert problem.location == f"{path}:2" and problem.field is None
    assert "BOM" in problem.message


# --- whole-line problems ---------------------------------------------------------------------


def test_invalid_utf8_names_the_byte_offset(tmp_path: Path) -> None:
    first = json.dumps({"id": "a", "prompt": "p"}).encode()
    path = write(tmp_path, first, b'{"id": "b", "prompt": "caf\xe9"}')
    result = validate_jsonl(path)
    problem = only_problem(result)
    assert problem.location == f"{path}:2" and problem.field is None
    offset = len(b'{"id": "b", "prompt": "caf')
    assert problem.message == (
        f"not valid UTF-8: byte 0xe9 at offset {offset} of the line (offset {len(first) + 1 + offset} in the file)"
    )
    assert [item.id for item in result.items] == ["a"]


def test_invalid_json_gives_the_parser_message_and_column(tmp_path: Path) -> None:
    problem = check_one(tmp_path, '{"id": "b" "prompt": "p"}')
    assert problem.field is None
    assert problem.message == "invalid JSON: Expecting ',' delimiter (column 12)"


@pytest.mark.parametrize(
    ("line", "got"), [("[1, 2]", "array"), ('"text"', "string"), ("3", "number"), ("null", "null"), ("true", "boolean")]
)
def test_a_line_that_is_not_an_object(tmp_path: Path, line: str, got: str) -> None:
    problem = check_one(tmp_path, line)
    assert (problem.field, problem.message) == (None, f"expected a JSON object, got {got}")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_constants_are_rejected(tmp_path: Path, literal: str) -> None:
    problem = check_one(tmp_path, f'{{"id": "b", "prompt": "p", "temperature": {literal}}}')
    assert (problem.field, problem.message) == (None, f"invalid JSON: {literal} is not valid JSON")


def test_deep_nesting_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    problem = check_one(tmp_path, '{"id": "b", "prompt": "p", "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert (problem.field, problem.message) == (None, "invalid JSON: nested too deeply")


def test_unpaired_surrogate_escape_is_rejected(tmp_path: Path) -> None:
    problem = check_one(tmp_path, r'{"id": "b", "prompt": "bad \ud800 text"}')
    assert problem.field is None
    assert problem.message == "unpaired surrogate escape \\ud800: the text cannot be encoded as UTF-8"
    # A proper pair is fine.
    result = validate_jsonl(write(tmp_path, r'{"id": "c", "prompt": "smile \ud83d\ude00"}', name="ok.jsonl"))
    assert result.problems == [] and result.items[0].messages[0]["content"] == "smile \U0001f600"


def test_a_line_over_max_line_bytes_is_not_parsed(tmp_path: Path) -> None:
    at_limit = json.dumps({"id": "fits", "prompt": "x" * 50})
    limit = len(at_limit)
    over = json.dumps({"id": "over", "prompt": "x" * 51})  # limit + 1 bytes, valid JSON
    broken = "{" + "y" * 3_000_000  # invalid JSON, spans many read chunks
    path = write(tmp_path, at_limit, over, broken, {"id": "after", "prompt": "p"}, ending=b"\r\n")
    result = validate_jsonl(path, max_line_bytes=limit)
    assert [item.id for item in result.items] == ["fits", "after"]
    assert len(over) == limit + 1
    assert result.lines == 4
    assert [str(problem) for problem in result.problems] == [
        f"{path}:2: line is {limit + 1:,} bytes, over the limit of {limit:,}; not parsed",
        f"{path}:3: line is 3,000,001 bytes, over the limit of {limit:,}; not parsed",
    ]


def test_an_oversize_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "p"}\n' + b"z" * 500)
    result = validate_jsonl(path, max_line_bytes=100)
    assert [str(problem) for problem in result.problems] == [
        f"{path}:2: line is 500 bytes, over the limit of 100; not parsed"
    ]
    assert [item.id for item in result.items] == ["a"]


# --- id ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "p"}, "missing"),
        ({"id": None, "prompt": "p"}, "must be a non-empty string or an integer (got null)"),
        ({"id": "", "prompt": "p"}, "must not be empty"),
        ({"id": "  ", "prompt": "p"}, "must not be empty"),
        ({"id": 1.5, "prompt": "p"}, "must be a non-empty string or an integer (got 1.5)"),
        ({"id": True, "prompt": "p"}, "must be a non-empty string or an integer (got boolean)"),
        ({"id": ["a"], "prompt": "p"}, "must be a non-empty string or an integer (got array)"),
        ({"id": {"a": 1}, "prompt": "p"}, "must be a non-empty string or an integer (got object)"),
    ],
)
def test_bad_ids(tmp_path: Path, record: dict[str, Any], message: str) -> None:
    problem = check_one(tmp_path, record)
    assert (problem.field, problem.message) == ("id", message)


def test_duplicate_ids_keep_the_first_and_name_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"id": "x", "prompt": "first"},
        {"id": "y", "prompt": "p"},
        {"id": "x", "prompt": "second"},
        {"id": 7, "prompt": "p"},
        {"id": "7", "prompt": "p"},
        {"id": "x", "prompt": "third"},
    )
    result = validate_jsonl(path)
    assert [(item.id, item.line) for item in result.items] == [("x", 1), ("y", 2), ("7", 4)]
    assert result.items[0].messages[0]["content"] == "first"
    assert [str(problem) for problem in result.problems] == [
        f"{path}:3: id: duplicate id 'x' (first at line 1)",
        f"{path}:5: id: duplicate id '7' (first at line 4)",
        f"{path}:6: id: duplicate id 'x' (first at line 1)",
    ]


def test_an_id_is_claimed_by_its_first_line_even_when_that_line_is_invalid(tmp_path: Path) -> None:
    path = write(
        tmp_path, {"id": "x", "prompt": "p", "max_tokens": 0}, {"id": "x", "prompt": "p"}, {"id": "z", "prompt": "p"}
    )
    result = validate_jsonl(path)
    assert [item.id for item in result.items] == ["z"]
    assert where(result) == [(f"{path}:1", "max_tokens"), (f"{path}:2", "id")]
    assert result.problems[1].message == "duplicate id 'x' (first at line 1)"


# --- prompt / messages ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({"id": "b"}, None, "needs 'prompt' or 'messages'"),
        ({"id": "b", "prompt": None, "messages": None}, None, "needs 'prompt' or 'messages'"),
        (
            {"id": "b", "prompt": "p", "messages": [{"role": "user", "content": "c"}]},
            None,
            "has both 'prompt' and 'messages'; give exactly one",
        ),
        ({"id": "b", "prompt": ""}, "prompt", "must not be empty"),
        ({"id": "b", "prompt": " \n"}, "prompt", "must not be empty"),
        ({"id": "b", "prompt": 3}, "prompt", "must be a string (got 3)"),
        ({"id": "b", "prompt": ["p"]}, "prompt", "must be a string (got array)"),
        ({"id": "b", "messages": []}, "messages", "must not be empty"),
        ({"id": "b", "messages": "hi"}, "messages", "must be a list of message objects (got 'hi')"),
        ({"id": "b", "messages": {"role": "user"}}, "messages", "must be a list of message objects (got object)"),
        (
            {"id": "b", "messages": [{"role": "user", "content": "c"}, "hi"]},
            "messages[1]",
            "must be an object with 'role' and 'content' (got 'hi')",
        ),
        ({"id": "b", "messages": [{"role": "user", "content": "c"}, {"content": "c"}]}, "messages[1].role", "missing"),
        (
            {"id": "b", "messages": [{"role": "user", "content": "c"}, {"role": "bot", "content": "c"}]},
            "messages[1].role",
            "must be one of system, user, assistant, developer, tool (got 'bot')",
        ),
        (
            {"id": "b", "messages": [{"role": "User", "content": "c"}]},
            "messages[0].role",
            "must be one of system, user, assistant, developer, tool (got 'User')",
        ),
        (
            {"id": "b", "messages": [{"role": 1, "content": "c"}]},
            "messages[0].role",
            "must be one of system, user, assistant, developer, tool (got 1)",
        ),
        ({"id": "b", "messages": [{"role": "user"}]}, "messages[0].content", "missing"),
        (
            {"id": "b", "messages": [{"role": "user", "content": None}]},
            "messages[0].content",
            "must be a string or a list of content parts (got null)",
        ),
        (
            {"id": "b", "messages": [{"role": "assistant", "content": None}]},
            "messages[0].content",
            "must be a string or a list of content parts (got null)",
        ),
        (
            {"id": "b", "messages": [{"role": "user", "content": None, "tool_calls": [{"id": "c1"}]}]},
            "messages[0].content",
            "must be a string or a list of content parts (got null)",
        ),
        (
            {"id": "b", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            "must be a string or a list of content parts (got 5)",
        ),
        (
            {"id": "b", "messages": [{"role": "user", "content": {"type": "text"}}]},
            "messages[0].content",
            "must be a string or a list of content parts (got object)",
        ),
        (
            {"id": "b", "messages": [{"role": "user", "content": []}]},
            "messages[0].content",
            "must not be an empty list",
        ),
        (
            {"id": "b", "messages": [{"role": "user", "content": ["hi"]}]},
            "messages[0].content[0]",
            "must be an object with a 'type' (got 'hi')",
        ),
        (
            {"id": "b", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"text": "b"}]}]},
            "messages[0].content[1].type",
            "missing",
        ),
        (
            {"id": "b", "messages": [{"role": "user", "content": [{"type": 3}]}]},
            "messages[0].content[0].type",
            "must be a non-empty string (got 3)",
        ),
        (
            {"id": "b", "messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]},
            "messages[0].content[0].text",
            "must be a string (got null)",
        ),
    ],
)
def test_bad_prompt_or_messages(tmp_path: Path, record: dict[str, Any], field: str | None, message: str) -> None:
    problem = check_one(tmp_path, record)
    assert (problem.field, problem.message) == (field, message)


def test_every_bad_message_in_a_line_is_reported(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "ok"}, {"role": "robot", "content": 1}, {"content": "x"}]
    path = write(tmp_path, {"id": "a", "messages": messages})
    result = validate_jsonl(path)
    assert result.items == []
    assert where(result) == [
        (f"{path}:1", "messages[1].role"),
        (f"{path}:1", "messages[1].content"),
        (f"{path}:1", "messages[2].role"),
    ]


# --- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"model": ""}, "model", "must be a non-empty string (got '')"),
        ({"model": "  "}, "model", "must be a non-empty string (got '  ')"),
        ({"model": 4}, "model", "must be a non-empty string (got 4)"),
        ({"max_tokens": 0}, "max_tokens", "must be a positive integer (got 0)"),
        ({"max_tokens": -5}, "max_tokens", "must be a positive integer (got -5)"),
        ({"max_tokens": True}, "max_tokens", "must be a positive integer (got boolean)"),
        ({"max_tokens": 10.0}, "max_tokens", "must be a positive integer (got 10.0)"),
        ({"max_tokens": "10"}, "max_tokens", "must be a positive integer (got '10')"),
        ({"temperature": -0.1}, "temperature", "must be from 0 to 2 (got -0.1)"),
        ({"temperature": 2.01}, "temperature", "must be from 0 to 2 (got 2.01)"),
        ({"temperature": 3}, "temperature", "must be from 0 to 2 (got 3)"),
        ({"temperature": "0.5"}, "temperature", "must be a number from 0 to 2 (got '0.5')"),
        ({"temperature": False}, "temperature", "must be a number from 0 to 2 (got boolean)"),
        ({"response_format": "json"}, "response_format", "must be an object (got 'json')"),
        ({"response_format": {}}, "response_format.type", "missing"),
        ({"response_format": {"type": 1}}, "response_format.type", "must be a non-empty string (got 1)"),
        ({"response_format": {"type": ""}}, "response_format.type", "must be a non-empty string (got '')"),
        ({"metadata": ["a"]}, "metadata", "must be an object (got array)"),
        ({"metadata": "a"}, "metadata", "must be an object (got 'a')"),
    ],
)
def test_bad_options(tmp_path: Path, options: dict[str, Any], field: str, message: str) -> None:
    problem = check_one(tmp_path, {"id": "b", "prompt": "p", **options})
    assert (problem.field, problem.message) == (field, message)


@pytest.mark.parametrize("temperature", [0, 0.0, 2, 2.0, 0.7])
def test_temperature_bounds_are_inclusive(tmp_path: Path, temperature: float) -> None:
    result = validate_jsonl(write(tmp_path, {"id": "a", "prompt": "p", "temperature": temperature}))
    assert result.problems == []
    assert result.items[0].temperature == float(temperature)


def test_all_problems_of_one_line_are_reported_in_field_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "id": True,
            "prompt": "",
            "model": "",
            "max_tokens": 0,
            "temperature": 5,
            "response_format": [],
            "metadata": 1,
        },
    )
    result = validate_jsonl(path)
    assert result.items == [] and result.lines == 1
    assert [field for _, field in where(result)] == [
        "id",
        "prompt",
        "model",
        "max_tokens",
        "temperature",
        "response_format",
        "metadata",
    ]
    assert {location for location, _ in where(result)} == {f"{path}:1"}


# --- prompt size -------------------------------------------------------------------------------------


def test_prompt_size_limit_is_inclusive(tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "fits", "prompt": "x" * 100}, {"id": "over", "prompt": "x" * 101})
    result = validate_jsonl(path, max_prompt_chars=100)
    assert [item.id for item in result.items] == ["fits"]
    assert [str(problem) for problem in result.problems] == [
        f"{path}:2: prompt: 101 characters of content, over the limit of 100"
    ]


def test_message_size_counts_every_message_and_text_part(tmp_path: Path) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 5000}}
    fits = [
        {"role": "system", "content": "s" * 40},
        {"role": "user", "content": [{"type": "text", "text": "t" * 30}, image, {"type": "text", "text": "u" * 30}]},
    ]
    over = [*fits, {"role": "assistant", "content": "a"}]
    path = write(tmp_path, {"id": "fits", "messages": fits}, {"id": "over", "messages": over})
    result = validate_jsonl(path, max_prompt_chars=100)
    assert [item.id for item in result.items] == ["fits"]
    problem = only_problem(result)
    assert (problem.location, problem.field) == (f"{path}:2", "messages")
    assert problem.message == "101 characters of content, over the limit of 100"


def test_default_prompt_limit_is_200k_characters(tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "fits", "prompt": "x" * 200_000}, {"id": "over", "prompt": "é" * 200_001})
    result = validate_jsonl(path)
    assert [item.id for item in result.items] == ["fits"]
    assert only_problem(result).message == "200,001 characters of content, over the limit of 200,000"


@pytest.mark.parametrize("limits", [{"max_prompt_chars": 0}, {"max_line_bytes": -1}, {"max_line_bytes": True}])
def test_limits_must_be_positive_integers(tmp_path: Path, limits: dict[str, Any]) -> None:
    path = write(tmp_path, {"id": "a", "prompt": "p"})
    with pytest.raises(ValueError, match="must be a positive integer"):
        validate_jsonl(path, **limits)


# --- mixed files, strict mode, unusable input -----------------------------------------------------------


def mixed_file(tmp_path: Path) -> Path:
    return write(
        tmp_path,
        {"id": "a", "prompt": "p"},
        "not json",
        {"id": "b", "messages": [{"role": "user", "content": "c"}]},
        {"id": "c", "prompt": "p", "max_tokens": -1},
        "",
        {"id": "d", "prompt": "p"},
    )


def test_valid_lines_are_kept_when_others_are_bad(tmp_path: Path) -> None:
    path = mixed_file(tmp_path)
    result = validate_jsonl(path)
    assert [(item.id, item.line) for item in result.items] == [("a", 1), ("b", 3), ("d", 6)]
    assert where(result) == [(f"{path}:2", None), (f"{path}:4", "max_tokens")]
    assert result.lines == 5
    result.raise_if_unusable(strict=False)  # some lines are usable: no error


def test_strict_mode_raises_naming_file_and_lines(tmp_path: Path) -> None:
    path = mixed_file(tmp_path)
    result = validate_jsonl(path)
    with pytest.raises(InputValidationError) as caught:
        result.raise_if_unusable(strict=True)
    text = str(caught.value)
    assert text.splitlines() == [
        f"{path}: 2 of 5 lines invalid (2 problems); strict mode uses none",
        f"  {path}:2: invalid JSON: Expecting value (column 1)",
        f"  {path}:4: max_tokens: must be a positive integer (got -1)",
    ]
    assert caught.value.problems == result.problems
    assert isinstance(caught.value, ValueError)


def test_all_invalid_raises_even_when_not_strict(tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "a"}, "[]", "", {"prompt": "p"})
    result = validate_jsonl(path)
    assert result.items == []
    with pytest.raises(InputValidationError) as caught:
        result.raise_if_unusable(strict=False)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: no valid request among 3 lines"
    assert lines[1:] == [
        f"  {path}:1: needs 'prompt' or 'messages'",
        f"  {path}:2: expected a JSON object, got array",
        f"  {path}:4: id: missing",
    ]


def test_an_empty_file_is_unusable(tmp_path: Path) -> None:
    path = write(tmp_path, "", "  ")
    result = validate_jsonl(path)
    assert (result.items, result.problems, result.lines) == ([], [], 0)
    with pytest.raises(InputValidationError, match="no valid request among 0 lines"):
        result.raise_if_unusable(strict=False)


def test_the_error_lists_twenty_problems_and_counts_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path, *[{"id": f"i{n}"} for n in range(25)], {"id": "ok", "prompt": "p"})
    result = validate_jsonl(path)
    with pytest.raises(InputValidationError) as caught:
        result.raise_if_unusable(strict=True)
    lines = str(caught.value).splitlines()
    assert len(lines) == 1 + 20 + 1
    assert lines[1] == f"  {path}:1: needs 'prompt' or 'messages'"
    assert lines[20] == f"  {path}:20: needs 'prompt' or 'messages'"
    assert lines[-1] == "  ... and 5 more"
    assert len(caught.value.problems) == 25


def test_problem_text_format() -> None:
    assert str(InputProblem("in.jsonl:3", "messages[1].role", "missing")) == "in.jsonl:3: messages[1].role: missing"
    assert str(InputProblem("in.jsonl:4", None, "invalid JSON: x")) == "in.jsonl:4: invalid JSON: x"


def test_a_missing_file_names_its_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "requests.jsonl"
    with pytest.raises(FileNotFoundError) as caught:
        validate_jsonl(path)
    assert str(path) in str(caught.value)
