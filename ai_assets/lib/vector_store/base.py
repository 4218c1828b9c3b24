"""What the pipelines need from a vector store, independent of where it runs.

Two implementations: `EdgeStore` (Qdrant's engine embedded in this process, the default) and
`QdrantClientStore` (a Qdrant server or Qdrant Cloud through qdrant-client). Ingestion, evaluation and
deployment speak only this interface, so the sync semantics and their tests are the same on both.

Names given to read operations may be a collection or an alias; point ids are UUID strings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# Payload fields that ingestion filters and deletes by: indexed wherever the store supports it.
INDEXED_PAYLOAD_FIELDS = ("doc_id", "source", "chunk_hash")

# Equality conditions on payload fields, all of which must hold (e.g. {"chunk_index": 0}).
Where = Mapping[str, str | int]


class VectorStoreError(RuntimeError):
    """A vector store that cannot be used as configured; the message names the folder or URL and what to do."""


class StoreLockedError(VectorStoreError):
    """The embedded store's folder is held by another process."""


class StoreFormatError(VectorStoreError):
    """The folder was written by a newer version, or is not a vector store at all."""


class StoreCorruptError(VectorStoreError):
    """A file of the store cannot be read."""


class CollectionNotFoundError(VectorStoreError, KeyError):
    """No collection or alias of that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredPoint:
    id: str
    vector: list[float] | None
    payload: dict[str, Any]


class VectorStore(ABC):
    """A set of collections of (id, vector, payload) points with cosine search, and aliases over them."""

    kind: str  # "embedded" or "server": for metadata and messages
    location: str  # folder or URL (without credentials)

    # --- collections and aliases -----------------------------------------------------------------

    @abstractmethod
    def collections(self) -> list[str]:
        """Names of every collection, sorted."""

    @abstractmethod
    def collection_exists(self, name: str) -> bool: ...

    @abstractmethod
    def create_collection(self, name: str, dimension: int) -> None:
        """A new, empty cosine collection of `dimension`-d vectors with the payload indexes."""

    @abstractmethod
    def dimension(self, name: str) -> int:
        """Vector size of a collection (or of the one an alias points at)."""

    @abstractmethod
    def drop_collection(self, name: str) -> None: ...

    @abstractmethod
    def alias_target(self, alias: str) -> str | None:
        """The collection `alias` points at, or None."""

    @abstractmethod
    def set_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at `collection` in one atomic step: readers see the old or the new, never neither."""

    # --- points ------------------------------------------------------------------------------------

    @abstractmethod
    def upsert(
        self,
        collection: str,
        ids: Sequence[str],
        vectors: np.ndarray | Sequence[Sequence[float]],
        payloads: Sequence[dict],
    ) -> None:
        """Write points; acknowledged points survive a crash of this process."""

    @abstractmethod
    def delete(self, collection: str, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def count(self, name: str) -> int: ...

    @abstractmethod
    def scroll(
        self, name: str, fields: Sequence[str], page_size: int = 4096
    ) -> Iterator[list[tuple[str, dict[str, Any]]]]:
        """Every point as (id, the payload's `fields`), a page at a time, without vectors."""

    @abstractmethod
    def ids_where_not_in(
        self,
        name: str,
        field: str,
        values: Sequence[str],
        among: Sequence[str] | None = None,
        page_size: int = 32_768,
    ) -> list[str]:
        """Ids of points (of `among` only, when given) whose payload `field` is none of `values` (or
        missing), found through the payload index without reading payloads."""

    @abstractmethod
    def retrieve(
        self, name: str, ids: Sequence[str], fields: Sequence[str] = (), with_vectors: bool = True
    ) -> list[StoredPoint]:
        """The points of `ids` that exist, in no particular order."""

    @abstractmethod
    def search(
        self,
        name: str,
        vectors: np.ndarray | Sequence[Sequence[float]],
        limit: int,
        fields: Sequence[str] = (),
        where: Where | None = None,
    ) -> list[list[Hit]]:
        """For each query vector, the `limit` nearest points (cosine), best first."""

    def optimize(self, collection: str) -> bool:
        """Bring the collection's indexes up to date after a batch of writes; True when work was done."""
        return False

    # --- the sync stamp --------------------------------------------------------------------------------

    def sync_stamp(self, collection: str) -> dict[str, Any] | None:
        """What `set_sync_stamp` last recorded for `collection`, provided no point has been written or
        deleted through this store since; else None. A store that other writers may share (a server)
        keeps no stamp: its collections are always scanned."""
        return None

    def set_sync_stamp(self, collection: str, stamp: dict[str, Any]) -> None:
        """Record small JSON facts about the collection as it is now; the next write through the store
        forgets them first."""
        return None  # this store keeps no stamp (see `sync_stamp`)

    @abstractmethod
    def close(self) -> None:
        """Release files, locks and connections."""

    # --- helpers shared by both implementations ----------------------------------------------------

    def iter_points(
        self, name: str, fields: Sequence[str], page_size: int = 4096
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        for page in self.scroll(name, fields, page_size):
            yield from page

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
