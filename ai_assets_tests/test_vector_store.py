"""The vector-store seam: the same behaviour from both implementations, and the embedded store's folder
guarantees (format, corruption, locking, crash-safe alias swaps, migration from local mode)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ai_assets.lib.vector_store import (
    CollectionNotFoundError,
    StoreCorruptError,
    StoreFormatError,
    VectorStore,
)
from ai_assets.lib.vector_store import edge as edge_module
from ai_assets.lib.vector_store.client_store import QdrantClientStore
from ai_assets.lib.vector_store.edge import EdgeStore


def ids(n: int, start: int = 0) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(start, start + n)]


def unit_vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(params=["edge", "qdrant-client"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    if request.param == "edge":
        opened: VectorStore = EdgeStore(tmp_path / "store")
    else:
        from qdrant_client import QdrantClient

        opened = QdrantClientStore(QdrantClient(path=str(tmp_path / "local")), str(tmp_path / "local"), indexes=False)
    with opened:
        yield opened


def test_collections_aliases_and_points_behave_the_same_on_both(store: VectorStore) -> None:
    assert store.collections() == [] and store.alias_target("kb") is None
    store.create_collection("kb-1", 8)
    store.create_collection("kb-2", 8)
    assert store.collections() == ["kb-1", "kb-2"] and store.dimension("kb-1") == 8
    assert store.collection_exists("kb-1") and not store.collection_exists("kb-3")

    vectors = unit_vectors(300)
    point_ids = ids(300)
    payloads = [{"doc_id": f"doc-{i % 30}", "chunk_index": i % 10, "text": f"chunk {i}"} for i in range(300)]
    store.upsert("kb-1", point_ids, vectors, payloads)
    assert store.count("kb-1") == 300

    pages = list(store.scroll("kb-1", ["doc_id"], page_size=64))
    assert len(pages) >= 5 and all(len(page) <= 64 for page in pages)
    scanned = dict(point for page in pages for point in page)
    assert set(scanned) == set(point_ids) and scanned[point_ids[7]] == {"doc_id": "doc-7"}

    found = {p.id: p for p in store.retrieve("kb-1", [point_ids[3], point_ids[4], ids(1, 999)[0]], ["chunk_index"])}
    assert set(found) == {point_ids[3], point_ids[4]} and found[point_ids[3]].payload == {"chunk_index": 3}
    assert np.allclose(found[point_ids[3]].vector, vectors[3], atol=2e-3)  # float16 storage on the embedded store

    hits = store.search("kb-1", vectors[:5], limit=3, fields=["text"])
    assert [h[0].id for h in hits] == point_ids[:5]  # each vector finds itself first
    assert all(h[0].score == pytest.approx(1.0, abs=2e-3) and h[0].score >= h[1].score for h in hits)
    assert hits[2][0].payload == {"text": "chunk 2"}
    firsts = store.search("kb-1", vectors[5:6], limit=50, fields=["chunk_index"], where={"chunk_index": 0})[0]
    assert len(firsts) == 30 and {h.payload["chunk_index"] for h in firsts} == {0}

    store.set_alias("kb", "kb-1")
    assert store.alias_target("kb") == "kb-1" and store.count("kb") == 300 and store.dimension("kb") == 8
    store.set_alias("kb", "kb-2")
    assert store.alias_target("kb") == "kb-2" and store.count("kb") == 0

    store.delete("kb-1", point_ids[:100])
    assert store.count("kb-1") == 200 and not store.retrieve("kb-1", point_ids[:1])
    store.upsert("kb-1", point_ids[100:101], vectors[:1], [{"doc_id": "moved"}])  # an upsert replaces
    assert store.count("kb-1") == 200 and store.retrieve("kb-1", point_ids[100:101], ["doc_id"])[0].payload == {
        "doc_id": "moved"
    }
    store.drop_collection("kb-1")
    assert store.collections() == ["kb-2"]
    with pytest.raises(CollectionNotFoundError, match="'kb-1'"):
        store.count("kb-1")


def test_edge_store_keeps_points_and_aliases_across_reopen(tmp_path: Path) -> None:
    vectors = unit_vectors(50)
    with EdgeStore(tmp_path / "store") as store:
        store.create_collection("kb-a", 8)
        store.upsert("kb-a", ids(50), vectors, [{"doc_id": str(i)} for i in range(50)])
        store.set_alias("kb", "kb-a")
    with EdgeStore(tmp_path / "store") as store:
        assert store.alias_target("kb") == "kb-a" and store.count("kb") == 50
        assert store.search("kb", vectors[10:11], limit=1)[0][0].id == ids(50)[10]
        with pytest.raises(ValueError, match="still the target of an alias"):
            store.drop_collection("kb-a")


def test_hnsw_is_built_past_the_threshold_and_search_stays_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge_module, "HNSW_MIN_POINTS", 500)
    vectors = unit_vectors(3000, dim=32, seed=1)
    with EdgeStore(tmp_path / "store") as store:
        store.create_collection("big", 32)
        for start in range(0, 3000, 500):
            store.upsert("big", ids(500, start), vectors[start : start + 500], [{} for _ in range(500)])
        assert store.optimize("big") is True
        shard = store._shard("big")
        assert shard.info().indexed_vectors_count >= 3000  # the graph covers every point
        hits = store.search("big", vectors[:50], limit=1)
        # Approximate search, but a stored vector is its own nearest neighbour.
        assert sum(h[0].id == i for h, i in zip(hits, ids(50), strict=True)) >= 48


def test_a_store_from_a_newer_version_is_refused_and_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    with EdgeStore(folder) as store:
        store.create_collection("kb-a", 8)
    marker = folder / edge_module.STORE_FILE
    marker.write_text(json.dumps({"format": edge_module.FORMAT + 1, "written_by": "ai_assets 9"}))
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    with pytest.raises(StoreFormatError, match=rf"{folder} \(QDRANT_PATH\) was written by a newer version.*Nothing"):
        EdgeStore(folder)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


def test_a_folder_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(StoreFormatError, match=r"QDRANT_PATH=.*photos is not empty.*cat\.jpg"):
        EdgeStore(tmp_path / "photos")
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"\xff\xd8"


def test_corrupt_files_are_named_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    with EdgeStore(folder) as store:
        store.create_collection("kb-a", 8)
        store.upsert("kb-a", ids(5), unit_vectors(5), [{} for _ in range(5)])
        store.set_alias("kb", "kb-a")
    aliases = folder / edge_module.ALIASES_FILE
    good = aliases.read_text()
    aliases.write_text('{"aliases": {"kb": ')
    with EdgeStore(folder) as store, pytest.raises(StoreCorruptError, match=rf"{aliases} \(aliases\) cannot be read"):
        store.alias_target("kb")
    assert aliases.read_text() == '{"aliases": {"kb": '
    aliases.write_text(good)

    config = folder / "collections" / "kb-a" / "shard" / "edge_config.json"
    config.write_text("not json")
    with EdgeStore(folder) as store, pytest.raises(StoreCorruptError, match=r"Collection kb-a in .*shard could not"):
        store.count("kb")
    assert config.read_text() == "not json"


def test_a_first_open_cut_short_is_not_mistaken_for_a_foreign_folder(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    (folder / ".aliases.json.4242.tmp").write_text('{"alia')  # killed inside the very first write
    with EdgeStore(folder) as store:
        assert store.collections() == [] and store.alias_target("kb") is None
    assert not (folder / ".aliases.json.4242.tmp").exists()


def test_leftovers_of_an_interrupted_create_or_drop_are_cleared(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    with EdgeStore(folder) as store:
        store.create_collection("kb-a", 8)
    (folder / "collections" / ".creating-kb-b-123" / "shard").mkdir(parents=True)
    (folder / "collections" / ".dropping-kb-c-123").mkdir()
    with EdgeStore(folder) as store:
        assert store.collections() == ["kb-a"]
    assert sorted(p.name for p in (folder / "collections").iterdir()) == ["kb-a"]


SWAPPER = """
import sys
from pathlib import Path
from ai_assets.lib.vector_store.edge import EdgeStore
store = EdgeStore(Path(sys.argv[1]))
print("ready", flush=True)
while True:
    store.set_alias("kb", "kb-a")
    store.set_alias("kb", "kb-b")
"""


def test_sigkill_during_alias_swaps_leaves_one_whole_target(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    with EdgeStore(folder) as store:
        store.create_collection("kb-a", 8)
        store.create_collection("kb-b", 8)
    targets = set()
    for delay in (0.05, 0.11, 0.23, 0.37, 0.5):
        proc = subprocess.Popen([sys.executable, "-c", SWAPPER, str(folder)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with EdgeStore(folder, lock_timeout_s=5) as store:
            target = store.alias_target("kb")
            assert target in {"kb-a", "kb-b"}
            targets.add(target)
        # The write the kill interrupted (if any) was never read, and the reopen cleared it.
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_the_sync_stamp_lasts_until_the_next_write(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    stamp = {"index_version": "v1", "points": 10}
    with EdgeStore(folder) as store:
        store.create_collection("kb-1", 8)
        store.set_alias("kb", "kb-1")
        assert store.sync_stamp("kb-1") is None
        store.upsert("kb-1", ids(10), unit_vectors(10), [{}] * 10)
        store.set_sync_stamp("kb", stamp)  # through the alias, as through the name
        assert store.sync_stamp("kb-1") == stamp
    with EdgeStore(folder) as store:
        assert store.sync_stamp("kb") == stamp  # it lasts across opens
        store.upsert("kb", ids(1, start=10), unit_vectors(1), [{}])
        assert store.sync_stamp("kb-1") is None
        store.set_sync_stamp("kb-1", {**stamp, "points": 11})
        store.delete("kb-1", ids(1))
        assert store.sync_stamp("kb-1") is None
        store.set_sync_stamp("kb-1", stamp)
    # A write in a process killed right after it: the stamp was removed, durably, before the write.
    writer = (
        "import sys\nfrom ai_assets.lib.vector_store.edge import EdgeStore\n"
        "store = EdgeStore(sys.argv[1])\nstore.upsert('kb-1', ['00000000-0000-0000-0000-0000000000ff'], "
        "[[1.0] * 8], [{}])\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    assert subprocess.run([sys.executable, "-c", writer, str(folder)]).returncode == -signal.SIGKILL
    with EdgeStore(folder, lock_timeout_s=5) as store:
        assert store.sync_stamp("kb-1") is None and store.count("kb-1") == 11  # the write itself kept
        store.set_sync_stamp("kb-1", stamp)
        (folder / "collections" / "kb-1" / edge_module.STAMP_FILE).write_text('{"index_ver')
        assert store.sync_stamp("kb-1") is None  # torn: no stamp, the caller scans


def test_a_server_store_keeps_no_stamp(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient

    with QdrantClientStore(QdrantClient(path=str(tmp_path / "local")), str(tmp_path), indexes=False) as store:
        store.create_collection("kb-1", 8)
        store.set_sync_stamp("kb-1", {"index_version": "v1", "points": 0})
        assert store.sync_stamp("kb-1") is None


def test_local_mode_store_is_migrated_with_its_vectors(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient, models

    folder = tmp_path / "qdrant"
    vectors = unit_vectors(120)
    client = QdrantClient(path=str(folder))
    client.create_collection("kb-old", vectors_config=models.VectorParams(size=8, distance=models.Distance.COSINE))
    client.upsert(
        "kb-old",
        models.Batch(ids=ids(120), vectors=vectors.tolist(), payloads=[{"doc_id": f"d{i}"} for i in range(120)]),
    )
    client.create_collection("kb-empty", vectors_config=models.VectorParams(size=8, distance=models.Distance.COSINE))
    client.update_collection_aliases(
        change_aliases_operations=[
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name="kb-old", alias_name="kb"))
        ]
    )
    client.close()

    # A first attempt killed half-way left a partial copy and no marker: it is redone from the source.
    (folder / "collections" / "kb-old" / "shard").mkdir(parents=True)
    lines: list[str] = []
    with EdgeStore(folder, log=lines.append) as store:
        assert store.collections() == ["kb-empty", "kb-old"]
        assert store.alias_target("kb") == "kb-old" and store.count("kb") == 120
        stored = {p.id: p for p in store.retrieve("kb", ids(120), ["doc_id"])}
        assert len(stored) == 120 and stored[ids(120)[5]].payload == {"doc_id": "d5"}
        assert np.allclose(stored[ids(120)[5]].vector, vectors[5], atol=2e-3)  # copied (as float16), not re-embedded
    assert any("Migrating the embedded vector store" in line and "nothing is re-embedded" in line for line in lines)
    assert any("Migrated collection kb-old: 120 points" in line for line in lines)
    assert (folder / "local-mode-backup" / "meta.json").exists() and not (folder / "meta.json").exists()
    with EdgeStore(folder) as store:  # a second open does not migrate again
        assert store.count("kb") == 120


def test_the_sync_scan_reads_payloads_only_for_unknown_and_damaged_points(store: VectorStore) -> None:
    from ai_assets.lib.ingestion.vector_index import desired_table, scan_points

    store.create_collection("c", 8)
    pids = ids(4)
    payloads = [
        {"doc_id": "a", "source": "docs", "chunk_hash": "h0"},
        {"doc_id": "a", "source": "docs", "chunk_hash": "h1"},
        {"doc_id": "b", "source": "web", "chunk_hash": "h2"},  # no current chunk: its source decides
        {"doc_id": "a", "source": "docs", "chunk_hash": ""},  # damaged payload: its hash must show it
    ]
    store.upsert("c", pids, unit_vectors(4), payloads)
    desired = desired_table({pids[0]: ("a", "h0"), pids[1]: ("a", "h1"), pids[3]: ("a", "h3")})
    fast = scan_points(store, "c", desired, page_size=2).sort_by("id").to_pylist()
    full = scan_points(store, "c", page_size=3).sort_by("id").to_pylist()
    assert [(r["id"], r["doc_id"], r["chunk_hash"]) for r in fast] == [
        (r["id"], r["doc_id"], r["chunk_hash"]) for r in full
    ]
    # The lookup behind it, restricted to some points or not.
    assert sorted(store.ids_where_not_in("c", "chunk_hash", ["h0", "h1"])) == sorted([pids[2], pids[3]])
    assert store.ids_where_not_in("c", "chunk_hash", ["h0"], among=[pids[0], pids[2]]) == [pids[2]]
    # Read from the store: the point no chunk has, and the damaged one (its hash is no current hash).
    assert [r["source"] for r in fast] == ["", "", "web", "docs"] and [r["source"] for r in full] == [
        "docs",
        "docs",
        "web",
        "docs",
    ]


def test_comparing_ids_page_by_page_finds_missing_and_unknown_points(store: VectorStore) -> None:
    import pyarrow as pa

    from ai_assets.lib.ingestion.vector_index import compare_ids

    store.create_collection("c", 8)
    pids = ids(7)
    payloads = [{"doc_id": f"d{i}", "source": "docs"} for i in range(6)] + [{"doc_id": "gone", "source": "web"}]
    store.upsert("c", pids, unit_vectors(7), payloads)
    chunk_ids = pa.array([*pids[:6], *ids(2, start=100)], pa.string())  # 2 chunks not indexed yet
    for page_size in (2, 3, 100):  # the unknown point alone on a page, sharing one, all in one
        compared = compare_ids(store, "c", chunk_ids, page_size=page_size)
        assert (compared.points, compared.matched, compared.missing) == (7, 6, 2), page_size
        assert [(p.id, p.payload) for p in compared.unknown] == [(pids[6], {"doc_id": "gone", "source": "web"})]
    empty = compare_ids(store, "c", pa.array(pids, pa.string()))
    assert (empty.missing, empty.unknown) == (0, [])


def test_a_server_answers_the_hash_lookup_with_a_filter(tmp_path: Path) -> None:
    """The server path of `ids_where_not_in` (a payload-index filter, restricted by id), run on local
    mode told it has indexes; the tests' usual local-mode store reads the field instead."""
    import warnings

    from qdrant_client import QdrantClient

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # local mode warns that payload indexes have no effect there
        store = QdrantClientStore(QdrantClient(path=str(tmp_path / "local")), str(tmp_path), indexes=True)
        store.create_collection("c", 8)
    with store:
        pids = ids(4)
        store.upsert("c", pids, unit_vectors(4), [{"chunk_hash": h} for h in ("h0", "h1", "h2", "")])
        assert sorted(store.ids_where_not_in("c", "chunk_hash", ["h0", "h1"])) == sorted([pids[2], pids[3]])
        assert store.ids_where_not_in("c", "chunk_hash", ["h0"], among=[pids[0], pids[2]]) == [pids[2]]
