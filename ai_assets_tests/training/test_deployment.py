"""Training rows mined from a real index, a new model's collection built and checked, and the alias
switched while searches run."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ai_assets.defs.ingestion.assets import CHUNK_SCHEMA
from ai_assets.lib.tables import TableWriter
from ai_assets.lib.training.dataset import TrainingQuery, build_examples
from ai_assets.lib.training.deployment import build_collection, superseded_collections, verify_collection
from ai_assets.lib.training.gate import Gate, gate_failures
from ai_assets.lib.vector_store.edge import EdgeStore

DIM = 8


def unit(values: list[float]) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def axis_model(stride: int):
    """A deterministic 'model': text "topic N ..." points along axis N * stride (mod 64); two strides are
    two different models of the same texts."""

    def encode(texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            vector = np.full(64, 0.01, dtype=np.float32)
            vector[(int(text.split()[1]) * stride) % 64] += 1.0
            rows.append(vector / np.linalg.norm(vector))
        return np.stack(rows)

    return encode


def chunk_table(tmp_path: Path, texts: dict[str, str]) -> object:
    writer = TableWriter(tmp_path / "chunks.parquet", CHUNK_SCHEMA)
    for i, (doc, text) in enumerate(sorted(texts.items())):
        writer.write(
            {
                "chunk_id": f"00000000-0000-0000-0000-{i:012d}",
                "doc_id": doc,
                "source": "s",
                "uri": doc,
                "title": doc,
                "chunk_index": 0,
                "chunk_hash": f"h{i}",
                "doc_hash": f"d{i}",
                "token_count": len(text.split()),
                "text": text,
            }
        )
    table = writer.close(attrs={"chunking_fingerprint": "c"})
    return table


def test_rows_take_the_closest_chunk_of_a_relevant_document_and_a_safe_negative(tmp_path: Path) -> None:
    with EdgeStore(tmp_path / "store", lock_timeout_s=5) as store:
        store.create_collection("kb", DIM)
        # doc a: two chunks, one on the query's axis; docs b..f: distractors at falling similarity.
        points = {
            "a-0": ("a", [1, 0.2, 0, 0, 0, 0, 0, 0]),
            "a-1": ("a", [0, 1, 0, 0, 0, 0, 0, 0]),
            **{f"{d}-0": (d, [1, 0, 0, 0, 0, 0, 0, 0.3 + 0.3 * i]) for i, d in enumerate("bcdef")},
        }
        ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(len(points))]
        store.upsert(
            "kb",
            ids,
            np.stack([unit(v) for _, v in points.values()]),
            [{"doc_id": doc, "text": name, "chunk_hash": name} for name, (doc, _) in points.items()],
        )
        queries = [
            TrainingQuery("q1", "query one", {"a": 1.0}),
            TrainingQuery("q2", "query two", {"missing": 1.0}),
            TrainingQuery("q3", "query three", {"a": 1.0}, synthetic=True, positive_text="the passage itself"),
        ]
        vector = unit([1, 0.1, 0, 0, 0, 0, 0, 0])
        rows, stats = build_examples(queries, [vector] * 3, store, "kb", negatives=1, skip_top=1)
    assert stats.positives_not_indexed == 1 and stats.pairs == 2 and stats.dropped_without_negative == 0
    first, synthetic = rows
    assert first["positive"] == "a-0"  # the relevant document's chunk closest to the query
    # Never a chunk of the relevant document; the closest other result (rank 1) is skipped.
    assert first["negative_1"] not in {"a-0", "a-1", "b-0"}
    assert synthetic["positive"] == "the passage itself" and synthetic["query_id"] == "q3"


def test_a_new_collection_is_built_checked_and_swapped_while_searches_run(tmp_path: Path) -> None:
    texts = {f"doc{i:02d}": f"topic {i} of the corpus" for i in range(40)}
    chunks = chunk_table(tmp_path, texts)
    old_model, new_model = axis_model(1), axis_model(3)
    with EdgeStore(tmp_path / "store", lock_timeout_s=5) as store:
        old = build_collection(store, "kb-old", 64, chunks, old_model, print)
        store.set_alias("kb", "kb-old")
        assert old.created and old.points == 40 and old.embedded == 40
        assert verify_collection(store, "kb-old", 64, chunks, old_model) == []
        # The old collection searched with the new model: its chunks no longer find themselves.
        assert any("not itself" in p for p in verify_collection(store, "kb-old", 64, chunks, new_model))

        errors: list[BaseException] = []
        answered = []
        stop = threading.Event()

        def search_forever() -> None:
            while not stop.is_set():
                try:
                    hits = store.search("kb", old_model(["topic 3"]), 3)[0]
                    answered.append(len(hits))
                except BaseException as err:  # noqa: BLE001 - every failure counts
                    errors.append(err)

        searcher = threading.Thread(target=search_forever)
        searcher.start()
        try:
            new = build_collection(store, "kb-new", 64, chunks, new_model, print)
            assert verify_collection(store, "kb-new", 64, chunks, new_model) == []
            store.set_alias("kb", "kb-new")
            again = build_collection(store, "kb-new", 64, chunks, new_model, print)
        finally:
            stop.set()
            searcher.join()
        assert new.created and new.points == 40 and again.embedded == 0 and not again.created
        assert not errors and len(answered) > 0 and all(n == 3 for n in answered)
        assert store.alias_target("kb") == "kb-new"

        # A stale point and a missing one are both named; the alias would not move.
        store.delete("kb-new", ["00000000-0000-0000-0000-000000000001"])
        store.upsert("kb-new", ["11111111-0000-0000-0000-000000000000"], new_model(["topic 50"]), [{"doc_id": "z"}])
        problems = verify_collection(store, "kb-new", 64, chunks, new_model)
        assert any("1 current chunks have no point" in p for p in problems)
        assert any("1 points of kb-new are no current chunk" in p for p in problems)
    assert superseded_collections(["kb-a", "kb-b", "kb-c", "other-x"], "kb", ["kb-b", None]) == ["kb-a", "kb-c"]


def test_the_gate_needs_accuracy_and_a_margin_over_the_deployed_model() -> None:
    gate = Gate(min_accuracy=0.85, accuracy_k=10, min_improvement=0.005)
    deployed = {"ndcg_at_10": 0.60, "hit_rate_at_10": 0.9}
    assert gate_failures({"ndcg_at_10": 0.62, "hit_rate_at_10": 0.9}, deployed, gate) == []
    low = gate_failures({"ndcg_at_10": 0.62, "hit_rate_at_10": 0.8}, deployed, gate)
    assert len(low) == 1 and "accuracy@10 0.8000 is below TRAINING_MIN_ACCURACY 0.85" in low[0]
    same = gate_failures({"ndcg_at_10": 0.603, "hit_rate_at_10": 0.9}, deployed, gate)
    assert len(same) == 1 and "+0.0030" in same[0] and "TRAINING_MIN_IMPROVEMENT" in same[0]
