"""The inference asset through Dagster, against a real OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from ai_assets.defs.inference.assets import inference_files, inference_outputs
from ai_assets.defs.inference.automation import inference_inbox_sensor
from ai_assets.lib.inference.files import read_outputs
from ai_assets.resources.llm import LLMResource
from ai_assets_tests.inference.harness import error_text, materialize_partition
from ai_assets_tests.inference.openai_server import FakeOpenAIServer
from ai_assets_tests.ingestion.harness import table_rows
from ai_assets_tests.resources import inference_folders, settings_resources


def write_requests(path: Path, lines: list[dict | str]) -> None:
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))


def materialize(
    key: str, server: FakeOpenAIServer, instance: dg.DagsterInstance, **llm_kw
) -> dg.ExecuteInProcessResult:
    llm = LLMResource(base_url=server.base_url, api_key="sk-test-secret", **llm_kw)
    return materialize_partition(instance, key, llm)


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_every_input_gets_exactly_one_row_in_order(inbox: Path, instance: dg.DagsterInstance) -> None:
    requests: list[dict | str] = [{"id": f"q{i}", "prompt": f"[id:q{i}] say {i}", "max_tokens": 8} for i in range(20)]
    requests[3]["prompt"] += " [fail:429:1]"
    requests[5]["prompt"] += " [fail:500:2]"
    requests[7]["prompt"] += " [drop:1]"
    requests[9]["prompt"] += " [garbage:1]"
    requests[11]["prompt"] += " [fail:400]"
    requests.insert(4, '{"id": "broken", "prompt": ')  # malformed line: reported, the rest still runs
    write_requests(inbox / "batch.jsonl", requests)

    with FakeOpenAIServer(latency_s=(0.01, 0.05), retry_after="0") as server:
        result = materialize("batch.jsonl", server, instance, max_in_flight=4)
        assert result.success
        assert server.max_in_flight <= 4
        assert server.requests_for("q11") == 1  # a 400 is not retried
        assert server.requests_for("q5") == 3

    rows = read_outputs(inference_folders().output_path("batch.jsonl"))
    assert [r.id for r in rows] == [f"q{i}" for i in range(20)]
    assert [r.id for r in rows if not r.succeeded] == ["q11"]
    assert "400" in rows[11].error and "sk-test-secret" not in json.dumps([r.__dict__ for r in rows])
    assert rows[5].attempts == 3 and rows[0].attempts == 1
    assert all(r.prompt_tokens > 0 and r.completion_tokens > 0 for r in rows if r.succeeded)

    meta = metadata(result)
    assert (meta["items"], meta["succeeded"], meta["failed"], meta["invalid_lines"]) == (20, 19, 1, 1)
    assert meta["retries"] == 1 + 2 + 1 + 1
    assert meta["prompt_tokens"] == sum(r.prompt_tokens for r in rows)
    # The output file is the partition's table: its row count in the keys the UI shows.
    assert meta["dagster/row_count"] == meta["dagster/partition_row_count"] == meta["output_rows"] == len(rows)
    # The preview table: the first answers, then the first errors, with their tokens and attempts.
    preview = table_rows(meta["preview"])
    assert [p["id"] for p in preview] == ["q0", "q1", "q2", "q3", "q4", "q11"]
    by_id = {r.id: r for r in rows}
    for p in preview:
        row = by_id[p["id"]]
        assert (p["output"], p["error"], p["attempts"]) == (row.output, row.error, row.attempts)
        assert (p["prompt_tokens"], p["completion_tokens"]) == (row.prompt_tokens, row.completion_tokens)
    assert "400" in preview[-1]["error"] and preview[-1]["output"] is None
    plain = {k: table_rows(v) if isinstance(v, dg.TableMetadataValue) else v for k, v in meta.items()}
    assert "sk-test-secret" not in json.dumps(plain, default=str)
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    # 1 error in 20 is 5%, over the default 1% threshold: the batch is flagged, not lost.
    assert evaluations == {"one_output_per_input": True, "error_rate_within_threshold": False}


def test_rerun_pays_only_for_what_failed(inbox: Path, instance: dg.DagsterInstance) -> None:
    write_requests(
        inbox / "resume.jsonl",
        [{"id": f"r{i}", "prompt": f"[id:r{i}] item {i}" + (" [fail:500:9]" if i == 2 else "")} for i in range(6)],
    )
    with FakeOpenAIServer(retry_after="0") as server:
        first = materialize("resume.jsonl", server, instance, max_attempts=2)
        assert metadata(first)["failed"] == 1 and server.requests_for("r2") == 2
        second = materialize("resume.jsonl", server, instance, max_attempts=2)
        # Only the failed item is asked again; the five answers were already paid for.
        assert {i: server.requests_for(f"r{i}") for i in range(6)} == {0: 1, 1: 1, 2: 4, 3: 1, 4: 1, 5: 1}
    meta = metadata(second)
    assert meta["skipped_already_answered"] == 5 and meta["answered_this_run"] == 1
    assert read_outputs(inference_folders().output_path("resume.jsonl"))[2].attempts == 4


def test_strict_mode_and_unusable_files_fail_with_file_and_line(inbox: Path, instance: dg.DagsterInstance) -> None:
    write_requests(inbox / "strict.jsonl", [{"id": "a", "prompt": "hello"}, {"id": "a", "prompt": "again"}])
    write_requests(inbox / "empty.jsonl", ['{"id": 1}'])
    with FakeOpenAIServer() as server:
        instance.add_dynamic_partitions(inference_files.name, ["strict.jsonl"])
        strict = dg.materialize(
            [inference_outputs],
            partition_key="strict.jsonl",
            instance=instance,
            resources={**settings_resources(), "llm": LLMResource(base_url=server.base_url, api_key="k")},
            run_config={"ops": {"inference_outputs": {"config": {"strict": True}}}},
            raise_on_error=False,
        )
        unusable = materialize("empty.jsonl", server, instance)
        assert server.total_requests == 0  # validation runs before any request is sent
    assert not strict.success and not unusable.success
    strict_error = error_text(strict)
    assert f"{inbox / 'strict.jsonl'}:2" in strict_error and "duplicate id" in strict_error
    assert "no valid request among 1 line" in error_text(unusable)


def test_inbox_sensor_adds_a_partition_once_per_file_content(inbox: Path, instance: dg.DagsterInstance) -> None:
    def tick(cursor: str | None) -> dg.SensorResult:
        resources = {"inference": settings_resources()["inference"]}
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
            result = inference_inbox_sensor(context)
        return result if isinstance(result, dg.SensorResult) else dg.SensorResult(skip_reason=result)

    assert tick(None).run_requests in ([], None)
    write_requests(inbox / "jobs.jsonl", [{"id": "1", "prompt": "hi"}])
    (inbox / "notes.txt").write_text("not a request file")
    first = tick(None)
    assert [r.partition_key for r in first.run_requests] == ["jobs.jsonl"]
    assert first.dynamic_partitions_requests[0].partition_keys == ["jobs.jsonl"]
    assert not tick(first.cursor).run_requests  # same content: nothing new
    write_requests(inbox / "jobs.jsonl", [{"id": "1", "prompt": "hi"}, {"id": "2", "prompt": "there"}])
    changed = tick(first.cursor)
    assert len(changed.run_requests) == 1
    assert changed.run_requests[0].run_key != first.run_requests[0].run_key
