"""The vector-store seam: one interface, an embedded Qdrant Edge store and a Qdrant server store."""

from ai_assets.lib.vector_store.base import (
    INDEXED_PAYLOAD_FIELDS,
    CollectionNotFoundError,
    Hit,
    StoreCorruptError,
    StoredPoint,
    StoreFormatError,
    StoreLockedError,
    VectorStore,
    VectorStoreError,
)

__all__ = [
    "INDEXED_PAYLOAD_FIELDS",
    "CollectionNotFoundError",
    "Hit",
    "StoreCorruptError",
    "StoreFormatError",
    "StoreLockedError",
    "StoredPoint",
    "VectorStore",
    "VectorStoreError",
]
