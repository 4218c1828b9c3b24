"""batch_api mode through Dagster, against the fake Batch API on 127.0.0.1: rounds, the sensor, faults."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ai_assets.defs.inference.assets import inference_files, inference_outputs
from ai_assets.defs.inference.automation import inference_batch_sensor
from ai_assets.lib.inference.files import file_digest, read_outputs
from ai_assets.lib.llm.batch_api import BatchJournal
from ai_assets.resources.llm import LLMResource
from ai_assets_tests.inference.harness import error_text, submit_and_kill_when
from ai_assets_tests.inference.openai_server import FakeOpenAIServer
from ai_assets_tests.ingestion.harness import table_rows
from ai_assets_tests.resources import inference_folders, settings_resources

PRICES = {"gpt-4o-mini": {"prompt_per_million": 0.15, "completion_per_million": 0.6}}


def batch_lines(ids: list[str], suffix: dict[str, str] | None = None) -> str:
    suffix = suffix or {}
    return "".join(
        json.dumps(
            {
                "custom_id": i,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"[id:{i}] {suffix.get(i, '')}".strip()}],
                },
            }
        )
        + "\n"
        for i in ids
    )


def request_lines(ids: list[str]) -> str:
    return "".join(json.dumps({"id": i, "prompt": f"[id:{i}] say {i}"}) + "\n" for i in ids)


def run(
    instance: dg.DagsterInstance, key: str, server: FakeOpenAIServer, *, llm: LLMResource | None = None, **config: Any
) -> dg.ExecuteInProcessResult:
    if not instance.has_dynamic_partition(inference_files.name, key):
        instance.add_dynamic_partitions(inference_files.name, [key])
    config = {"mode": "batch_api", "prices": PRICES, **config}
    return dg.materialize(
        [inference_outputs],
        partition_key=key,
        instance=instance,
        resources={**settings_resources(), "llm": llm or LLMResource(base_url=server.base_url, api_key="sk-batch")},
        run_config={"ops": {"inference_outputs": {"config": config}}},
        raise_on_error=False,
    )


def metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def tick(instance: dg.DagsterInstance, server: FakeOpenAIServer, cursor: str | None = None) -> dg.SensorResult:
    resources = {
        "inference": settings_resources()["inference"],
        "llm": LLMResource(base_url=server.base_url, api_key="k"),
    }
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = inference_batch_sensor(context)
    return result if isinstance(result, dg.SensorResult) else dg.SensorResult(skip_reason=result)


def skipped(result: dg.SensorResult) -> str:
    assert not result.run_requests and result.skip_reason is not None
    return result.skip_reason.skip_message or ""


def sent_in_batches(server: FakeOpenAIServer, ids: list[str]) -> dict[str, int]:
    return {i: server.batch_requests_for(i) for i in ids}


def test_one_step_answers_in_rounds_and_resends_only_what_failed(inbox: Path, instance: dg.DagsterInstance) -> None:
    ids = [f"r{i}" for i in range(20)]
    (inbox / "cheap.jsonl").write_text(
        batch_lines(ids, {"r3": "[fail:500:1]", "r7": "[fail:429:1]", "r9": "[fail:500:1]", "r11": "[fail:400]"})
    )
    with FakeOpenAIServer() as server:
        result = run(instance, "cheap.jsonl", server, batch_wait_s=30)
        assert result.success, error_text(result)
        assert server.batches_created == 2
        # Round 1 sent all 20; round 2 only the three whose failure another try can fix (not the 400).
        assert sent_in_batches(server, ids) == {i: 2 if i in ("r3", "r7", "r9") else 1 for i in ids}
    meta = metadata(result)
    assert (meta["mode"], meta["items"], meta["succeeded"], meta["failed"]) == ("batch_api", 20, 19, 1)
    assert (meta["batch_rounds"], meta["resubmitted_items"], meta["answered_by_batch_api"]) == (2, 3, 20)
    assert meta["batches_completed"] == 2 and len(meta["batch_ids"].split(", ")) == 2
    batches = table_rows(meta["batches"])
    assert [(b["round"], b["requests"], b["status"], b["succeeded"], b["failed"]) for b in batches] == [
        (1, 20, "completed", 16, 4),
        (2, 3, "completed", 3, 0),
    ]
    # The cost of the same tokens both ways: everything went through batches, at half the price.
    assert meta["estimated_cost_batch_api_usd"] == meta["estimated_cost_usd"] > 0
    assert meta["estimated_cost_sync_usd"] == pytest.approx(2 * meta["estimated_cost_usd"], abs=1e-6)
    assert meta["saved_usd"] == pytest.approx(meta["estimated_cost_usd"], abs=1e-6) and meta["batch_discount"] == 0.5
    # The input was in the batch format, so the output is too: one line per custom_id, in input order.
    lines = [json.loads(line) for line in inference_folders().output_path("cheap.jsonl").read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == ids and meta["output_format"] == "batch"
    assert lines[0]["response"]["status_code"] == 200 and lines[0]["id"].startswith("batch_req_")
    assert lines[0]["response"]["body"]["choices"][0]["message"]["content"] == "echo: [id:r0]"
    assert lines[11]["response"]["status_code"] == 400 and lines[11]["error"] is None
    rows = {r.id: r for r in read_outputs(inference_folders().output_path("cheap.jsonl"))}
    assert rows["r3"].succeeded and not rows["r11"].succeeded and "bad_request" in rows["r11"].error
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {
        "one_output_per_input": True,
        "error_rate_within_threshold": False,  # 1 in 20
    }


def test_the_sensor_requests_the_run_that_collects(inbox: Path, instance: dg.DagsterInstance) -> None:
    ids = [f"s{i}" for i in range(6)]
    (inbox / "slow.jsonl").write_text(request_lines(ids))
    with FakeOpenAIServer() as server:
        server.batch_mode = "manual"
        assert skipped(tick(instance, server)) == "No batches in flight"
        first = run(instance, "slow.jsonl", server)
        # Submitted, and the step ended: nothing materialized, nothing written, the batch is observed.
        assert first.success and not first.get_asset_materialization_events()
        assert not inference_folders().output_path("slow.jsonl").exists()
        (observation,) = [e for e in first.all_events if e.event_type_value == "ASSET_OBSERVATION"]
        observed = observation.event_specific_data.asset_observation.metadata
        assert observed["items_in_flight"].value == 6 and observed["batches_validating"].value == 1
        (batch_id,) = server.batches

        waiting = tick(instance, server)
        assert skipped(waiting) == f"slow.jsonl: {batch_id} in_progress"

        server.finish_batch(batch_id)
        done = tick(instance, server, waiting.cursor)
        (request,) = done.run_requests
        assert request.partition_key == "slow.jsonl"
        assert request.run_config == {"ops": {"inference_outputs": {"config": {"mode": "batch_api"}}}}
        # A sensor killed before its tick was saved evaluates again: the same run key, so one run.
        assert tick(instance, server, waiting.cursor).run_requests[0].run_key == request.run_key
        # Had that run failed, the next tick asks again under a new key (a run key launches once).
        failed = dg.DagsterRun(
            job_name="batch_inference",
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.FAILURE,
            tags={"dagster/run_key": request.run_key},
        )
        instance.add_run(failed)
        assert tick(instance, server, waiting.cursor).run_requests[0].run_key == f"{request.run_key}:retry-1"
        instance.delete_run(failed.run_id)

        # The run the sensor requested (no mode in its config needed: batches in flight choose batch_api).
        second = run(instance, "slow.jsonl", server, mode=None)
        assert second.success and server.batches_created == 1
        assert skipped(tick(instance, server, done.cursor)) == "No batches in flight"
        # The same run launched twice (a duplicate launch) pays for nothing and records nothing again.
        third = run(instance, "slow.jsonl", server, mode=None)
        assert third.success and server.batches_created == 1
    meta = metadata(second)
    assert (meta["succeeded"], meta["answered_this_run"], meta["output_format"]) == (6, 6, "rows")
    assert metadata(third)["answered_this_run"] == 0
    rows = read_outputs(inference_folders().output_path("slow.jsonl"))
    assert [r.id for r in rows] == ids and all(r.batch_id == batch_id for r in rows)


def test_expired_half_done_then_cancelled_resend_only_the_unanswered(inbox: Path, instance: dg.DagsterInstance) -> None:
    ids = [f"e{i}" for i in range(10)]
    (inbox / "late.jsonl").write_text(request_lines(ids))
    with FakeOpenAIServer() as server:
        server.batch_mode = "manual"
        assert run(instance, "late.jsonl", server).success
        (first,) = server.batches
        server.expire_batch(first, answered=5)
        collect = run(instance, "late.jsonl", server, mode=None)
        assert collect.success and not collect.get_asset_materialization_events()
        second = [b for b in server.batches if b != first][0]
        assert server.batches[second].custom_ids == ids[5:]  # only the expired half goes again

        # Someone cancels the second batch at the provider after two answers.
        server.answer_requests(second, 2)
        _cancel(server, second)
        assert run(instance, "late.jsonl", server, mode=None).success
        third = [b for b in server.batches if b not in (first, second)][0]
        assert server.batches[third].custom_ids == ids[7:]
        server.finish_batch(third)
        final = run(instance, "late.jsonl", server, mode=None)
        assert final.success
    assert sent_in_batches(server, ids) == {i: 1 if i < "e5" else 2 if i < "e7" else 3 for i in ids}
    meta = metadata(final)
    assert (meta["succeeded"], meta["batch_rounds"], meta["batches_expired"], meta["batches_cancelled"]) == (
        10,
        3,
        1,
        1,
    )
    rows = {r.id: r for r in read_outputs(inference_folders().output_path("late.jsonl"))}
    assert rows["e9"].attempts == 3 and rows["e0"].attempts == 1


def _cancel(server: FakeOpenAIServer, batch_id: str) -> None:
    import openai

    with openai.OpenAI(base_url=server.base_url, api_key="k") as client:
        client.batches.cancel(batch_id)


def test_batches_failing_validation(inbox: Path, instance: dg.DagsterInstance) -> None:
    ids = [f"v{i}" for i in range(4)]
    (inbox / "quota.jsonl").write_text(request_lines(ids))
    (inbox / "refused.jsonl").write_text(request_lines([f"w{i}" for i in range(3)]))
    with FakeOpenAIServer() as server:
        # The account's enqueued-token quota is full: another round passes once it frees up.
        server.validation_failures = ["token_limit_exceeded"]
        quota = run(instance, "quota.jsonl", server, batch_wait_s=30)
        assert quota.success and server.batches_created == 2
        # Any other validation failure would fail the same way again: it is the answer, with its reason.
        server.validation_failures = ["invalid_request"]
        refused = run(instance, "refused.jsonl", server, batch_wait_s=30)
        assert refused.success and server.batches_created == 3
    assert (metadata(quota)["succeeded"], metadata(quota)["batches_failed"], metadata(quota)["resubmitted_items"]) == (
        4,
        1,
        4,
    )
    rows = read_outputs(inference_folders().output_path("refused.jsonl"))
    assert all(r.error.startswith("batch_failed: invalid_request: scripted validation failure") for r in rows)
    assert {e.check_name: e.passed for e in refused.get_asset_check_evaluations()}[
        "error_rate_within_threshold"
    ] is False


def test_upload_refused_fails_clearly_and_keeps_what_was_sent(inbox: Path, instance: dg.DagsterInstance) -> None:
    ids = [f"u{i}" for i in range(10)]
    (inbox / "split.jsonl").write_text(request_lines(ids))
    with FakeOpenAIServer() as server:
        server.batch_mode = "manual"
        server.upload_failures = [0, 400]  # the first part's upload goes through, the second's is refused
        failed = run(instance, "split.jsonl", server, batch_max_requests=5)
        assert not failed.success
        message = error_text(failed)
        assert "split.jsonl: uploading round 1 part 2 (5 requests" in message
        assert "upload refused: HTTP 400: scripted 400 on upload" in message
        (first,) = server.batches
        assert server.batches[first].custom_ids == ids[:5]
        # Run again: the refused part goes now; the batch made before the failure is not made again.
        again = run(instance, "split.jsonl", server, batch_max_requests=5)
        assert again.success and server.batches_created == 2
        second = next(b for b in server.batches if b != first)
        assert server.batches[second].custom_ids == ids[5:]
        for batch_id in (first, second):
            server.finish_batch(batch_id)
        final = run(instance, "split.jsonl", server, mode=None, batch_max_requests=5)
        assert final.success
    assert sent_in_batches(server, ids) == dict.fromkeys(ids, 1)
    meta = metadata(final)
    assert (meta["succeeded"], meta["batch_rounds"], meta["resubmitted_items"]) == (10, 1, 0)


def test_embedded_llm_has_no_batch_api(inbox: Path, instance: dg.DagsterInstance) -> None:
    (inbox / "local.jsonl").write_text(request_lines(["a"]))
    with FakeOpenAIServer() as server:
        result = run(instance, "local.jsonl", server, llm=LLMResource())
    assert not result.success
    assert "mode batch_api needs an endpoint with a Batch API" in error_text(result)


def test_killed_between_create_and_record_makes_no_second_batch(
    tmp_path: Path, inbox: Path, instance: dg.DagsterInstance
) -> None:
    ids = [f"k{i}" for i in range(30)]
    source = tmp_path / "crash.jsonl"
    source.write_text(request_lines(ids))
    home = tmp_path / "dagster_home"
    home.mkdir()
    with FakeOpenAIServer() as server:
        server.create_delay_s = 30.0  # the batch exists at the provider; its id never reaches the journal
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "OPENAI_BASE_URL": server.base_url,
            "OPENAI_API_KEY": "sk-batch",
            "INFERENCE_MODE": "batch_api",
        }
        submit_and_kill_when(source, env, lambda: server.batches_created >= 1)
        assert server.batches_created == 1, "the step was not killed inside batches.create"
        journal = BatchJournal.beside(
            inference_folders().ledger_path("crash.jsonl", file_digest(inbox / "crash.jsonl"))
        )
        (sub,) = journal.load()
        assert sub.unresolved and sub.file_id  # intent and upload recorded, the batch id not

        server.create_delay_s = 0.0
        # The sensor sees the unresolved intent and asks for a run at once; that run finds the batch.
        assert tick(instance, server).run_requests
        result = run(instance, "crash.jsonl", server, mode=None, batch_wait_s=30)
        assert result.success, error_text(result)
        assert server.batches_created == 1  # found again by its intent id, not made twice
        assert sent_in_batches(server, ids) == dict.fromkeys(ids, 1)
    meta = metadata(result)
    assert (meta["succeeded"], meta["batches_recovered_after_crash"]) == (30, 1)
    assert [r.id for r in read_outputs(inference_folders().output_path("crash.jsonl"))] == ids


def test_bad_batch_lines_are_reported_by_file_and_line(inbox: Path, instance: dg.DagsterInstance) -> None:
    good = json.loads(batch_lines(["ok"]))
    lines = [
        good,
        {**good},  # the same custom_id again
        {**good, "custom_id": "embeddings", "url": "/v1/embeddings"},
        {**good, "custom_id": "nobody", "body": "hello"},
        {k: v for k, v in good.items() if k != "custom_id"},
    ]
    (inbox / "bad.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with FakeOpenAIServer() as server:
        strict = run(instance, "bad.jsonl", server, strict=True)
        assert server.uploads == 0  # validation comes before anything is sent
        lenient = run(instance, "bad.jsonl", server, batch_wait_s=30)
    message = error_text(strict)
    path = inbox / "bad.jsonl"
    assert f"{path}: 4 of 5 lines invalid" in message
    assert f"{path}:2: custom_id: duplicate custom_id 'ok' (first at line 1)" in message
    assert f"{path}:3: url: unsupported '/v1/embeddings'" in message
    assert f"{path}:4: body: must be an object" in message
    assert f"{path}:5: custom_id: missing" in message
    # Without strict, the valid line is answered and the rest are reported in the run log.
    assert lenient.success and (metadata(lenient)["items"], metadata(lenient)["invalid_lines"]) == (1, 4)
