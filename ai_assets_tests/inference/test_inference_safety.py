"""The inference asset against hostile input, through Dagster and a real OpenAI-compatible server:
partition keys that point out of the inbox, unknown input fields, and servers that echo the API key."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from ai_assets.lib.inference.files import read_outputs
from ai_assets.lib.llm.retry import MIN_SECRET_FRAGMENT
from ai_assets.resources.llm import LLMResource
from ai_assets_tests.inference.harness import error_text, materialize_partition
from ai_assets_tests.inference.openai_server import FakeOpenAIServer
from ai_assets_tests.resources import inference_folders

API_KEY = "sk-proj-Zq8hT3kP0wYb7uVn2LmR5sXcJ4dE"
SECRET_PART = API_KEY.removeprefix("sk-proj-")


@pytest.fixture
def inbox(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Deeper than conftest's: the `../` keys below must still land inside tmp_path if they escaped.
    folder = tmp_path / "deep" / "er" / "still" / "inbox"
    folder.mkdir(parents=True)
    monkeypatch.setenv("AI_ASSETS_INFERENCE_INBOX", str(folder))
    return folder


def materialize(key: str, server: FakeOpenAIServer, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return materialize_partition(instance, key, LLMResource(base_url=server.base_url, api_key=API_KEY))


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("relative", [True, False], ids=["dot-dot", "absolute"])
def test_a_partition_key_cannot_leave_the_inbox(
    relative: bool, inbox: Path, tmp_path: Path, data_dir: Path, instance: dg.DagsterInstance
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = outside / "evil.jsonl"
    evil.write_text(json.dumps({"id": "x", "prompt": "private text that must not reach the LLM"}) + "\n")
    key = "../../../../outside/evil.jsonl" if relative else str(evil)
    assert (inbox / key).resolve() == evil  # the key really points at the file

    with FakeOpenAIServer() as server:
        result = materialize(key, server, instance)
        assert server.total_requests == 0
    assert not result.success
    error = error_text(result)
    assert f"partition key {key!r}" in error and "not a plain file name" in error
    assert files_under(outside) == {evil}  # no outputs or ledger written next to it
    assert not data_dir.exists() or files_under(data_dir) == set()


def test_unknown_input_fields_are_warned_in_the_run_log(inbox: Path, instance: dg.DagsterInstance) -> None:
    source = inbox / "typo.jsonl"
    source.write_text(
        json.dumps({"id": "a", "prompt": "[id:a] hi", "temprature": 0.2}) + "\n"
        + json.dumps({"id": "b", "prompt": "[id:b] hi"}) + "\n"
    )  # fmt: skip
    with FakeOpenAIServer() as server:
        result = materialize("typo.jsonl", server, instance)
    assert result.success
    warnings = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if entry.level == 30 and entry.step_key == "inference_outputs"
    ]
    assert f"{source}:1: temprature: unknown field, ignored (did you mean 'temperature'?)" in warnings


def test_an_echoed_api_key_is_redacted_from_outputs_ledger_and_run_storage(
    inbox: Path, data_dir: Path, instance: dg.DagsterInstance
) -> None:
    lines = [
        {"id": "whole", "prompt": "[id:whole] [fail:401]"},  # "Bearer sk-proj-...": redacted before too
        {"id": "bare", "prompt": "[id:bare] [fail:401] [echo-key:bare]"},  # the key without sk-proj-
        {"id": "part", "prompt": "[id:part] [fail:401] [echo-key:part]"},  # 16 characters of its middle
        {"id": "fine", "prompt": "[id:fine] hello"},
    ]
    (inbox / "keys.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with FakeOpenAIServer() as server:
        result = materialize("keys.jsonl", server, instance)
        assert server.requests_for("bare") == 1  # a 401 is final: the key was echoed exactly once per item
    assert result.success

    rows = {row.id: row for row in read_outputs(inference_folders().output_path("keys.jsonl"))}
    assert rows["fine"].succeeded
    for item in ("whole", "bare", "part"):
        assert rows[item].error.startswith("auth_error (HTTP 401): "), rows[item].error
        assert "Incorrect API key provided: " in rows[item].error and "***" in rows[item].error

    fragments = [SECRET_PART[i : i + MIN_SECRET_FRAGMENT] for i in range(len(SECRET_PART) - MIN_SECRET_FRAGMENT + 1)]
    stored = files_under(data_dir) | files_under(Path(instance.root_directory))
    assert any(path.name.endswith(".outputs.jsonl") for path in stored)
    assert any("ledgers" in path.parts for path in stored)
    assert any(path.suffix == ".db" for path in stored)  # the run and event log storage
    leaks = [
        (str(path), fragment) for path in stored for fragment in fragments if fragment.encode() in path.read_bytes()
    ]
    assert leaks == []
