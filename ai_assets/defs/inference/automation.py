"""A JSONL file dropped in the inbox becomes a partition and a run, once per file content."""

import json
import shlex
from pathlib import Path

import dagster as dg

from ai_assets.defs.inference.assets import inference_files
from ai_assets.lib.inference.files import InvalidPartitionKeyError, fingerprint, partition_key_for
from ai_assets.lib.llm.batch_api import TERMINAL, BatchJournal, BatchJournalBusyError, batch_ids_digest
from ai_assets.resources.inference import InferenceResource
from ai_assets.resources.llm import LLMResource

batch_inference = dg.define_asset_job(
    "batch_inference",
    selection=dg.AssetSelection.groups("inference"),
    description="Answer every request of one input file through the configured LLM endpoint.",
    tags={"domain": "inference"},
)


@dg.sensor(
    name="inference_inbox_sensor",
    job=batch_inference,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the inference inbox (AI_ASSETS_INFERENCE_INBOX): a new *.jsonl file adds a "
    "partition and requests a run; a changed file requests another. The cursor holds each file's size, "
    "mtime and content hash, so files are hashed only when they change. A file whose name is not a "
    "partition key (or a symlink out of the inbox) is skipped with a warning saying what to do.",
)
def inference_inbox_sensor(
    context: dg.SensorEvaluationContext, inference: InferenceResource
) -> dg.SensorResult | dg.SkipReason:
    # Resolved in the process evaluating the sensor (the daemon), from its own environment.
    folders = inference.folders()
    inbox = folders.inbox
    if not inbox.is_dir():
        return dg.SkipReason(f"No inbox folder at {inbox}")
    previous: dict[str, list] = json.loads(context.cursor) if context.cursor else {}
    current: dict[str, list] = {}
    requests, new_keys = [], []
    known = set(context.instance.get_dynamic_partitions(inference_files.name))
    for path in sorted(inbox.glob("*.jsonl")):
        key = partition_key_for(path)
        if path.name != key:
            # Renaming here would race with whoever is still writing the file; say what to do instead.
            taken = " (a file of that name is already in the inbox)" if (inbox / key).exists() else ""
            context.log.warning(
                f"{path}: skipped, its name is not a partition key (letters, digits, '.', '_', '-'); rename "
                f"it to {key}{taken}, or submit it with "
                f"`python -m ai_assets.lib.inference.submit {shlex.quote(str(path))}`"
            )
            continue
        try:
            folders.input_path(key)  # the same check a run makes: a symlink out of the inbox is refused here too
        except InvalidPartitionKeyError as error:
            context.log.warning(f"{path}: skipped: {error}")
            continue
        if not path.is_file():
            continue
        seen = previous.get(key)
        current[key] = fingerprint(path, seen)
        digest = current[key][2]
        if seen and seen[2] == digest:
            continue
        if key not in known:
            new_keys.append(key)
        requests.append(dg.RunRequest(partition_key=key, run_key=f"{key}:{digest[:16]}"))
    if not requests:
        return dg.SensorResult(skip_reason="No new or changed input file", cursor=json.dumps(current))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[inference_files.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(current),
    )


# A journal's name: `<partition key>.<16 hex of the input's content hash>.batches.jsonl`.
_JOURNAL_SUFFIX = ".batches.jsonl"


def _journal_key(path: Path) -> tuple[str, str] | None:
    stem = path.name.removesuffix(_JOURNAL_SUFFIX)
    key, _, digest = stem.rpartition(".")
    return (key, digest) if key and len(digest) == 16 else None


@dg.sensor(
    name="inference_batch_sensor",
    job=batch_inference,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Polls the Batch API batches of inference partitions in batch_api mode (one GET per batch in "
    "flight, none when there is none) and requests the partition's run once all of its batches are done "
    "(completed, expired, cancelled or failed): that run downloads their results into the ledger, sends what "
    "failed again, and writes the output when nothing is left in flight. No step waits on a batch for a day. "
    "A run that fails is requested again on a later tick.",
)
def inference_batch_sensor(
    context: dg.SensorEvaluationContext, inference: InferenceResource, llm: LLMResource
) -> dg.SensorResult | dg.SkipReason:
    folders = inference.folders()
    # Cursor: per partition, the inbox file's [size, mtime_ns, digest], so a large input is hashed once.
    seen: dict[str, list] = json.loads(context.cursor) if context.cursor else {}
    waiting = []
    for path in sorted(folders.ledgers.glob(f"*{_JOURNAL_SUFFIX}")) if folders.ledgers.is_dir() else []:
        named = _journal_key(path)
        if named is None:
            continue
        journal = BatchJournal(path)
        subs = [s for s in journal.load() if s.in_flight]
        if subs:
            waiting.append((named[0], named[1], journal, subs))
    if not waiting:
        return dg.SensorResult(skip_reason="No batches in flight", cursor=json.dumps({}))
    cursor: dict[str, list] = {}
    requests, notes = [], []
    client = llm.batch_client()
    try:
        for key, digest16, journal, subs in waiting:
            try:
                source = folders.input_path(key)
            except InvalidPartitionKeyError as error:
                context.log.warning(f"{journal.path}: skipped: {error}")
                continue
            if not source.is_file():
                notes.append(f"{key}: its input file is gone; its {len(subs)} batch(es) are left uncollected")
                continue
            cursor[key] = fingerprint(source, seen.get(key))
            digest = cursor[key][2]
            if digest[:16] != digest16:
                notes.append(f"{key}: the input changed since its batches were sent; {journal.path} is left as it is")
                continue
            try:
                with journal.locked():  # held by a run submitting or collecting right now: look next tick
                    pass
            except BatchJournalBusyError:
                notes.append(f"{key}: a run is working on its batches")
                continue
            statuses = {s.batch_id: client.batches.retrieve(s.batch_id).status for s in subs if s.batch_id}
            # An intent without a batch id is a step that died around `create`: a run sorts it out at once.
            unresolved = sum(1 for s in subs if s.unresolved)
            running = {b: st for b, st in statuses.items() if st not in TERMINAL}
            if running and not unresolved:
                notes.append(f"{key}: " + ", ".join(f"{b} {st}" for b, st in running.items()))
                continue
            run_key = _run_key(context.instance, f"{key}:{digest16}:batches:{batch_ids_digest(subs)}")
            requests.append(
                dg.RunRequest(
                    partition_key=key,
                    run_key=run_key,
                    run_config={"ops": {"inference_outputs": {"config": {"mode": "batch_api"}}}},
                    tags={"ai_assets/batches": ",".join(sorted(statuses))[:4000]},
                )
            )
    finally:
        client.close()
    for note in notes:
        context.log.info(note)
    if not requests:
        return dg.SensorResult(skip_reason="; ".join(notes) or "No batch done yet", cursor=json.dumps(cursor))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor))


def _run_key(instance: dg.DagsterInstance, base: str) -> str:
    """`base`, or `base:retry-N` after N runs of it failed or were cancelled (a run key launches only once)."""
    attempt = 0
    while True:
        run_key = base if attempt == 0 else f"{base}:retry-{attempt}"
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1)
        if not runs or runs[0].status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            return run_key
        attempt += 1
