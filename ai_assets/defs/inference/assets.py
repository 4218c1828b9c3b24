"""Batch LLM inference: one dynamic partition per input JSONL file in the inbox."""

import asyncio
import time

import dagster as dg

from ai_assets.defs.inference.checks import CHECK_SPECS, error_rate_within_threshold, one_output_per_input
from ai_assets.lib.inference.files import PARTITIONS, file_digest, write_outputs
from ai_assets.lib.llm.engine import BatchStats, assemble_outputs, counts_since, failed_since, run_batch
from ai_assets.lib.llm.ledger import ResultLedger
from ai_assets.lib.llm.openai_call import make_openai_call, warm_up_connections
from ai_assets.lib.llm.rate_limit import RateLimiter
from ai_assets.lib.llm.report import (
    ModelPrice,
    error_rate,
    estimated_cost,
    percentile,
    preview_records,
)
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


class InferenceConfig(dg.Config):
    """How to treat bad input, and what tokens cost."""

    # Fail the run on any invalid line instead of answering the valid ones.
    strict: bool = False
    # The longest prompt a line may hold; None = the `inference` resource's (INFERENCE_MAX_PROMPT_CHARS).
    max_prompt_chars: int | None = None
    # US dollars per million tokens, by model name as the API reports it. Unlisted models count as free
    # and are named in the metadata.
    prices: dict[str, PriceConfig] = {}


@dg.asset(
    partitions_def=inference_files,
    group_name="inference",
    kinds={"openai", "jsonl"},
    owners=["team:ml-platform"],
    code_version="1",
    pool="openai-api",
    check_specs=CHECK_SPECS,
)
def inference_outputs(
    context: dg.AssetExecutionContext, config: InferenceConfig, llm: LLMResource, inference: InferenceResource
) -> dg.MaterializeResult:
    """One output row per input request, in input order: the model's answer or the error that ended it.

    Requests run with a bounded number in flight (a new one starts the moment one finishes), within
    the provider's rate limits; 429s, 5xx, timeouts and dropped connections are retried with backoff,
    honouring Retry-After. Every answer is appended to a ledger as it arrives, so a re-run — or
    Dagster's retry after a crash — pays only for what is not answered yet and retries what failed.
    """
    started = time.perf_counter()
    key = context.partition_key
    folders = inference.folders()
    source = folders.input_path(key)
    max_prompt_chars = inference.max_prompt_chars if config.max_prompt_chars is None else config.max_prompt_chars
    validated = validate_jsonl(source, max_prompt_chars=max_prompt_chars)
    for problem in [*validated.problems, *validated.warnings]:
        context.log.warning(str(problem))
    validated.raise_if_unusable(strict=config.strict)
    items = validated.items
    context.log.info(
        f"{key}: {len(items)} valid requests, {len(validated.problems)} invalid lines; endpoint "
        f"{'embedded llama.cpp' if llm.embedded else llm.endpoint}, up to {llm.max_in_flight} in flight"
    )

    ledger_file = folders.ledger_path(key, file_digest(source))
    with ResultLedger(ledger_file) as ledger:
        stats = asyncio.run(_run(context, llm, items, ledger))
        rows = assemble_outputs(items, ledger.load())
    output_file = folders.output_path(key)
    written = write_outputs(output_file, rows)

    succeeded = sum(1 for r in rows if r.succeeded)
    prices = {m: ModelPrice(p.prompt_per_million, p.completion_per_million) for m, p in config.prices.items()}
    cost, unpriced = estimated_cost(rows, prices)
    latencies = [r.latency_s for r in rows if r.succeeded]
    prompt_tokens = sum(r.prompt_tokens for r in rows)
    completion_tokens = sum(r.completion_tokens for r in rows)
    models = sorted({r.model for r in rows if r.model})
    return dg.MaterializeResult(
        metadata={
            # The partition's output file is one table: one row per input request.
            **table_metadata(written, partitioned=True),
            "items": len(rows),
            "succeeded": succeeded,
            "failed": len(rows) - succeeded,
            "error_rate": round(error_rate(rows), 4),
            "invalid_lines": len(validated.problems),
            "answered_this_run": stats.succeeded + stats.failed,
            "skipped_already_answered": stats.skipped,
            "retries": stats.retries,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "estimated_cost_usd": round(cost, 6),
            "unpriced_models": ", ".join(unpriced) or "none",
            "latency_p50_s": round(percentile(latencies, 50), 3),
            "latency_p95_s": round(percentile(latencies, 95), 3),
            "throughput_items_per_s": round((stats.succeeded + stats.failed) / stats.wall_s, 2)
            if stats.wall_s
            else 0.0,
            "max_in_flight_observed": stats.max_in_flight_observed,
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
