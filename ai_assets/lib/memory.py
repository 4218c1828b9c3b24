"""Returning memory a finished piece of work freed to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util


def return_freed_memory() -> None:
    """Hand back what the C heap and Arrow's allocator keep cached after large work is freed.

    Both keep freed pages for reuse: glibc ~230 MB after closing a 278,000-point Qdrant Edge shard,
    Arrow's mimalloc ~150 MB after a pass over a chunk table. In a process that runs many steps one
    after another (the ingestion job runs in one process) each step would otherwise start on top of
    what the earlier ones cached. Cheap (milliseconds): call it between large pieces of work."""
    import pyarrow as pa

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
    pa.default_memory_pool().release_unused()
