"""The embedded default: SmolLM2-135M-Instruct on llama.cpp, through the real openai SDK."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from ai_assets.defs.inference.assets import inference_files, inference_outputs
from ai_assets.lib.inference.files import read_outputs
from ai_assets.resources.llm import LLMResource
from ai_assets_tests.resources import inference_folders, settings_resources

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): it is gone for every practical purpose.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def llama_servers() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "llama_cpp.server"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_embedded_model_answers_with_real_tokens(
    tmp_path: Path, data_dir: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    monkeypatch.setenv("AI_ASSETS_INFERENCE_INBOX", str(inbox))
    questions = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?"]
    (inbox / "smol.jsonl").write_text(
        "".join(
            json.dumps({"id": f"s{i}", "prompt": q, "max_tokens": 12, "temperature": 0}) + "\n"
            for i, q in enumerate(questions)
        )
    )
    instance.add_dynamic_partitions(inference_files.name, ["smol.jsonl"])
    before = set(llama_servers())
    result = dg.materialize(
        [inference_outputs],
        partition_key="smol.jsonl",
        instance=instance,
        resources={**settings_resources(), "llm": LLMResource(max_in_flight=2)},
    )
    assert result.success
    rows = read_outputs(inference_folders().output_path("smol.jsonl"))
    assert [r.id for r in rows] == ["s0", "s1", "s2"]
    for row in rows:
        assert row.succeeded and row.output and row.output.strip()
        assert row.model == "smollm2-135m-instruct"
        assert row.prompt_tokens > 5 and 0 < row.completion_tokens <= 12
    meta = {k: v.value for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}
    assert meta["completion_tokens"] == sum(r.completion_tokens for r in rows)
    assert meta["endpoint"] == "embedded llama.cpp"
    assert set(llama_servers()) == before  # stopped with the step


def test_server_stops_when_the_step_fails(instance: dg.DagsterInstance) -> None:
    started: list[int] = []

    @dg.asset
    def uses_then_fails(context, llm: LLMResource) -> None:  # noqa: ANN001 - annotations are strings here
        llm.ensure_server(context.log)
        started.append(llm._server.process.pid)  # type: ignore[union-attr]
        raise RuntimeError("the step fails after the server started")

    result = dg.materialize(
        [uses_then_fails],
        instance=instance,
        resources={**settings_resources(), "llm": LLMResource()},
        raise_on_error=False,
    )
    assert not result.success and started
    assert not alive(started[0])


def test_server_dies_with_a_killed_parent() -> None:
    code = (
        "from ai_assets.resources.llama_server import LlamaServer, bundled_gguf_path\n"
        "import time\n"
        "server = LlamaServer(bundled_gguf_path()).start()\n"
        "print(server.process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    server_pid = int(parent.stdout.readline())
    assert alive(server_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 15
    while alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(server_pid), "the llama.cpp server outlived the process that started it"
