"""Runs the real ingestion job against a chosen corpus and inspects the real Qdrant folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from qdrant_client import QdrantClient

from ai_assets.defs.ingestion import checks
from ai_assets.defs.ingestion.automation import rag_ingestion
from ai_assets.lib.ingestion.audit import IndexAudit, audit_collection, expected_chunk_ids
from ai_assets.lib.ingestion.chunking import ChunkingSettings
from ai_assets.lib.ingestion.sources import parse_source_specs
from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets.resources.sources import DocumentSourcesResource
from ai_assets_tests.domains import domain_defs
from ai_assets_tests.resources import qdrant_on_data_folder, settings_resources

# The ingestion domain as the code location autoloads it, without its resources.
ingestion_defs = domain_defs("ingestion")

index_checks_only = dg.define_asset_job("index_checks_only", selection=dg.AssetSelection.checks(checks.index_checks))


def definitions(sources: str, embedding_model: EmbeddingModelResource, **source_kw: Any) -> dg.Definitions:
    return dg.Definitions(
        assets=ingestion_defs.assets,
        asset_checks=ingestion_defs.asset_checks,
        jobs=[rag_ingestion, index_checks_only],
        resources={
            **settings_resources(),
            "qdrant": qdrant_on_data_folder(lock_timeout_s=30),
            "embedding_model": embedding_model,
            "document_sources": DocumentSourcesResource(sources=sources, **source_kw),
        },
    )


def chunk_config(chunk_size: int = 200, chunk_overlap: int = 32) -> dict:
    return {"ops": {"document_chunks": {"config": {"chunk_size": chunk_size, "chunk_overlap": chunk_overlap}}}}


def ingest(
    sources: str,
    instance: dg.DagsterInstance,
    embedding_model: EmbeddingModelResource,
    chunk_size: int = 200,
    chunk_overlap: int = 32,
    **source_kw: Any,
) -> dg.ExecuteInProcessResult:
    job = definitions(sources, embedding_model, **source_kw).resolve_job_def("rag_ingestion")
    return job.execute_in_process(run_config=chunk_config(chunk_size, chunk_overlap), instance=instance)


def run_index_checks(
    sources: str, instance: dg.DagsterInstance, embedding_model: EmbeddingModelResource
) -> dict[str, dg.AssetCheckEvaluation]:
    job = definitions(sources, embedding_model).resolve_job_def("index_checks_only")
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def materialization(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    """The asset's materialization metadata as plain values."""
    for event in result.get_asset_materialization_events():
        if event.asset_key == dg.AssetKey(asset):
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise AssertionError(f"{asset} was not materialized")


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def qdrant_client(data_dir: Path) -> QdrantClient:
    return QdrantClient(path=str(data_dir / "qdrant"))


def audit(
    data_dir: Path,
    sources: str,
    embedding_model: EmbeddingModelResource,
    chunk_size: int = 200,
    chunk_overlap: int = 32,
) -> IndexAudit:
    expected = expected_chunk_ids(
        parse_source_specs(sources),
        embedding_model.tokenizer(),
        ChunkingSettings(chunk_size, chunk_overlap),
        data_dir / "cache" / "http",
    )
    client = qdrant_client(data_dir)
    try:
        return audit_collection(client, "knowledge-base", expected)
    finally:
        client.close()


def alias_target(data_dir: Path) -> str | None:
    client = qdrant_client(data_dir)
    try:
        return {a.alias_name: a.collection_name for a in client.get_aliases().aliases}.get("knowledge-base")
    finally:
        client.close()


def table_rows(value: dg.TableMetadataValue) -> list[dict[str, Any]]:
    """The records of a table metadata value (a preview the UI renders as a table), as dicts."""
    assert isinstance(value, dg.TableMetadataValue), f"expected a table, got {type(value).__name__}"
    return [dict(record.data) for record in value.records]
