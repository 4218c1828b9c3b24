"""The OpenAI Batch API formats: batch input lines validated into items, batch output lines written and read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from ai_assets.lib.inference.files import OUTPUT_FORMATS, read_outputs, write_outputs
from ai_assets.lib.llm.items import InferenceItem, OutputRow
from ai_assets.lib.llm.validation import BATCH_FORMAT, INPUT_FORMATS, REQUESTS_FORMAT, ValidatedInput, validate_jsonl

URL = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]


def write(tmp_path: Path, *lines: dict[str, Any] | str, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((json.dumps(line) if isinstance(line, dict) else line) + "\n" for line in lines))
    return path


def batch_line(custom_id: Any = "r1", **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": URL, "body": {"messages": HI, **body}}


def problems(result: ValidatedInput) -> list[str]:
    return [str(problem) for problem in result.problems]


def check_line(tmp_path: Path, record: dict[str, Any], **limits: int) -> list[str]:
    """Validate a good batch line, then `record` on line 2; return the problems (all on line 2)."""
    path = write(tmp_path, batch_line("good"), record)
    result = validate_jsonl(path, **limits)
    assert result.format == BATCH_FORMAT
    assert [item.id for item in result.items] == ["good"]
    assert result.lines == 2
    return [text.replace(f"{path}:", "L") for text in problems(result)]


# --- detection --------------------------------------------------------------------------------


def test_formats_are_named() -> None:
    assert INPUT_FORMATS == ("requests", "batch")
    assert OUTPUT_FORMATS == ("rows", "batch")


def test_a_custom_id_on_the_first_object_makes_a_batch_file(tmp_path: Path) -> None:
    path = write(tmp_path, "", "not json", "[1, 2]", batch_line("r1"), batch_line("r2"))
    result = validate_jsonl(path)
    assert result.format == "batch"
    assert [item.id for item in result.items] == ["r1", "r2"]
    # the lines before the first object are whole-line problems, whatever the format
    assert problems(result) == [
        f"{path}:2: invalid JSON: Expecting value (column 1)",
        f"{path}:3: expected a JSON object, got array",
    ]


def test_a_first_object_without_custom_id_makes_a_requests_file(tmp_path: Path) -> None:
    result = validate_jsonl(write(tmp_path, {"id": "a", "prompt": "hi"}))
    assert result.format == "requests"
    assert [item.id for item in result.items] == ["a"]


def test_a_file_without_any_object_counts_as_requests(tmp_path: Path) -> None:
    assert validate_jsonl(write(tmp_path, "oops")).format == "requests"


def test_validated_input_defaults_to_the_requests_format(tmp_path: Path) -> None:
    assert ValidatedInput(items=[], problems=[], lines=0, path=tmp_path).format == REQUESTS_FORMAT


# --- valid batch lines ------------------------------------------------------------------------


def test_a_batch_line_becomes_an_item(tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}]
    record = {
        "custom_id": "r1",
        "method": "POST",
        "url": URL,
        "body": {
            "model": "gpt-4o-mini",
            "messages": messages,
            "max_tokens": 64,
            "temperature": 1,
            "response_format": {"type": "json_object"},
        },
    }
    result = validate_jsonl(write(tmp_path, record))
    assert result.problems == [] and result.warnings == []
    assert result.items == [
        InferenceItem(
            id="r1",
            messages=tuple(messages),
            line=1,
            model="gpt-4o-mini",
            max_tokens=64,
            temperature=1.0,
            response_format={"type": "json_object"},
            metadata=None,
            extra=None,
        )
    ]
    assert isinstance(result.items[0].temperature, float)


def test_other_body_keys_pass_through_unchanged_in_extra(tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    extra = {
        "top_p": 0.5,
        "seed": 7,
        "stop": ["\n"],
        "tools": tools,
        "tool_choice": "auto",
        "max_completion_tokens": 10,
        "logprobs": True,
        "user": "u1",
        "metadata": {"k": "v"},
    }
    line = batch_line("r1", model="m", stream=False, n=1, prompt=None, **extra)
    result = validate_jsonl(write(tmp_path, line))
    assert result.problems == [] and result.warnings == []
    (item,) = result.items
    assert item.extra == extra  # stream, n and a null prompt are checked here, not passed on
    assert item.metadata is None  # the body's metadata is a request option, not ours
    assert item.request_kwargs("default") == {**extra, "model": "m", "messages": HI}


def test_request_kwargs_of_a_batch_item(tmp_path: Path) -> None:
    line = batch_line("r1", max_tokens=5, temperature=0, seed=3, top_p=0.9)
    (item,) = validate_jsonl(write(tmp_path, line)).items
    assert item.request_kwargs("fallback") == {
        "seed": 3,
        "top_p": 0.9,
        "model": "fallback",
        "messages": HI,
        "max_tokens": 5,
        "temperature": 0.0,
    }


def test_a_null_body_option_means_not_given(tmp_path: Path) -> None:
    line = batch_line("r1", model=None, max_tokens=None, temperature=None, response_format=None)
    (item,) = validate_jsonl(write(tmp_path, line)).items
    assert (item.model, item.max_tokens, item.temperature, item.response_format, item.extra) == (
        None,
        None,
        None,
        None,
        None,
    )


# --- faults of a batch line -------------------------------------------------------------------


def test_custom_id_missing(tmp_path: Path) -> None:
    record = batch_line()
    del record["custom_id"]
    assert check_line(tmp_path, record) == ["L2: custom_id: missing"]


@pytest.mark.parametrize(
    ("custom_id", "message"),
    [
        (7, "must be a string, as the Batch API requires (got the integer 7)"),
        (None, "must be a non-empty string (got null)"),
        (True, "must be a non-empty string (got boolean)"),
        (["a"], "must be a non-empty string (got array)"),
        ("", "must not be empty"),
        ("  ", "must not be empty"),
    ],
)
def test_custom_id_must_be_a_non_empty_string(tmp_path: Path, custom_id: Any, message: str) -> None:
    assert check_line(tmp_path, batch_line(custom_id)) == [f"L2: custom_id: {message}"]


def test_duplicate_custom_id_names_the_first_line(tmp_path: Path) -> None:
    path = write(tmp_path, batch_line("a"), batch_line("b"), batch_line("a"), batch_line("b", temperature=9))
    result = validate_jsonl(path)
    assert [item.id for item in result.items] == ["a", "b"]
    assert problems(result) == [
        f"{path}:3: custom_id: duplicate custom_id 'a' (first at line 1)",
        f"{path}:4: custom_id: duplicate custom_id 'b' (first at line 2)",
        f"{path}:4: body.temperature: must be from 0 to 2 (got 9)",
    ]


def test_a_custom_id_is_claimed_by_an_invalid_line(tmp_path: Path) -> None:
    path = write(tmp_path, batch_line("a", max_tokens=0), batch_line("a"))
    result = validate_jsonl(path)
    assert result.items == []
    assert problems(result) == [
        f"{path}:1: body.max_tokens: must be a positive integer (got 0)",
        f"{path}:2: custom_id: duplicate custom_id 'a' (first at line 1)",
    ]


def test_method_must_be_post(tmp_path: Path) -> None:
    missing = batch_line()
    del missing["method"]
    assert check_line(tmp_path, missing) == ["L2: method: missing"]
    assert check_line(tmp_path, {**batch_line(), "method": "GET"}) == ["L2: method: must be 'POST' (got 'GET')"]
    assert check_line(tmp_path, {**batch_line(), "method": "post"}) == ["L2: method: must be 'POST' (got 'post')"]


def test_url_must_be_chat_completions(tmp_path: Path) -> None:
    missing = batch_line()
    del missing["url"]
    assert check_line(tmp_path, missing) == ["L2: url: missing"]
    assert check_line(tmp_path, {**batch_line(), "url": "/v1/embeddings"}) == [
        "L2: url: unsupported '/v1/embeddings': batch inference sends chat completions, "
        "url must be /v1/chat/completions"
    ]


def test_body_must_be_an_object(tmp_path: Path) -> None:
    missing = batch_line()
    del missing["body"]
    assert check_line(tmp_path, missing) == ["L2: body: missing"]
    assert check_line(tmp_path, {**batch_line(), "body": "hi"}) == ["L2: body: must be an object (got 'hi')"]
    assert check_line(tmp_path, {**batch_line(), "body": None}) == ["L2: body: must be an object (got null)"]
    assert check_line(tmp_path, {**batch_line(), "body": [1]}) == ["L2: body: must be an object (got array)"]


def test_every_top_level_fault_of_a_line_is_reported(tmp_path: Path) -> None:
    assert check_line(tmp_path, {"custom_id": 3, "method": "PUT", "url": "/v1/completions", "body": 1}) == [
        "L2: custom_id: must be a string, as the Batch API requires (got the integer 3)",
        "L2: method: must be 'POST' (got 'PUT')",
        "L2: url: unsupported '/v1/completions': batch inference sends chat completions, "
        "url must be /v1/chat/completions",
        "L2: body: must be an object (got 1)",
    ]


def test_body_messages_is_required(tmp_path: Path) -> None:
    record = batch_line()
    del record["body"]["messages"]
    assert check_line(tmp_path, record) == ["L2: body.messages: missing"]
    assert check_line(tmp_path, batch_line(messages=None)) == ["L2: body.messages: missing"]


def test_body_prompt_says_to_use_messages(tmp_path: Path) -> None:
    record = {"custom_id": "x", "method": "POST", "url": URL, "body": {"prompt": "Hello"}}
    expected = "L2: body.prompt: not a chat completions field; give the conversation as body.messages"
    assert check_line(tmp_path, record) == [expected]
    # with messages too, the prompt is still at fault (it would not be sent)
    assert check_line(tmp_path, batch_line(prompt="Hello")) == [expected]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"messages": "hi"}, ["body.messages: must be a list of message objects (got 'hi')"]),
        ({"messages": []}, ["body.messages: must not be empty"]),
        (
            {"messages": [{"role": "robot", "content": "x"}]},
            ["body.messages[0].role: must be one of system, user, assistant, developer, tool (got 'robot')"],
        ),
        ({"messages": [{"content": "x"}]}, ["body.messages[0].role: missing"]),
        ({"messages": [{"role": "user"}]}, ["body.messages[0].content: missing"]),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
            ["body.messages[0].content[0].text: must be a string (got 1)"],
        ),
        ({"messages": HI, "model": ""}, ["body.model: must be a non-empty string (got '')"]),
        ({"messages": HI, "max_tokens": 0}, ["body.max_tokens: must be a positive integer (got 0)"]),
        ({"messages": HI, "max_tokens": True}, ["body.max_tokens: must be a positive integer (got boolean)"]),
        ({"messages": HI, "temperature": 3}, ["body.temperature: must be from 0 to 2 (got 3)"]),
        ({"messages": HI, "temperature": "hot"}, ["body.temperature: must be a number from 0 to 2 (got 'hot')"]),
        ({"messages": HI, "response_format": "json"}, ["body.response_format: must be an object (got 'json')"]),
        ({"messages": HI, "response_format": {}}, ["body.response_format.type: missing"]),
        (
            {"messages": HI, "stream": True},
            ["body.stream: must be false or absent: a batch answers non-streaming (got boolean)"],
        ),
        (
            {"messages": HI, "stream": "yes"},
            ["body.stream: must be false or absent: a batch answers non-streaming (got 'yes')"],
        ),
        (
            {"messages": HI, "n": 2},
            ["body.n: must be 1 or absent: batch inference writes one output per input (got 2)"],
        ),
        (
            {"messages": HI, "n": True},
            ["body.n: must be 1 or absent: batch inference writes one output per input (got boolean)"],
        ),
    ],
)
def test_body_fields_are_checked_with_their_body_name(
    tmp_path: Path, body: dict[str, Any], expected: list[str]
) -> None:
    record = {"custom_id": "x", "method": "POST", "url": URL, "body": body}
    assert check_line(tmp_path, record) == [f"L2: {text}" for text in expected]


def test_body_messages_over_the_size_limit(tmp_path: Path) -> None:
    record = batch_line(messages=[{"role": "user", "content": "x" * 11}])
    assert check_line(tmp_path, record, max_prompt_chars=10) == [
        "L2: body.messages: 11 characters of content, over the limit of 10"
    ]


def test_unknown_top_level_keys_are_warned_about_against_the_batch_keys(tmp_path: Path) -> None:
    path = write(tmp_path, {**batch_line("a"), "custom_idd": 1, "model": "m"})
    result = validate_jsonl(path)
    assert [item.id for item in result.items] == ["a"]
    assert result.problems == []
    assert [str(warning) for warning in result.warnings] == [
        f"{path}:1: custom_idd: unknown field, ignored (did you mean 'custom_id'?)",
        f"{path}:1: model: unknown field, ignored; known fields: body, custom_id, method, url",
    ]
    assert result.ignored_keys == {"custom_idd": 1, "model": 1}


# --- one format per file ----------------------------------------------------------------------


def test_a_requests_line_in_a_batch_file_gets_the_hint(tmp_path: Path) -> None:
    path = write(tmp_path, batch_line("a"), {"id": "b", "prompt": "hi", "temperature": 1}, {"prompt": "hi"})
    result = validate_jsonl(path)
    assert [item.id for item in result.items] == ["a"]
    hint = "custom_id: missing (this line is in the requests format; a file holds one format, set by its first line)"
    assert problems(result) == [f"{path}:2: {hint}", f"{path}:3: {hint}"]
    assert result.warnings == []  # its requests keys are not warned about one by one


def test_a_batch_line_in_a_requests_file_gets_the_hint(tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "a", "prompt": "hi"}, {**batch_line("b"), "extra": 1})
    result = validate_jsonl(path)
    assert result.format == "requests"
    assert [item.id for item in result.items] == ["a"]
    assert problems(result) == [
        f"{path}:2: id: missing (this line is in the batch format; a file holds one format, set by its first line)"
    ]
    # custom_id, method, url and body are not warned about; other unknown keys still are
    assert [str(warning) for warning in result.warnings] == [
        f"{path}:2: extra: unknown field, ignored; known fields: id, max_tokens, messages, metadata, model, "
        "prompt, response_format, temperature"
    ]


def test_a_requests_file_still_checks_a_line_with_both_id_and_custom_id(tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "a", "prompt": "hi"}, {"id": "b", "prompt": "hi", "custom_id": "x", "body": 1})
    result = validate_jsonl(path)
    assert result.format == "requests"
    assert [item.id for item in result.items] == ["a", "b"]  # it has an id: a requests line with extra keys
    assert result.problems == []
    known = "known fields: id, max_tokens, messages, metadata, model, prompt, response_format, temperature"
    assert [str(warning) for warning in result.warnings] == [
        f"{path}:2: custom_id: unknown field, ignored; {known}",
        f"{path}:2: body: unknown field, ignored; {known}",
    ]


def test_a_batch_file_line_without_custom_id_or_requests_keys_gets_no_hint(tmp_path: Path) -> None:
    record = batch_line()
    del record["custom_id"]
    path = write(tmp_path, batch_line("a"), {**record, "body": {"messages": HI, "n": 2}})
    assert problems(validate_jsonl(path)) == [
        f"{path}:2: custom_id: missing",
        f"{path}:2: body.n: must be 1 or absent: batch inference writes one output per input (got 2)",
    ]


# --- output -----------------------------------------------------------------------------------

SUCCESS = OutputRow(
    id="r1",
    output="Hello!",
    model="gpt-4o-mini",
    finish_reason="stop",
    prompt_tokens=9,
    completion_tokens=3,
    request_id="chatcmpl-1",
)
HTTP_FAILURE = OutputRow(id="r2", error="server_error (HTTP 500): upstream: boom", request_id="batch_req_abc")
OTHER_FAILURE = OutputRow(id="r3", error="connection: could not connect")

ROUND_TRIP_FIELDS = ("id", "output", "error", "model", "finish_reason", "prompt_tokens", "completion_tokens")


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def kept(row: OutputRow) -> tuple[Any, ...]:
    return tuple(getattr(row, name) for name in (*ROUND_TRIP_FIELDS, "request_id"))


def test_a_success_is_a_chat_completion(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    assert write_outputs(path, [SUCCESS], output_format="batch") == 1
    assert lines_of(path) == [
        {
            "id": "chatcmpl-1",
            "custom_id": "r1",
            "response": {
                "status_code": 200,
                "request_id": "chatcmpl-1",
                "body": {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "gpt-4o-mini",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "Hello!"},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
                },
            },
            "error": None,
        }
    ]
    (row,) = read_outputs(path)
    assert kept(row) == kept(SUCCESS)
    assert row.succeeded


def test_a_row_without_request_id_gets_a_stable_made_up_id(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    row = OutputRow(id="r9", output="x")
    write_outputs(path, [row], output_format="batch")
    (line,) = lines_of(path)
    assert line["id"] == "batch_req_" + hashlib.sha256(b"r9").hexdigest()[:24]
    assert line["response"]["request_id"] is None
    assert read_outputs(path)[0].request_id is None  # the made-up id is not read back as the row's


def test_an_http_failure_is_an_error_response(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_outputs(path, [HTTP_FAILURE], output_format="batch")
    assert lines_of(path) == [
        {
            "id": "batch_req_abc",
            "custom_id": "r2",
            "response": {
                "status_code": 500,
                "request_id": "batch_req_abc",
                "body": {"error": {"message": "upstream: boom", "type": "server_error", "param": None, "code": None}},
            },
            "error": None,
        }
    ]
    (row,) = read_outputs(path)
    assert kept(row) == kept(HTTP_FAILURE)
    assert not row.succeeded


def test_a_failure_without_http_status_is_a_line_error(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_outputs(path, [OTHER_FAILURE], output_format="batch")
    assert lines_of(path) == [
        {
            "id": "batch_req_" + hashlib.sha256(b"r3").hexdigest()[:24],
            "custom_id": "r3",
            "response": None,
            "error": {"code": "connection", "message": "could not connect"},
        }
    ]
    (row,) = read_outputs(path)
    assert kept(row) == kept(OTHER_FAILURE)
    assert row.error is not None and row.error.split(":")[0] == "connection"


def test_an_error_in_no_known_form_round_trips_whole(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    rows = [OutputRow(id="a", error="something odd"), OutputRow(id="b", error="")]
    write_outputs(path, rows, output_format="batch")
    assert [line["error"] for line in lines_of(path)] == [
        {"code": None, "message": "something odd"},
        {"code": None, "message": ""},
    ]
    assert [row.error for row in read_outputs(path)] == ["something odd", ""]


def test_a_batch_round_trip_keeps_order_and_fields(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    rows = [OTHER_FAILURE, SUCCESS, HTTP_FAILURE, OutputRow(id="r0", output="", model="m", request_id="c-0")]
    assert write_outputs(path, rows, output_format="batch") == 4
    assert [line["custom_id"] for line in lines_of(path)] == ["r3", "r1", "r2", "r0"]
    assert [kept(row) for row in read_outputs(path)] == [kept(row) for row in rows]
    assert not path.with_suffix(".tmp").exists()


def test_the_rows_format_is_unchanged_and_the_default(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    row = OutputRow(id="r1", output="x", latency_s=1.5, attempts=2, metadata={"k": "v"}, batch_id="b")
    write_outputs(path, [row])
    assert lines_of(path)[0]["attempts"] == 2
    assert read_outputs(path) == [row]
    write_outputs(path, [row], output_format="rows")
    assert read_outputs(path) == [row]


def test_read_outputs_ignores_unknown_keys_and_reads_mixed_lines(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_outputs(path, [SUCCESS], output_format="batch")
    newer = {"id": "n1", "output": "y", "from_the_future": True}
    path.write_text(path.read_text() + json.dumps(newer) + "\n\n")
    rows = read_outputs(path)
    assert [row.id for row in rows] == ["r1", "n1"]
    assert rows[1] == OutputRow(id="n1", output="y")


def test_read_outputs_names_a_line_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps({"output": "no id"}) + "\n")
    with pytest.raises(ValueError, match=rf"^{path}:1: expected an output row or a batch output line$"):
        read_outputs(path)


def test_read_outputs_reads_an_openai_batch_file(tmp_path: Path) -> None:
    path = tmp_path / "openai.jsonl"
    lines = [
        {
            "id": "batch_req_1",
            "custom_id": "a",
            "response": {
                "status_code": 400,
                "request_id": "req_1",
                "body": {"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}},
            },
            "error": None,
        },
        {
            "id": "batch_req_2",
            "custom_id": "b",
            "response": None,
            "error": {"code": "batch_expired", "message": "late"},
        },
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rows = read_outputs(path)
    assert [(row.id, row.error, row.request_id) for row in rows] == [
        ("a", "invalid_request_error (HTTP 400): bad", "batch_req_1"),
        ("b", "batch_expired: late", "batch_req_2"),
    ]


def test_an_unknown_output_format_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match=r"output_format must be one of 'rows', 'batch' \(got 'csv'\)"):
        write_outputs(path, [SUCCESS], output_format="csv")
    assert not path.exists() and not path.with_suffix(".tmp").exists()
