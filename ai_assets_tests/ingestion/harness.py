"""Runs the real ingestion job against a chosen corpus and inspects the real vector store.

`STORE_KIND` picks the store implementation the job runs on: "edge" (the embedded default) or
"qdrant-client" (the server implementation, `QdrantClientStore`, over qdrant-client's in-process local
mode, since no Qdrant server can run here). The `store_kind` fixture runs a test on both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from ai_assets.defs.ingestion import checks
from ai_assets.defs.ingestion.automation import rag_ingestion
from ai_assets.lib.ingestion.audit import IndexAudit, audit_collection, expected_chunk_ids
from ai_assets.lib.ingestion.chunking import ChunkingSettings
from ai_assets.lib.ingestion.sources import parse_source_specs
from ai_assets.lib.vector_store import VectorStore
from ai_assets.resources.data_folder import DataFolderResource
from ai_assets.resources.embeddings import EmbeddingModelResource
from ai_assets.resources.qdrant import QdrantResource
from ai_assets.resources.sources import DocumentSourcesResource
from ai_assets_tests.domains import domain_defs
from ai_assets_tests.resources import QdrantClientStoreResource, qdrant_on_data_folder, settings_resources

# The ingestion domain as the code location autoloads it, without its resources.
ingestion_defs = domain_defs("ingestion")

STORE_KINDS = ("edge", "qdrant-client")
STORE_KIND = "edge"


def qdrant_resource(**fields: Any) -> dg.ConfigurableResource:
    if STORE_KIND == "qdrant-client":
        return QdrantClientStoreResource(data_folder=settings_resources()["data_folder"], **fields)
    return qdrant_on_data_folder(**fields)


index_checks_only = dg.define_asset_job("index_checks_only", selection=dg.AssetSelection.checks(checks.index_checks))


def definitions(sources: str, embedding_model: EmbeddingModelResource, **source_kw: Any) -> dg.Definitions:
    return dg.Definitions(
        assets=ingestion_defs.assets,
        asset_checks=ingestion_defs.asset_checks,
        jobs=[rag_ingestion, index_checks_only],
        resources={
            **settings_resources(),
            "qdrant": qdrant_resource(lock_timeout_s=30),
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


def open_store(data_dir: Path) -> VectorStore:
    """The store the job wrote, opened the way the job opens it (close it before the next run)."""
    kind = QdrantClientStoreResource if STORE_KIND == "qdrant-client" else QdrantResource
    return kind(data_folder=DataFolderResource(path=str(data_dir)), lock_timeout_s=30).get_store()


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
    with open_store(data_dir) as store:
        return audit_collection(store, "knowledge-base", expected)


def alias_target(data_dir: Path) -> str | None:
    with open_store(data_dir) as store:
        return store.alias_target("knowledge-base")


def table_rows(value: dg.TableMetadataValue) -> list[dict[str, Any]]:
    """The records of a table metadata value (a preview the UI renders as a table), as dicts."""
    assert isinstance(value, dg.TableMetadataValue), f"expected a table, got {type(value).__name__}"
    return [dict(record.data) for record in value.records]
