"""The sync planner decides what to embed and delete; these cases are worked out by hand."""

from ai_assets.lib.ingestion.vector_index import (
    DesiredChunk,
    IndexedPoint,
    collection_fingerprint,
    index_data_version,
    plan_sync,
)


def point(doc: str, h: str, source: str = "docs") -> IndexedPoint:
    return IndexedPoint(doc_id=doc, source=source, chunk_hash=h)


def test_first_run_embeds_everything() -> None:
    desired = {"a1": DesiredChunk("a", "h1"), "a2": DesiredChunk("a", "h2"), "b1": DesiredChunk("b", "h3")}
    plan = plan_sync(desired, {})
    assert plan.new_ids == {"a1", "a2", "b1"}
    assert plan.stale_ids == []
    assert (plan.documents_added, plan.documents_changed, plan.documents_removed) == (2, 0, 0)
    assert plan.final_ids == {"a1", "a2", "b1"}


def test_noop_touches_nothing() -> None:
    desired = {"a1": DesiredChunk("a", "h1"), "b1": DesiredChunk("b", "h3")}
    existing = {"a1": point("a", "h1"), "b1": point("b", "h3")}
    plan = plan_sync(desired, existing)
    assert plan.new_ids == set() and plan.stale_ids == []
    assert plan.unchanged_chunks == 2 and plan.documents_unchanged == 2


def test_change_and_removal() -> None:
    # a: chunk 2 edited (new id a2x replaces a2); b: removed; c: new; d: unchanged.
    desired = {
        "a1": DesiredChunk("a", "h1"),
        "a2x": DesiredChunk("a", "h2x"),
        "c1": DesiredChunk("c", "h5"),
        "d1": DesiredChunk("d", "h6"),
    }
    existing = {
        "a1": point("a", "h1"),
        "a2": point("a", "h2"),
        "b1": point("b", "h3"),
        "b2": point("b", "h4"),
        "d1": point("d", "h6"),
    }
    plan = plan_sync(desired, existing)
    assert plan.new_ids == {"a2x", "c1"}
    assert plan.stale_ids == ["a2", "b1", "b2"]
    assert plan.unchanged_chunks == 2
    assert (plan.documents_added, plan.documents_changed, plan.documents_removed, plan.documents_unchanged) == (
        1,
        1,
        1,
        1,
    )
    assert plan.final_ids == {"a1", "a2x", "c1", "d1"}


def test_unavailable_source_and_unreadable_document_keep_their_points() -> None:
    desired = {"a1": DesiredChunk("a", "h1")}
    existing = {
        "a1": point("a", "h1"),
        "w1": point("https://x/doc", "h7", source="web"),  # the web source is down this run
        "e1": point("docs/broken.md", "h8"),  # this file failed to decode this run
        "g1": point("docs/gone.md", "h9"),  # this file was deleted
    }
    plan = plan_sync(desired, existing, unavailable_sources=["web"], unreadable_doc_ids=["docs/broken.md"])
    assert plan.stale_ids == ["g1"]
    assert plan.preserved == 2
    assert plan.documents_removed == 1
    assert plan.final_ids == {"a1", "w1", "e1"}


def test_fingerprints_and_versions_are_deterministic() -> None:
    identity = {"model": "m", "dimension": 384, "max_seq_length": 256}
    assert collection_fingerprint(identity, "c1") == collection_fingerprint(dict(identity), "c1")
    assert collection_fingerprint(identity, "c1") != collection_fingerprint(identity, "c2")
    assert collection_fingerprint(identity, "c1") != collection_fingerprint({**identity, "model": "n"}, "c1")
    assert index_data_version(["b", "a"]) == index_data_version(["a", "b"])
    assert index_data_version(["a", "b"]) != index_data_version(["a", "c"])


def test_point_with_a_payload_that_disagrees_with_its_id_is_rewritten() -> None:
    desired = {"a1": DesiredChunk("a", "h1"), "a2": DesiredChunk("a", "h2")}
    existing = {"a1": point("a", "h1"), "a2": IndexedPoint(doc_id="", source="", chunk_hash="")}
    plan = plan_sync(desired, existing)
    assert plan.new_ids == {"a2"} and plan.repaired == 1
    assert plan.stale_ids == [] and plan.final_ids == {"a1", "a2"}
