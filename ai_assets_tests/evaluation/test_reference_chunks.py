"""Reference passages are matched to the chunks that contain them."""

from ai_assets.lib.evaluation.reference_chunks import align_reference_contexts


def test_passages_map_to_the_chunk_that_contains_them() -> None:
    chunks = [
        "# HNSW\n\nThe graph has m = 16 links per node.\nef_construct defaults to 100.",
        "Recall rises with ef.  Latency rises too.",
    ]
    aligned = align_reference_contexts(
        ["ef_construct defaults to 100.", "Recall rises with ef. Latency rises too.", "Not in the index.", "  "],
        chunks,
    )
    assert aligned == {
        "ef_construct defaults to 100.": chunks[0],
        "Recall rises with ef. Latency rises too.": chunks[1],  # whitespace differences do not matter
    }


def test_first_containing_chunk_wins_and_nothing_is_invented() -> None:
    assert align_reference_contexts(["a b"], ["x a b", "a b y"]) == {"a b": "x a b"}
    assert align_reference_contexts(["a b"], []) == {}
