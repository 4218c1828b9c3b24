"""The embedded server is supervised: its deaths are explained, stop the batch, and are survived once.

The server is a real process, `fake_llama_server.py`, run through the resource's `embedded_command`
in place of `python -m llama_cpp.server`; it records every request it reads and kills itself on cue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import tomllib
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest

from ai_assets.lib.inference.files import read_outputs
from ai_assets.lib.llm.answering import answer_with
from ai_assets.lib.llm.engine import run_batch
from ai_assets.lib.llm.items import CallResult, InferenceItem
from ai_assets.lib.llm.ledger import ResultLedger
from ai_assets.lib.llm.retry import RetryPolicy
from ai_assets.resources.llama_server import (
    LLAMA_CPP_PYTHON_PIN,
    EmbeddedServerDied,
    describe_exit,
    reinstall_command,
)
from ai_assets.resources.llm import LLMResource
from ai_assets_tests.inference.harness import error_text, materialize_partition
from ai_assets_tests.resources import inference_folders

FAKE_SERVER = Path(__file__).with_name("fake_llama_server.py")
PROBE = "Say OK."  # the readiness probe's message


class Events:
    """What the stand-in server(s) recorded, in order."""

    def __init__(self, path: Path):
        self.path = path

    def all(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def of(self, kind: str, *, pid: int | None = None) -> list[str]:
        """The message contents of one kind of event ("models", "received", "answered")."""
        return [e["content"] for e in self.all() if e["event"] == kind and (pid is None or e["pid"] == pid)]

    def pids(self) -> list[int]:
        return list(dict.fromkeys(e["pid"] for e in self.all()))


@pytest.fixture
def events(tmp_path: Path) -> Events:
    return Events(tmp_path / "server-events.jsonl")


def stand_in(events: Events, *options: str, **llm_kw: object) -> LLMResource:
    """The embedded-model resource, serving with the stand-in server started with `options`."""
    command = [sys.executable, str(FAKE_SERVER), "--events", str(events.path), *options]
    return LLMResource(embedded_command=command, **llm_kw)  # type: ignore[arg-type]


def write_prompts(inbox: Path, name: str, count: int) -> list[str]:
    prompts = [f"question number {i}" for i in range(count)]
    (inbox / name).write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    return prompts


def logged_warnings(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> str:
    """The warnings the step logged (`context.log.warning`), one per line."""
    return "\n".join(
        r.user_message
        for r in instance.all_logs(result.run_id)
        if r.dagster_event is None and r.level == logging.WARNING
    )


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


# --- explaining an exit ------------------------------------------------------------------------------


def test_sigill_is_named_explained_and_comes_with_the_reinstall_command() -> None:
    text = describe_exit(-signal.SIGILL, "loading model\nllama_model_load: done", when="while starting")
    assert text.startswith("the embedded llama.cpp server was killed by SIGILL (signal 4) while starting.")
    assert "CPU instructions this machine cannot execute" in text and "GGML_NATIVE" in text
    assert "pip's cache" in text
    assert reinstall_command() in text
    assert text.endswith("Last lines of the server log:\n  | loading model\n  | llama_model_load: done")


def test_a_shell_reported_signal_is_decoded_too() -> None:
    text = describe_exit(132, "", when="while answering requests")
    assert "exited with status 132 (128 + 4: killed by SIGILL)" in text
    assert reinstall_command() in text and "(the log is empty)" in text


@pytest.mark.parametrize(
    ("returncode", "expected"),
    [
        (-signal.SIGKILL, ["killed by SIGKILL (signal 9)", "out-of-memory"]),
        (-signal.SIGSEGV, ["killed by SIGSEGV (signal 11)", "llama.cpp crashed"]),
        (2, ["exited with status 2", "bad option"]),
        (0, ["exited with status 0", "should run until it is stopped"]),
    ],
)
def test_other_exits_are_named_without_the_sigill_advice(returncode: int, expected: list[str]) -> None:
    text = describe_exit(returncode, "last words", when="while answering requests")
    assert all(part in text for part in expected), text
    assert "GGML_NATIVE" not in text and "  | last words" in text


def test_the_reinstall_command_uses_this_environments_pip_and_the_pinned_version() -> None:
    pip = Path(sys.executable).with_name("pip")
    command = reinstall_command()
    assert command.startswith('CMAKE_ARGS="-DGGML_NATIVE=OFF" ')
    assert f" {pip} install --force-reinstall --no-cache-dir --no-deps llama-cpp-python==" in command
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("llama-cpp-python")]
    assert pins == [f"llama-cpp-python[server]=={LLAMA_CPP_PYTHON_PIN}"]
    assert command.endswith(f"llama-cpp-python=={LLAMA_CPP_PYTHON_PIN}")


def test_without_a_pip_next_to_python_the_command_runs_pip_as_a_module(tmp_path: Path) -> None:
    python = tmp_path / "bin" / "python3"
    assert f"{python} -m pip install --force-reinstall" in reinstall_command(str(python))


# --- the step, against real stand-in server processes ---------------------------------------------------


def test_sigill_on_the_first_completion_fails_the_step_with_the_cause_and_the_fix(
    inbox: Path, instance: dg.DagsterInstance, events: Events
) -> None:
    write_prompts(inbox, "batch.jsonl", 8)

    result = materialize_partition(instance, "batch.jsonl", stand_in(events, "--die-after", "0", "--signal", "ILL"))

    assert not result.success
    error = error_text(result)
    assert "killed by SIGILL (signal 4) while starting" in error
    assert reinstall_command() in error
    assert "completion 1 received, killing itself with SIGILL" in error  # the server log's last lines
    # It was asked exactly once to compute — the readiness probe — and no item was ever sent.
    assert events.of("received") == [PROBE] and events.of("answered") == []
    assert len(events.of("models")) == 1
    assert not inference_folders().output_path("batch.jsonl").exists()
    assert all(gone(pid) for pid in events.pids())


def test_a_mid_batch_death_is_survived_once_and_no_answered_item_is_sent_again(
    inbox: Path, instance: dg.DagsterInstance, events: Events, tmp_path: Path
) -> None:
    prompts = write_prompts(inbox, "batch.jsonl", 12)
    # The first server answers the probe and 3 items, then dies of SIGSEGV on the 4th; the second lives.
    llm = stand_in(events, "--die-after", "4", "--signal", "SEGV", "--once", str(tmp_path / "died"), max_in_flight=3)

    result = materialize_partition(instance, "batch.jsonl", llm)

    assert result.success, error_text(result)
    rows = read_outputs(inference_folders().output_path("batch.jsonl"))
    assert [r.id for r in rows] == [f"q{i}" for i in range(12)]
    assert [r.output for r in rows] == [f"answer: {p}" for p in prompts]

    first, second = events.pids()
    assert events.of("received", pid=first)[0] == PROBE and events.of("received", pid=second)[0] == PROBE
    died_on = events.of("received", pid=first)[-1]
    assert events.of("received", pid=first) == events.of("answered", pid=first) + [died_on]
    # Every item was answered exactly once, over both servers.
    answered = Counter(c for c in events.of("answered") if c != PROBE)
    assert answered == Counter(prompts)
    # Only the item the first server died on was sent twice; none it had answered was sent again.
    received = Counter(c for c in events.of("received") if c != PROBE)
    assert {c for c, n in received.items() if n > 1} == {died_on}
    assert sum(received.values()) == len(prompts) + 1
    assert (set(events.of("answered", pid=first)) - {PROBE}).isdisjoint(events.of("received", pid=second))

    meta = metadata(result)
    assert (meta["succeeded"], meta["answered_this_run"], meta["skipped_already_answered"]) == (12, 12, 0)
    logged = logged_warnings(instance, result)
    assert "killed by SIGSEGV (signal 11) while answering requests" in logged and "Restarting it (1 of 1)" in logged
    assert all(gone(pid) for pid in events.pids())


def test_a_second_death_fails_the_step_and_what_was_answered_is_kept(
    inbox: Path, instance: dg.DagsterInstance, events: Events, tmp_path: Path
) -> None:
    prompts = write_prompts(inbox, "batch.jsonl", 20)

    failed = materialize_partition(
        instance, "batch.jsonl", stand_in(events, "--die-after", "3", "--signal", "ILL", max_in_flight=2)
    )

    assert not failed.success
    error = error_text(failed)
    assert "killed by SIGILL (signal 4) while answering requests" in error and reinstall_command() in error
    assert "already been restarted 1 time(s)" in error
    # Bounded: each of the two servers read exactly 4 completions (probe, 2 answered, the fatal one).
    assert len(events.pids()) == 2
    assert [len(events.of("received", pid=pid)) for pid in events.pids()] == [4, 4]
    answered_before = [c for c in events.of("answered") if c != PROBE]
    assert len(answered_before) == 4

    # A later run, on a healthy server, sends only what was not answered: the ledger kept the rest.
    healthy_events = Events(tmp_path / "healthy-events.jsonl")
    rerun = materialize_partition(instance, "batch.jsonl", stand_in(healthy_events))
    assert rerun.success, error_text(rerun)
    resent = [c for c in healthy_events.of("received") if c != PROBE]
    assert sorted(resent) == sorted(set(prompts) - set(answered_before))
    assert metadata(rerun)["skipped_already_answered"] == 4
    assert len(read_outputs(inference_folders().output_path("batch.jsonl"))) == 20
    assert all(gone(pid) for pid in events.pids() + healthy_events.pids())


def test_answers_already_on_their_way_are_recorded_before_the_batch_stops(events: Events, tmp_path: Path) -> None:
    """A request that fails because the server died stops the batch, but only once the other requests in
    flight have settled: an answer that had reached this process is kept, never paid for twice."""
    llm = stand_in(events)
    llm.ensure_server()
    (server_pid,) = events.pids()
    arrived, calls = asyncio.Event(), []

    async def call(item: InferenceItem) -> CallResult:
        calls.append(item.id)
        if item.id == "fatal":
            os.kill(server_pid, signal.SIGKILL)
            arrived.set()  # the other answer is in, still being read when this request fails
            raise ConnectionResetError("the server closed the connection")
        await arrived.wait()
        await asyncio.sleep(0.05)  # several event-loop turns: without the wait it is cancelled here
        return CallResult(output="kept", model="m", finish_reason="stop", prompt_tokens=1, completion_tokens=1)

    items = [
        InferenceItem(id=name, messages=({"role": "user", "content": name},), line=n)
        for n, name in enumerate(["slow", "fatal", "later"], 1)
    ]
    try:
        with ResultLedger(tmp_path / "ledger.jsonl") as ledger:
            with pytest.raises(EmbeddedServerDied, match=r"killed by SIGKILL \(signal 9\) while answering requests"):
                asyncio.run(run_batch(items, llm.guard(call), ledger=ledger, max_in_flight=2, retry=RetryPolicy()))
            rows = ledger.load()
    finally:
        llm.stop()
    assert {i: (r.succeeded, r.output) for i, r in rows.items()} == {"slow": (True, "kept")}
    assert calls == ["slow", "fatal"]  # nothing more is sent once the server is known dead


# --- RAG evaluation answering (and question synthesis, which shares it) ----------------------------------


def _prompts(count: int) -> list[list[dict[str, str]]]:
    return [
        [{"role": "system", "content": "Answer."}, {"role": "user", "content": f"eval question {i}"}]
        for i in range(count)
    ]


def test_rag_answering_survives_one_death_and_answers_every_question_once(events: Events, tmp_path: Path) -> None:
    llm = stand_in(events, "--die-after", "3", "--signal", "KILL", "--once", str(tmp_path / "died"), max_in_flight=2)
    try:
        results = asyncio.run(answer_with(llm, None, _prompts(9), max_tokens=16))
    finally:
        llm.stop()
    assert results == [(f"answer: eval question {i}", None) for i in range(9)]
    assert len(events.pids()) == 2
    answered = Counter(c for c in events.of("answered") if c != PROBE)
    assert answered == Counter(f"eval question {i}" for i in range(9))
    assert all(gone(pid) for pid in events.pids())


def test_rag_answering_fails_on_a_second_death_with_the_explanation(events: Events) -> None:
    llm = stand_in(events, "--die-after", "2", "--signal", "ILL", max_in_flight=2)
    try:
        with pytest.raises(EmbeddedServerDied, match=r"killed by SIGILL \(signal 4\)") as raised:
            asyncio.run(answer_with(llm, None, _prompts(9), max_tokens=16))
    finally:
        llm.stop()
    assert reinstall_command() in str(raised.value) and "already been restarted 1 time(s)" in str(raised.value)
    assert [len(events.of("received", pid=pid)) for pid in events.pids()] == [3, 3]


def test_a_server_that_died_between_uses_is_restarted_once_then_the_step_fails(events: Events) -> None:
    llm = stand_in(events)
    try:
        llm.ensure_server()
        (first,) = events.pids()
        os.kill(first, signal.SIGKILL)
        while not gone(first):  # exited (a zombie until the resource reaps it)
            pass
        assert asyncio.run(answer_with(llm, None, _prompts(2), max_tokens=16))[1] == ("answer: eval question 1", None)
        second = events.pids()[1]
        os.kill(second, signal.SIGKILL)
        while not gone(second):
            pass
        with pytest.raises(EmbeddedServerDied, match=r"killed by SIGKILL \(signal 9\) since it was started"):
            asyncio.run(answer_with(llm, None, _prompts(2), max_tokens=16))
    finally:
        llm.stop()
    assert len(events.pids()) == 2
    assert sorted(c for c in events.of("received") if c != PROBE) == ["eval question 0", "eval question 1"]
