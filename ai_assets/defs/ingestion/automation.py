"""When ingestion runs: nightly, and whenever a watched local source changes."""

import hashlib
import json

import dagster as dg

from ai_assets.lib import settings
from ai_assets.lib.ingestion.sources import iter_watched_files
from ai_assets.lib.memory import return_freed_memory
from ai_assets.resources.sources import DocumentSourcesResource
from ai_assets.run_recovery import executor as run_recovery_executor


@dg.success_hook(name="return_freed_memory")
def return_freed_memory_hook(context: dg.HookContext) -> None:
    """After each step: the steps share one process, so what a step's allocators cached (hundreds of
    MB at 100k documents) is handed back before the next starts instead of adding to its peak."""
    return_freed_memory()


rag_ingestion = dg.define_asset_job(
    "rag_ingestion",
    selection=dg.AssetSelection.groups("ingestion"),
    description="Bring the Qdrant knowledge base in line with the document sources.",
    # The steps form one chain that shares the embedding model and the embedded Qdrant folder (which
    # one process can open at a time): running them in one process loads each once and never waits
    # on the folder lock.
    executor_def=run_recovery_executor.in_process_executor,
    hooks={return_freed_memory_hook},
    tags={"domain": "ingestion"},
)

nightly_rag_refresh = dg.ScheduleDefinition(
    name="nightly_rag_refresh",
    job=rag_ingestion,
    cron_schedule="0 1 * * *",
    # Read when the code location loads, not through a resource: the daemon evaluates a schedule from
    # the loaded definitions before any run (or run worker) exists.
    execution_timezone=settings.value("AI_ASSETS_TIMEZONE"),
    description="Re-reads every source at 01:00 (AI_ASSETS_TIMEZONE): catches URL sources, which no sensor watches.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


def source_fingerprints(document_sources: DocumentSourcesResource) -> dict[str, str]:
    """Per local source, a hash of every watched file's path, size and mtime: cheap to take each tick."""
    fingerprints = {}
    for spec in document_sources.specs():
        if spec.kind != "path":
            continue
        digest = hashlib.sha256()
        watched = iter_watched_files(spec, follow_external_symlinks=document_sources.follows_external_symlinks())
        for relpath, size, mtime_ns in watched:
            digest.update(f"{relpath}\x00{size}\x00{mtime_ns}\n".encode())
        fingerprints[spec.name] = digest.hexdigest()[:16]
    return fingerprints


@dg.sensor(
    name="source_change_sensor",
    job=rag_ingestion,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests an ingestion run when a file in a local source folder is added, changed or "
    "removed. The cursor holds a fingerprint per source, so an unchanged folder requests nothing.",
)
def source_change_sensor(
    context: dg.SensorEvaluationContext, document_sources: DocumentSourcesResource
) -> dg.SensorResult | dg.SkipReason:
    current = source_fingerprints(document_sources)
    previous = json.loads(context.cursor) if context.cursor else None
    cursor = json.dumps(current, sort_keys=True)
    if previous is None:
        return dg.SensorResult(skip_reason="Recorded the sources' current state", cursor=cursor)
    changed = sorted(name for name in current if previous.get(name) != current[name])
    if not changed:
        return dg.SkipReason("No local source changed")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=hashlib.sha256(cursor.encode()).hexdigest()[:16],
                tags={"changed_sources": ",".join(changed)[:200]},
            )
        ],
        cursor=cursor,
    )
