"""`python -m ai_assets.lib.inference.submit`: distinct partitions for distinct files, no silent overwrite,
validation errors as file:line lines and an exit status instead of a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from ai_assets.defs.inference.assets import inference_files
from ai_assets.lib.inference.files import key_for_name
from ai_assets.lib.inference.submit import SubmitError, main, submit


@pytest.fixture
def inbox(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "inbox"
    monkeypatch.setenv("AI_ASSETS_INFERENCE_INBOX", str(folder))
    return folder


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def requests_file(path: Path, *prompts: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": i, "prompt": p}, ensure_ascii=False) + "\n" for i, p in enumerate(prompts)]
    path.write_text("".join(lines))
    return path


def test_unicode_names_become_two_partitions(tmp_path: Path, inbox: Path, instance: dg.DagsterInstance) -> None:
    japan = submit(requests_file(tmp_path / "日本.jsonl", "こんにちは"), instance)
    china = submit(requests_file(tmp_path / "中国.jsonl", "你好"), instance)
    assert (japan.key, china.key) == ("日本.jsonl", "中国.jsonl")
    assert (japan.action, china.action) == ("added", "added")
    assert "こんにちは" in (inbox / "日本.jsonl").read_text()
    assert "你好" in (inbox / "中国.jsonl").read_text()
    assert sorted(instance.get_dynamic_partitions(inference_files.name)) == ["中国.jsonl", "日本.jsonl"]
    assert sorted(p.name for p in inbox.iterdir()) == ["中国.jsonl", "日本.jsonl"]  # no staging file left


def test_a_different_file_under_the_same_key_is_refused_unless_replace(
    tmp_path: Path, inbox: Path, instance: dg.DagsterInstance
) -> None:
    first = requests_file(tmp_path / "monday" / "prompts.jsonl", "first")
    second = requests_file(tmp_path / "tuesday" / "prompts.jsonl", "second")
    assert submit(first, instance).action == "added"
    with pytest.raises(SubmitError, match=r"already holds a different file for partition 'prompts.jsonl'.*--replace"):
        submit(second, instance)
    assert (inbox / "prompts.jsonl").read_text() == first.read_text()  # untouched
    assert submit(first, instance).action == "unchanged"  # same content: nothing to do
    assert submit(second, instance, replace=True).action == "replaced"
    assert (inbox / "prompts.jsonl").read_text() == second.read_text()
    assert instance.get_dynamic_partitions(inference_files.name) == ["prompts.jsonl"]
    assert sorted(p.name for p in inbox.iterdir()) == ["prompts.jsonl"]


def test_names_needing_a_new_key_are_told_which(
    tmp_path: Path, inbox: Path, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = requests_file(tmp_path / "my prompts.jsonl", "hello")
    assert main([str(source)]) == 0
    captured = capsys.readouterr()
    key = key_for_name("my prompts.jsonl")
    assert f"my prompts.jsonl is submitted as partition {key}" in captured.err
    assert f"--partition {key}" in captured.out
    assert (inbox / key).read_text() == source.read_text()

    clash = requests_file(tmp_path / "other" / "my prompts.jsonl", "bye")
    assert main([str(clash)]) == 1
    assert "already holds a different file" in capsys.readouterr().err
    assert main([str(clash), "--replace"]) == 0
    assert (inbox / key).read_text() == clash.read_text()


def test_cli_prints_validation_problems_without_a_traceback(tmp_path: Path, inbox: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "prompt": 5}\n{"id": 2}\nnot json\n')
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "AI_ASSETS_INFERENCE_INBOX": str(inbox)}
    done = subprocess.run(
        [sys.executable, "-m", "ai_assets.lib.inference.submit", str(bad)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert f"{bad}:1: prompt: must be a string (got 5)" in lines
    assert f"{bad}:2: needs 'prompt' or 'messages'" in lines
    assert any(line.startswith(f"{bad}:3: invalid JSON") for line in lines)
    assert lines[-1] == f"error: {bad}: no valid request among 3 lines; nothing was submitted"
    assert not inbox.exists() or not any(inbox.iterdir())


def test_cli_reports_a_missing_file_and_warnings(
    tmp_path: Path, inbox: Path, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "nope.jsonl")]) == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'nope.jsonl'}: No such file or directory" in err

    partly = tmp_path / "partly.jsonl"
    partly.write_text('{"id": 1, "prompt": "ok", "temprature": 0.3}\n{"id": 2}\n')
    assert main([str(partly)]) == 0
    err = capsys.readouterr().err
    assert f"warning: skipped {partly}:2: needs 'prompt' or 'messages'" in err
    assert f"warning: {partly}:1: temprature: unknown field, ignored (did you mean 'temperature'?)" in err


def test_submit_validates_with_the_deployed_prompt_limit(
    tmp_path: Path, inbox: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run validates with the inference resource's INFERENCE_MAX_PROMPT_CHARS: so must submit.
    monkeypatch.setenv("INFERENCE_MAX_PROMPT_CHARS", "50")
    done = submit(requests_file(tmp_path / "long.jsonl", "short", "x" * 60), instance)
    assert [problem.location.rsplit(":", 1)[1] for problem in done.validated.problems] == ["2"]
    assert "50" in str(done.validated.problems[0])


def test_mode_is_written_beside_the_file_before_it(
    tmp_path: Path, inbox: Path, dagster_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = requests_file(tmp_path / "cheap.jsonl", "hello")
    assert main([str(source), "--mode", "batch_api"]) == 0
    assert (inbox / "cheap.jsonl.mode").read_text() == "batch_api\n"
    assert sorted(p.name for p in inbox.iterdir()) == ["cheap.jsonl", "cheap.jsonl.mode"]
    assert main([str(source), "--mode", "sync"]) == 0  # same content: only the choice changes
    assert (inbox / "cheap.jsonl.mode").read_text() == "sync\n"
    with pytest.raises(SystemExit):
        main([str(source), "--mode", "cheap"])
    assert "invalid choice: 'cheap'" in capsys.readouterr().err
