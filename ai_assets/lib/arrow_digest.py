"""Hashing string columns without a Python object per value."""

from __future__ import annotations

from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc


class Digest(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


def update_with_lines(digest: Digest, values: pa.Array | pa.ChunkedArray, block: int = 65_536) -> None:
    """Feed `digest` the bytes of `"".join(f"{v}\\n" for v in values)`, exactly, from Arrow buffers.

    Each block of values gets a newline appended by Arrow, and the resulting array's data buffer (a
    fresh array, so its offsets start at zero) is the block's lines back to back. Nulls are refused:
    they have no text to hash."""
    if values.null_count:
        raise ValueError("update_with_lines: the column has nulls")
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    kind = pa.large_string() if pa.types.is_large_string(values.type) else pa.string()
    empty, newline = pa.scalar("", kind), pa.scalar("\n", kind)
    for chunk in chunks:
        for start in range(0, len(chunk), block):
            lines = pc.binary_join_element_wise(chunk.slice(start, block), empty, newline)
            offsets = lines.buffers()[1]
            width = 8 if pa.types.is_large_string(lines.type) else 4
            first, last = (
                int.from_bytes(offsets[width * i : width * (i + 1)], "little", signed=True)
                for i in (lines.offset, lines.offset + len(lines))
            )
            data = lines.buffers()[2]
            if data is not None and last > first:
                digest.update(memoryview(data)[first:last])
