"""Chunking settings of the deployment: the chunk size and overlap a run uses unless it overrides them."""

from __future__ import annotations

import dagster as dg


class ChunkingResource(dg.ConfigurableResource):
    """Token-aware chunking: `chunk_size` tokens per chunk (CHUNK_SIZE) with `chunk_overlap` tokens
    shared between neighbours (CHUNK_OVERLAP). A run's `ChunkingConfig` may override either."""

    chunk_size: int = 200
    chunk_overlap: int = 32
