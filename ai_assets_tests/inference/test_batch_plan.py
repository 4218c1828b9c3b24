"""The pure parts of the Batch API backend: splitting, the journal, retry rules, mode choice, costs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ai_assets.lib.inference.files import InferenceFolders
from ai_assets.lib.inference.modes import ModeError, choose_mode, mode_file, read_mode_file
from ai_assets.lib.llm.batch_api import (
    BatchJournal,
    BatchJournalBusyError,
    error_kind,
    needs_request,
    plan_parts,
    request_line,
)
from ai_assets.lib.llm.items import InferenceItem, OutputRow
from ai_assets.lib.llm.report import ModelPrice, estimated_costs


def item(i: int, model: str | None = None, text: str = "hello") -> InferenceItem:
    return InferenceItem(id=f"q{i}", messages=({"role": "user", "content": text},), line=i + 1, model=model)


def test_request_lines_are_the_batch_input_format() -> None:
    extra = InferenceItem(
        id="a", messages=({"role": "user", "content": "hi"},), line=1, max_tokens=5, extra={"seed": 7, "top_p": 0.5}
    )
    line = json.loads(request_line(extra, "gpt-4o-mini"))
    assert line == {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "seed": 7,
            "top_p": 0.5,
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5,
        },
    }


def test_files_split_per_model_and_at_the_request_and_byte_limits() -> None:
    items = [item(i, model="big" if i % 3 == 0 else None) for i in range(10)]
    parts = plan_parts(items, "default", max_requests=3, max_bytes=10**9)
    assert [(model, [i for i, _ in lines]) for model, lines in parts] == [
        ("big", ["q0", "q3", "q6"]),
        ("big", ["q9"]),
        ("default", ["q1", "q2", "q4"]),
        ("default", ["q5", "q7", "q8"]),
    ]
    size = len(request_line(items[1], "default"))
    by_bytes = plan_parts(items[1:3] + items[4:6], "default", max_requests=100, max_bytes=2 * size + 1)
    assert [[i for i, _ in lines] for _, lines in by_bytes] == [["q1", "q2"], ["q4", "q5"]]
    assert all(sum(len(line) for _, line in lines) <= 2 * size + 1 for _, lines in by_bytes)
    with pytest.raises(ValueError, match=r"line 2 \(id 'q1'\) is \d+ bytes as a batch request, over the 10-byte"):
        plan_parts(items[1:2], "default", max_requests=100, max_bytes=10)


def test_which_failures_are_sent_again() -> None:
    assert needs_request(None)
    assert not needs_request(OutputRow(id="a", output="fine"))
    for error, again in [
        ("server_error (HTTP 500): boom", True),
        ("rate_limited (HTTP 429): slow down", True),
        ("batch_expired: the batch ended expired before answering it", True),
        ("batch_cancelled: x", True),
        ("batch_token_limit_exceeded: token_limit_exceeded: quota", True),
        ("not_returned: no line", True),
        ("bad_request (HTTP 400): invalid model", False),
        ("batch_failed: invalid_request: line 3", False),
        ("insufficient_quota (HTTP 429): billing", False),
    ]:
        assert needs_request(OutputRow(id="a", error=error)) is again, error
    assert error_kind("server_error (HTTP 500): x") == "server_error" and error_kind(None) == ""


def test_journal_folds_events_ignores_a_torn_tail_and_locks(tmp_path: Path) -> None:
    journal = BatchJournal.beside(tmp_path / "f.jsonl.0123456789abcdef.jsonl")
    assert journal.path.name == "f.jsonl.0123456789abcdef.batches.jsonl"
    assert journal.load() == []
    common = {"round": 1, "model": "m", "bytes": 10, "at": 1.0}
    journal.append({"event": "intent", "intent": "i1", "part": 1, "ids": ["a", "b"], **common})
    journal.append({"event": "uploaded", "intent": "i1", "file_id": "file-1"})
    journal.append({"event": "created", "intent": "i1", "batch_id": "batch_1"})
    journal.append({"event": "intent", "intent": "i2", "part": 2, "ids": ["c"], **common})
    journal.append({"event": "intent", "intent": "i3", "part": 3, "ids": ["d"], **common})
    journal.append({"event": "abandoned", "intent": "i3", "reason": "upload refused"})
    with journal.path.open("ab") as handle:
        handle.write(b'{"event": "collected", "intent": "i1", "cou')  # a crash mid-write
    one, two, three = journal.load()
    assert (one.batch_id, one.file_id, one.ids, one.open, one.unresolved) == (
        "batch_1",
        "file-1",
        ["a", "b"],
        True,
        False,
    )
    assert (two.batch_id, two.unresolved, two.open) == (None, True, False)
    assert (three.abandoned, three.unresolved) == ("upload refused", False)
    with journal.locked(), pytest.raises(BatchJournalBusyError, match="already submitting or collecting"):
        with journal.locked():
            pass
    with journal.locked():  # released
        pass
    journal.path.write_text('not json\n{"event": "intent"}\n')
    with pytest.raises(ValueError, match=r"batches.jsonl:1: not a journal event"):
        journal.load()


def test_mode_choice(tmp_path: Path) -> None:
    folders = InferenceFolders.under(tmp_path)
    folders.inbox.mkdir(parents=True)
    path = mode_file(folders, "night.jsonl")
    assert path == folders.inbox / "night.jsonl.mode" and read_mode_file(path) is None
    path.write_text("batch_api\n")
    assert read_mode_file(path) == "batch_api"
    path.write_text("batch\n")
    with pytest.raises(ModeError, match=r"night.jsonl.mode:1: 'batch' is not a mode: write sync or batch_api"):
        read_mode_file(path)

    def choose(**kw: object) -> tuple[str, str]:
        args = {"configured": None, "batches_in_flight": [], "file_choice": None, "default": "sync", **kw}
        return choose_mode(**args)  # type: ignore[arg-type]

    assert choose() == ("sync", "INFERENCE_MODE")
    assert choose(file_choice="batch_api") == ("batch_api", "the file's .mode file")
    assert choose(file_choice="batch_api", configured="sync") == ("sync", "run config")
    assert choose(batches_in_flight=["batch_1"], file_choice="sync")[0] == "batch_api"
    with pytest.raises(ModeError, match=r"still in flight \(batch_1\): their items would be paid for twice"):
        choose(configured="sync", batches_in_flight=["batch_1"])
    with pytest.raises(ModeError, match="'fast' is not one of sync, batch_api"):
        choose(configured="fast")


def test_costs_in_both_modes() -> None:
    rows = [
        OutputRow(id="a", output="x", model="m", prompt_tokens=1_000_000, completion_tokens=0),
        OutputRow(id="b", output="y", model="m", prompt_tokens=0, completion_tokens=1_000_000, batch_id="batch_1"),
        OutputRow(id="c", output="z", model="other", prompt_tokens=5, batch_id="batch_1"),
    ]
    cost = estimated_costs(rows, {"m": ModelPrice(1.0, 4.0)}, discount=0.5)
    assert (cost.all_sync, cost.paid, cost.all_batch_api, cost.unpriced) == (5.0, 3.0, 2.5, ["other"])
    assert cost.saved == 2.0
    with pytest.raises(ValueError, match="discount must be from 0 to 1"):
        estimated_costs(rows, {}, discount=1.5)
