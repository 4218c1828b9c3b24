"""A JSONL file dropped in the inbox becomes a partition and a run, once per file content."""

import json

import dagster as dg

from ai_assets.inference.assets import inference_files
from ai_assets.inference.storage import file_digest, inbox_dir, partition_key_for

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
    "mtime and content hash, so files are hashed only when they change.",
)
def inference_inbox_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    inbox = inbox_dir()
    if not inbox.is_dir():
        return dg.SkipReason(f"No inbox folder at {inbox}")
    previous: dict[str, list] = json.loads(context.cursor) if context.cursor else {}
    current: dict[str, list] = {}
    requests, new_keys = [], []
    known = set(context.instance.get_dynamic_partitions(inference_files.name))
    for path in sorted(inbox.glob("*.jsonl")):
        key = partition_key_for(path)
        if path.name != key:
            context.log.warning(f"{path.name}: rename it to {key} (letters, digits, '.', '_', '-' only)")
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
