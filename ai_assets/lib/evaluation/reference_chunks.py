"""Reference contexts in the index's own units.

Golden sets quote a sentence or two; the retriever returns whole chunks. ragas' non-LLM context
precision and recall compare the two by string similarity (a 0.5 threshold), so a quoted sentence never
"matches" the chunk that contains it and both metrics read near 0 whatever the retrieval. Replacing each
reference passage with the indexed chunk that contains it makes them compare like with like.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SPACE = re.compile(r"\s+")


def _squash(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def align_reference_contexts(references: Iterable[str], chunk_texts: Iterable[str]) -> dict[str, str]:
    """Map each reference passage to the first chunk text containing it (whitespace-insensitive).

    Passages found in no single chunk (e.g. spanning a chunk boundary) are left out: callers keep the
    passage as written for those.
    """
    wanted = {ref: _squash(ref) for ref in references if ref.strip()}
    aligned: dict[str, str] = {}
    for text in chunk_texts:
        if len(aligned) == len(wanted):
            break
        squashed = _squash(text)
        for ref, needle in wanted.items():
            if ref not in aligned and needle in squashed:
                aligned[ref] = text
    return aligned
