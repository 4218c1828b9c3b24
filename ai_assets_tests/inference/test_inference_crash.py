"""kill -9 in the middle of a batch, then run again: nothing lost, nothing answered twice."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from ai_assets.defs.inference.assets import inference_outputs
from ai_assets.lib.inference.files import file_digest, read_outputs
from ai_assets.resources.llm import LLMResource
from ai_assets_tests.inference.harness import submit_and_kill_when
from ai_assets_tests.inference.openai_server import FakeOpenAIServer
from ai_assets_tests.resources import inference_folders, settings_resources


def test_sigkill_mid_batch_then_rerun(
    tmp_path: Path, data_dir: Path, instance: dg.DagsterInstance, monkeypatch
) -> None:
    inbox = tmp_path / "inbox"
    monkeypatch.setenv("AI_ASSETS_INFERENCE_INBOX", str(inbox))
    source = tmp_path / "night.jsonl"
    source.write_text("".join(json.dumps({"id": f"n{i}", "prompt": f"[id:n{i}] item {i}"}) + "\n" for i in range(80)))
    home = tmp_path / "dagster_home"
    home.mkdir()

    with FakeOpenAIServer(latency_s=0.1) as server:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "OPENAI_BASE_URL": server.base_url,
            "OPENAI_API_KEY": "test",
            "OPENAI_MAX_IN_FLIGHT": "4",
        }
        submit_and_kill_when(source, env, lambda: server.total_requests >= 24)
        assert 24 <= server.total_requests < 80, "the batch was not killed part-way"

        ledger = inference_folders().ledger_path("night.jsonl", file_digest(inbox / "night.jsonl"))
        answered_before = {json.loads(line)["id"] for line in ledger.read_text().splitlines() if line.strip()}
        assert answered_before and len(answered_before) < 80
        # Outputs are written only when the batch is complete.
        assert not inference_folders().output_path("night.jsonl").exists()

        # Dagster's retry (or a person) runs it again in another process: here, in this one.
        instance.add_dynamic_partitions("inference_files", ["night.jsonl"])
        result = dg.materialize(
            [inference_outputs],
            partition_key="night.jsonl",
            instance=instance,
            resources={
                **settings_resources(),
                "llm": LLMResource(base_url=server.base_url, api_key="test", max_in_flight=4),
            },
        )
        assert result.success
        # Nothing answered before the kill was asked again; the rest once (or twice for the handful
        # that were in flight when the process died, whose answers never reached the ledger).
        for item_id in answered_before:
            assert server.requests_for(item_id) == 1, item_id
        assert server.total_requests <= 80 + 4

    rows = read_outputs(inference_folders().output_path("night.jsonl"))
    assert [r.id for r in rows] == [f"n{i}" for i in range(80)]
    assert all(r.succeeded for r in rows)
    assert all(e.passed for e in result.get_asset_check_evaluations())
