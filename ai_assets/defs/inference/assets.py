"""Batch LLM inference: one dynamic partition per input JSONL file in the inbox."""

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import dagster as dg

from ai_assets.defs.inference.checks import CHECK_SPECS, error_rate_within_threshold, one_output_per_input
from ai_assets.lib.inference.files import OUTPUT_FORMATS, PARTITIONS, file_digest, write_outputs
from ai_assets.lib.inference.modes import choose_mode, mode_file, read_mode_file
from ai_assets.lib.llm import batch_api
from ai_assets.lib.llm.batch_api import BatchJournal, BatchOptions, BatchPass, Submission, batch_pass
from ai_assets.lib.llm.engine import BatchStats, assemble_outputs, counts_since, failed_since, run_batch
from ai_assets.lib.llm.items import InferenceItem
from ai_assets.lib.llm.ledger import ResultLedger
from ai_assets.lib.llm.openai_call import make_openai_call, warm_up_connections
from ai_assets.lib.llm.rate_limit import RateLimiter
from ai_assets.lib.llm.report import ModelPrice, error_rate, estimated_costs, percentile, preview_records
from ai_assets.lib.llm.retry import RetryPolicy
from ai_assets.lib.llm.validation import validate_jsonl
from ai_assets.lib.metadata import preview_table, table_metadata
from ai_assets.resources.inference import InferenceResource
from ai_assets.resources.llm import LLMResource

inference_files = dg.DynamicPartitionsDefinition(name=PARTITIONS)

PREVIEW_COLUMNS = [
    dg.TableColumn("id"),
    dg.TableColumn("output", description="the model's answer"),
    dg.TableColumn("error", description="what ended the request, after its retries"),
    dg.TableColumn("prompt_tokens", "int"),
    dg.TableColumn("completion_tokens", "int"),
    dg.TableColumn("attempts", "int", description="requests sent for this item, over all runs"),
]


class PriceConfig(dg.Config):
    prompt_per_million: float
    completion_per_million: float


BATCH_COLUMNS = [
    dg.TableColumn("batch_id"),
    dg.TableColumn("round", "int"),
    dg.TableColumn("part", "int"),
    dg.TableColumn("model"),
    dg.TableColumn("requests", "int"),
    dg.TableColumn("status", description="the batch's last status: completed, expired, cancelled, failed, ..."),
    dg.TableColumn("succeeded", "int"),
    dg.TableColumn("failed", "int"),
]


class InferenceConfig(dg.Config):
    """How to treat bad input, which backend answers, what tokens cost."""

    # Fail the run on any invalid line instead of answering the valid ones.
    strict: bool = False
    # The longest prompt a line may hold; None = the `inference` resource's (INFERENCE_MAX_PROMPT_CHARS).
    max_prompt_chars: int | None = None
    # US dollars per million tokens, by model name as the API reports it, at the synchronous list price.
    # Unlisted models count as free and are named in the metadata.
    prices: dict[str, PriceConfig] = {}
    # "sync" (now, bounded in flight) or "batch_api" (the provider's Batch API: within 24 h, at a discount).
    # None = batches in flight go on, else the file's `<name>.mode`, else INFERENCE_MODE.
    mode: str | None = None
    # "rows" (one OutputRow per line) or "batch" (the Batch API's output lines); None = the input's format.
    output_format: str | None = None
    # batch_api: how long this step may wait for its batches before leaving them to inference_batch_sensor
    # (0 = submit or collect, then end the step).
    batch_wait_s: float = 0.0
    # batch_api: rounds, the first included, before a failure is the answer; None = INFERENCE_BATCH_MAX_ROUNDS.
    batch_max_rounds: int | None = None
    # batch_api: the split of an input file (OpenAI's limits; Azure OpenAI allows 100,000 requests).
    batch_max_requests: int = batch_api.MAX_REQUESTS_PER_BATCH
    batch_max_bytes: int = batch_api.MAX_BYTES_PER_BATCH


@dg.multi_asset(
    name="inference_outputs",
    specs=[
        dg.AssetSpec(
            "inference_outputs",
            group_name="inference",
            kinds={"openai", "jsonl"},
            owners=["team:ml-platform"],
            code_version="2",
            # A batch_api run that leaves its batches in flight ends without a materialization: the output
            # is written by the run that collects the last of them.
            skippable=True,
            description="One output row per input request, in input order: the model's answer or the error "
            "that ended it. sync mode answers now, bounded in flight; batch_api mode sends the file through "
            "the provider's Batch API at a discount and materializes when inference_batch_sensor finds its "
            "batches done. Both record every answer in the same ledger, so nothing is paid for twice.",
        )
    ],
    partitions_def=inference_files,
    check_specs=CHECK_SPECS,
    can_subset=True,
    pool="openai-api",
)
def inference_outputs(
    context: dg.AssetExecutionContext, config: InferenceConfig, llm: LLMResource, inference: InferenceResource
) -> Iterator[dg.MaterializeResult]:
    """Validate the file, choose its mode, answer it (sync) or submit and collect its batches (batch_api),
    then write the output. The asset's description is on its spec, above.

    sync: a bounded number of requests in flight (a new one starts the moment one finishes), within the
    provider's rate limits; 429s, 5xx, timeouts and dropped connections are retried with backoff, honouring
    Retry-After. Every answer is appended to a ledger as it arrives, so a re-run — or Dagster's retry after
    a crash — pays only for what is not answered yet and retries what failed; batch_api records into the
    same ledger (see `ai_assets.lib.llm.batch_api`).
    """
    started = time.perf_counter()
    key = context.partition_key
    folders = inference.folders()
    source = folders.input_path(key)
    max_prompt_chars = inference.max_prompt_chars if config.max_prompt_chars is None else config.max_prompt_chars
    if config.output_format is not None and config.output_format not in OUTPUT_FORMATS:
        raise ValueError(f"run config output_format: {config.output_format!r} is not one of rows, batch")
    validated = validate_jsonl(source, max_prompt_chars=max_prompt_chars)
    for problem in [*validated.problems, *validated.warnings]:
        context.log.warning(str(problem))
    validated.raise_if_unusable(strict=config.strict)
    items = validated.items

    digest = file_digest(source)
    ledger_file = folders.ledger_path(key, digest)
    journal = BatchJournal.beside(ledger_file)
    in_flight = [s.batch_id or s.intent for s in journal.load() if s.in_flight]
    mode, why = choose_mode(
        configured=config.mode,
        batches_in_flight=in_flight,
        file_choice=read_mode_file(mode_file(folders, key)),
        default=inference.default_mode(),
    )
    context.log.info(
        f"{key}: {len(items)} valid requests ({validated.format} format), {len(validated.problems)} invalid lines; "
        f"mode {mode} ({why}); endpoint {'embedded llama.cpp' if llm.embedded else llm.endpoint}"
        + (f", up to {llm.max_in_flight} in flight" if mode == "sync" else "")
    )

    with ResultLedger(ledger_file) as ledger:
        answered_before = sum(1 for row in ledger.load().values() if row.succeeded)
        if mode == "sync":
            stats, batches = asyncio.run(_run(context, llm, items, ledger)), None
        else:
            stats, batches = None, _run_batches(context, config, llm, inference, items, ledger, journal, key, digest)
            if not batches.last.finished:
                context.log_event(
                    dg.AssetObservation(
                        asset_key="inference_outputs", partition=key, metadata=_waiting_metadata(batches, items)
                    )
                )
                context.log.info(
                    f"{len(batches.last.open)} batch(es) in flight; inference_batch_sensor requests the next run "
                    "of this partition when they are done, and that run writes the output"
                )
                return
        rows = assemble_outputs(items, ledger.load())
    output_format = config.output_format or ("batch" if validated.format == "batch" else "rows")
    output_file = folders.output_path(key)
    written = write_outputs(output_file, rows, output_format=output_format)

    succeeded = sum(1 for r in rows if r.succeeded)
    prices = {m: ModelPrice(p.prompt_per_million, p.completion_per_million) for m, p in config.prices.items()}
    discount = inference.discount()
    cost = estimated_costs(rows, prices, discount)
    latencies = [r.latency_s for r in rows if r.succeeded and not r.batch_id]
    prompt_tokens = sum(r.prompt_tokens for r in rows)
    completion_tokens = sum(r.completion_tokens for r in rows)
    models = sorted({r.model for r in rows if r.model})
    if stats is not None:
        progress = {
            "answered_this_run": stats.succeeded + stats.failed,
            "skipped_already_answered": stats.skipped,
            "retries": stats.retries,
            "throughput_items_per_s": round((stats.succeeded + stats.failed) / stats.wall_s, 2)
            if stats.wall_s
            else 0.0,
            "max_in_flight_observed": stats.max_in_flight_observed,
        }
    else:
        assert batches is not None
        progress = {
            "answered_this_run": batches.rows_recorded,
            "skipped_already_answered": answered_before,
            **_batch_metadata(batches),
        }
    yield dg.MaterializeResult(
        asset_key="inference_outputs",
        metadata={
            # The partition's output file is one table: one row per input request.
            **table_metadata(written, partitioned=True),
            "mode": mode,
            "items": len(rows),
            "succeeded": succeeded,
            "failed": len(rows) - succeeded,
            "error_rate": round(error_rate(rows), 4),
            "invalid_lines": len(validated.problems),
            "input_format": validated.format,
            "output_format": output_format,
            **progress,
            "answered_by_batch_api": sum(1 for r in rows if r.batch_id),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            # What it cost as answered, and the same tokens at each mode's price: what the choice saved.
            "estimated_cost_usd": round(cost.paid, 6),
            "estimated_cost_sync_usd": round(cost.all_sync, 6),
            "estimated_cost_batch_api_usd": round(cost.all_batch_api, 6),
            "saved_usd": round(cost.saved, 6),
            "batch_discount": discount,
            "unpriced_models": ", ".join(cost.unpriced) or "none",
            "latency_p50_s": round(percentile(latencies, 50), 3),
            "latency_p95_s": round(percentile(latencies, 95), 3),
            "model": ", ".join(models) or llm.default_model,
            "endpoint": "embedded llama.cpp" if llm.embedded else llm.endpoint,
            "input": dg.MetadataValue.path(str(source)),
            "output": dg.MetadataValue.path(str(output_file)),
            "output_rows": written,
            "duration_s": round(time.perf_counter() - started, 3),
            "preview": preview_table(PREVIEW_COLUMNS, preview_records(rows)),
        },
        check_results=[
            one_output_per_input([item.id for item in items], output_file),
            error_rate_within_threshold(output_file, inference.error_rate_threshold()),
        ],
    )


@dataclass
class _BatchRun:
    """The passes of one step in batch_api mode."""

    last: BatchPass
    passes: int = 0
    rows_recorded: int = 0
    resubmitted_items: int = 0
    submitted_batches: int = 0
    recovered_batches: int = 0


def _run_batches(
    context: dg.AssetExecutionContext,
    config: InferenceConfig,
    llm: LLMResource,
    inference: InferenceResource,
    items: Sequence[InferenceItem],
    ledger: ResultLedger,
    journal: BatchJournal,
    key: str,
    digest: str,
) -> _BatchRun:
    """Passes of `batch_pass` until nothing is in flight or `batch_wait_s` is spent (a status line per open
    batch every pass, at most ~10 s apart)."""
    options = BatchOptions(
        partition=key,
        input_digest=digest,
        default_model=llm.default_model,
        max_rounds=config.batch_max_rounds or inference.batch_max_rounds,
        max_requests=config.batch_max_requests,
        max_bytes=config.batch_max_bytes,
        secrets=[llm.api_key] if llm.api_key else [],
    )
    deadline = time.monotonic() + config.batch_wait_s
    delay = 0.2
    client = llm.batch_client()
    run: _BatchRun | None = None
    try:
        while True:
            result = batch_pass(client, items, ledger, journal, options, log=context.log.info)
            if run is None:
                run = _BatchRun(last=result)
            run.last = result
            run.passes += 1
            run.rows_recorded += result.rows_recorded
            run.resubmitted_items += result.resubmitted_items
            run.submitted_batches += len(result.submitted)
            run.recovered_batches += len(result.recovered)
            left = deadline - time.monotonic()
            if result.finished or left <= 0:
                return run
            time.sleep(min(delay, left))
            delay = min(delay * 2, 10.0)
    finally:
        client.close()


def _batch_table(subs: Sequence[Submission]) -> dg.TableMetadataValue:
    records = [
        dg.TableRecord(
            {
                "batch_id": s.batch_id or "",
                "round": s.round,
                "part": s.part,
                "model": s.model,
                "requests": s.requests,
                "status": s.final_status or "unknown",
                "succeeded": int(s.collected["succeeded"]) if s.collected else 0,
                "failed": int(s.collected["failed"]) if s.collected else 0,
            }
        )
        for s in subs
        if s.batch_id
    ]
    return dg.MetadataValue.table(records, schema=dg.TableSchema(columns=BATCH_COLUMNS))


def _batch_metadata(run: _BatchRun) -> dict[str, object]:
    subs = [s for s in run.last.submissions if s.batch_id]
    counts = run.last.status_counts()
    return {
        "batch_ids": ", ".join(s.batch_id for s in subs if s.batch_id) or "none",
        "batches": _batch_table(subs),
        "batch_rounds": run.last.rounds,
        "resubmitted_items": run.resubmitted_items,
        "batches_submitted_this_run": run.submitted_batches,
        "batches_recovered_after_crash": run.recovered_batches,
        **{f"batches_{status}": n for status, n in sorted(counts.items())},
    }


def _waiting_metadata(run: _BatchRun, items: Sequence[InferenceItem]) -> dict[str, object]:
    in_flight = {i for s in run.last.open for i in s.ids}
    return {
        "mode": "batch_api",
        "items": len(items),
        "items_in_flight": len(in_flight),
        "rows_recorded_this_run": run.rows_recorded,
        **_batch_metadata(run),
    }


async def _run(context: dg.AssetExecutionContext, llm: LLMResource, items, ledger: ResultLedger) -> BatchStats:
    previous = ledger.load()
    answered_before = sum(1 for item in items if item.id in previous and previous[item.id].succeeded)
    batch_s = 0.0  # time in run_batch over all passes, server (re)starts excluded
    passes = 0
    rate_limits = llm.rate_limits()  # (requests, tokens) per minute; a malformed one fails here, named

    async def batch(client) -> BatchStats:  # noqa: ANN001 - an openai.AsyncOpenAI
        nonlocal batch_s, passes
        passes += 1
        # After a restart: items that already failed for good earlier in this step are not paid for twice.
        final = failed_since(previous, ledger.load()) if passes > 1 else set()
        # Open the connections before the first request, so short batches do not pay their set-up
        # while the slots should already be busy.
        pending = len(items) - answered_before
        if pending > 0:
            await warm_up_connections(client, min(llm.max_in_flight, pending))
        started = time.perf_counter()
        try:
            return await run_batch(
                items,
                # A dead embedded server aborts the batch instead of being retried; `supervised` restarts it
                # once and runs the batch again, which skips what the ledger already holds.
                llm.guard(make_openai_call(client, llm.default_model)),
                ledger=ledger,
                max_in_flight=llm.max_in_flight,
                retry=RetryPolicy(max_attempts=llm.max_attempts),
                limiter=RateLimiter(*rate_limits) if any(rate_limits) else None,
                on_progress=lambda progress: context.log.info(str(progress)),
                # Errors are recorded in outputs and logs: the key is scrubbed from them whatever its shape.
                secrets=[llm.api_key] if llm.api_key else [],
                final=final,
            )
        finally:
            batch_s += time.perf_counter() - started

    stats = await llm.supervised(context.log, batch)
    if passes > 1:
        # The last pass saw what earlier passes answered as skipped, and an aborted pass returns no
        # stats: count this step's work from the ledger, which holds every finished item.
        stats.succeeded, stats.failed, stats.retries = counts_since(previous, ledger.load(), [i.id for i in items])
        stats.skipped = answered_before
    stats.wall_s = batch_s
    return stats
