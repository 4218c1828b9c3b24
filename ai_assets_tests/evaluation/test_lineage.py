"""Every read of another asset's data is an edge of the asset graph the code location serves."""

from __future__ import annotations

import dagster as dg

from ai_assets.definitions import defs


def test_evaluation_reads_the_chunks_through_declared_inputs() -> None:
    graph = defs.resolve_asset_graph()
    chunks = dg.AssetKey("document_chunks")
    for name in ("rag_eval_set", "rag_quality_metrics"):
        assert chunks in graph.get(dg.AssetKey(name)).parent_keys, name
        # A data input (the table's handle, loaded by the tables IO manager), not an ordering-only dep.
        assets_def = defs.resolve_assets_def(name)
        assert assets_def.keys_by_input_name["document_chunks"] == chunks, name
        assert not assets_def.op.ins["document_chunks"].dagster_type.is_nothing, name
    # The index is read from Qdrant, not from a table: an ordering dependency, still an edge.
    assert dg.AssetKey("document_embeddings") in graph.get(dg.AssetKey("rag_quality_metrics")).parent_keys
    assert dg.AssetKey("rag_quality_metrics") in graph.get(chunks).child_keys
