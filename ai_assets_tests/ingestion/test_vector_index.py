"""The sync planner decides what to embed and delete; these cases are worked out by hand."""

import hashlib

from ai_assets.lib.ingestion.vector_index import (
    CHUNK_IDS_VERSION,
    chunk_ids_version,
    collection_fingerprint,
    desired_table,
    index_data_version,
    plan_sync,
    points_table,
)


def plan_of(desired: dict, existing: dict, **kwargs):
    return plan_sync(desired_table(desired), points_table(existing), **kwargs)


def ids(array) -> set[str]:
    return set(array.to_pylist())


def test_first_run_embeds_everything() -> None:
    plan = plan_of({"a1": ("a", "h1"), "a2": ("a", "h2"), "b1": ("b", "h3")}, {})
    assert ids(plan.new_ids) == {"a1", "a2", "b1"}
    assert plan.write_mask.to_pylist() == [True, True, True]
    assert plan.stale_ids.to_pylist() == []
    assert (plan.documents_added, plan.documents_changed, plan.documents_removed) == (2, 0, 0)
    assert ids(plan.final_ids) == {"a1", "a2", "b1"}


def test_noop_touches_nothing() -> None:
    plan = plan_of({"a1": ("a", "h1"), "b1": ("b", "h3")}, {"a1": ("a", "docs", "h1"), "b1": ("b", "docs", "h3")})
    assert len(plan.new_ids) == 0 and len(plan.stale_ids) == 0
    assert plan.unchanged_chunks == 2 and plan.documents_unchanged == 2
    assert plan.reuse == {}


def test_change_and_removal() -> None:
    # a: chunk 2 edited (new id a2x replaces a2); b: removed; c: new; d: unchanged.
    desired = {"a1": ("a", "h1"), "a2x": ("a", "h2x"), "c1": ("c", "h5"), "d1": ("d", "h6")}
    existing = {
        "a1": ("a", "docs", "h1"),
        "a2": ("a", "docs", "h2"),
        "b1": ("b", "docs", "h3"),
        "b2": ("b", "docs", "h4"),
        "d1": ("d", "docs", "h6"),
    }
    plan = plan_of(desired, existing)
    assert ids(plan.new_ids) == {"a2x", "c1"}
    assert plan.write_mask.to_pylist() == [False, True, True, False]  # aligned with the chunk rows
    assert plan.stale_ids.to_pylist() == ["a2", "b1", "b2"]
    assert plan.unchanged_chunks == 2
    counts = (plan.documents_added, plan.documents_changed, plan.documents_removed, plan.documents_unchanged)
    assert counts == (1, 1, 1, 1)
    assert ids(plan.final_ids) == {"a1", "a2x", "c1", "d1"}


def test_document_losing_a_chunk_is_changed() -> None:
    plan = plan_of({"a1": ("a", "h1")}, {"a1": ("a", "docs", "h1"), "a2": ("a", "docs", "h2")})
    assert (plan.documents_changed, plan.documents_unchanged, plan.documents_removed) == (1, 0, 0)
    assert plan.stale_ids.to_pylist() == ["a2"]


def test_unavailable_source_and_unreadable_document_keep_their_points() -> None:
    existing = {
        "a1": ("a", "docs", "h1"),
        "w1": ("https://x/doc", "web", "h7"),  # the web source is down this run
        "e1": ("docs/broken.md", "docs", "h8"),  # this file failed to decode this run
        "g1": ("docs/gone.md", "docs", "h9"),  # this file was deleted
    }
    plan = plan_of({"a1": ("a", "h1")}, existing, unavailable_sources=["web"], unreadable_doc_ids=["docs/broken.md"])
    assert plan.stale_ids.to_pylist() == ["g1"]
    assert plan.preserved == 2
    assert plan.documents_removed == 1
    assert ids(plan.final_ids) == {"a1", "w1", "e1"}


def test_moved_text_reuses_the_indexed_vector() -> None:
    # The paragraph h2 moved from document a to document b: b's new chunk takes a2's vector; c1 is new text.
    desired = {"a1": ("a", "h1"), "b1": ("b", "h2"), "c1": ("c", "h9")}
    plan = plan_of(desired, {"a1": ("a", "docs", "h1"), "a2": ("a", "docs", "h2")})
    assert ids(plan.new_ids) == {"b1", "c1"}
    assert plan.reuse == {"b1": "a2"}


def test_fingerprints_and_versions_are_deterministic() -> None:
    identity = {"model": "m", "dimension": 384, "max_seq_length": 256}
    assert collection_fingerprint(identity, "c1") == collection_fingerprint(dict(identity), "c1")
    assert collection_fingerprint(identity, "c1") != collection_fingerprint(identity, "c2")
    assert collection_fingerprint(identity, "c1") != collection_fingerprint({**identity, "model": "n"}, "c1")
    assert index_data_version(["b", "a"]) == index_data_version(["a", "b"])
    assert index_data_version(["a", "b"]) != index_data_version(["a", "c"])


def test_data_version_is_unchanged_from_earlier_releases() -> None:
    # Earlier releases hashed each sorted id followed by a newline; a different formula would make every
    # existing index look changed to Dagster after an upgrade.
    point_ids = [f"{i:04d}-id" for i in range(70_000, 0, -1)]
    digest = hashlib.sha256()
    for point_id in sorted(point_ids):
        digest.update(point_id.encode())
        digest.update(b"\n")
    assert index_data_version(point_ids) == digest.hexdigest()[:24]


def test_point_with_a_payload_that_disagrees_with_its_id_is_rewritten() -> None:
    plan = plan_of({"a1": ("a", "h1"), "a2": ("a", "h2")}, {"a1": ("a", "docs", "h1"), "a2": ("", "", "")})
    assert ids(plan.new_ids) == {"a2"} and plan.repaired == 1
    assert len(plan.stale_ids) == 0 and ids(plan.final_ids) == {"a1", "a2"}


def test_the_chunk_ids_version_is_read_from_the_table_or_computed_for_an_older_one(tmp_path) -> None:
    import pyarrow as pa

    from ai_assets.lib.tables import TableWriter

    writer = TableWriter(tmp_path / "chunks.parquet", pa.schema([("chunk_id", pa.string())]))
    writer.write_many([{"chunk_id": i} for i in ("b", "a", "c")])
    older = writer.close(attrs={})  # written before the version was recorded
    assert chunk_ids_version(older) == index_data_version(["a", "b", "c"])
    recorded = type(older)(older.path, older.num_rows, {CHUNK_IDS_VERSION: "v-recorded"})
    assert chunk_ids_version(recorded) == "v-recorded"
