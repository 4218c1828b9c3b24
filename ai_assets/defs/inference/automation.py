"""A JSONL file dropped in the inbox becomes a partition and a run, once per file content."""

import json
import shlex

import dagster as dg

from ai_assets.defs.inference.assets import inference_files
from ai_assets.lib.inference.files import InvalidPartitionKeyError, file_digest, partition_key_for
from ai_assets.resources.inference import InferenceResource

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
        stat = path.stat()
        seen = previous.get(key)
        digest = seen[2] if seen and seen[:2] == [stat.st_size, stat.st_mtime_ns] else file_digest(path)
        current[key] = [stat.st_size, stat.st_mtime_ns, digest]
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
