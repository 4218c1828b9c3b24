"""A Qdrant server or Qdrant Cloud, through qdrant-client: the store for several processes or hosts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ai_assets.lib.vector_store.base import (
    INDEXED_PAYLOAD_FIELDS,
    CollectionNotFoundError,
    Hit,
    StoredPoint,
    VectorStore,
    Where,
)

if TYPE_CHECKING:
    from qdrant_client import QdrantClient


class QdrantClientStore(VectorStore):
    """Every operation is one qdrant-client call; writes wait for the server's acknowledgement."""

    kind = "server"

    def __init__(self, client: QdrantClient, location: str, indexes: bool = True):
        self.client = client
        self.location = location
        # qdrant-client's local mode (used where no server can run, e.g. in tests) has no payload indexes.
        self._indexes = indexes

    def _resolve(self, name: str) -> str:
        target = self.alias_target(name) or name
        if not self.client.collection_exists(target):
            raise CollectionNotFoundError(f"no collection or alias {name!r} in Qdrant at {self.location}")
        return target

    def collections(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections)

    def collection_exists(self, name: str) -> bool:
        return self.client.collection_exists(name)

    def create_collection(self, name: str, dimension: int) -> None:
        from qdrant_client import models

        self.client.create_collection(
            name, vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE)
        )
        if self._indexes:
            for field in INDEXED_PAYLOAD_FIELDS:
                self.client.create_payload_index(name, field, models.PayloadSchemaType.KEYWORD)

    def dimension(self, name: str) -> int:
        return int(self.client.get_collection(self._resolve(name)).config.params.vectors.size)  # type: ignore[union-attr]

    def drop_collection(self, name: str) -> None:
        self.client.delete_collection(name)

    def alias_target(self, alias: str) -> str | None:
        for found in self.client.get_aliases().aliases:
            if found.alias_name == alias:
                return found.collection_name
        return None

    def set_alias(self, alias: str, collection: str) -> None:
        from qdrant_client import models

        previous = self.alias_target(alias)
        if previous == collection:
            return
        operations: list = []
        if previous is not None:
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        operations.append(
            models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection, alias_name=alias))
        )
        # One request: the server applies the delete and the create together.
        self.client.update_collection_aliases(change_aliases_operations=operations)

    def upsert(self, collection, ids, vectors, payloads) -> None:
        from qdrant_client import models

        rows = vectors.tolist() if hasattr(vectors, "tolist") else [list(v) for v in vectors]
        self.client.upsert(
            collection, points=models.Batch(ids=list(ids), vectors=rows, payloads=list(payloads)), wait=True
        )

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        from qdrant_client import models

        self.client.delete(collection, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def count(self, name: str) -> int:
        return int(self.client.count(self._resolve(name), exact=True).count)

    def _pages(self, name: str, page_size: int, with_payload: Any, condition: Any = None) -> Iterator[list[Any]]:
        """The collection's points a page at a time, without vectors."""
        target, offset = self._resolve(name), None
        while True:
            points, offset = self.client.scroll(
                target,
                scroll_filter=condition,
                limit=page_size,
                offset=offset,
                with_payload=with_payload,
                with_vectors=False,
            )
            yield points
            if offset is None:
                return

    def scroll(
        self, name: str, fields: Sequence[str], page_size: int = 4096
    ) -> Iterator[list[tuple[str, dict[str, Any]]]]:
        for points in self._pages(name, page_size, list(fields) or False):
            yield [(str(p.id), p.payload or {}) for p in points]

    def ids_where_not_in(
        self,
        name: str,
        field: str,
        values: Sequence[str],
        among: Sequence[str] | None = None,
        page_size: int = 32_768,
    ) -> list[str]:
        from qdrant_client import models

        if not self._indexes:
            # No payload index to answer it (local mode, which would test every point against the whole
            # value list, minutes at 30,000 points): the field is read and compared here.
            excluded, allowed = set(values), set(among) if among is not None else None
            return [
                pid
                for pid, payload in self.iter_points(name, [field], page_size)
                if (allowed is None or pid in allowed) and payload.get(field) not in excluded
            ]
        condition = models.Filter(
            must=[models.HasIdCondition(has_id=list(among))] if among is not None else None,
            must_not=[models.FieldCondition(key=field, match=models.MatchAny(any=list(values)))],
        )
        return [str(p.id) for points in self._pages(name, page_size, False, condition) for p in points]

    def retrieve(self, name, ids, fields=(), with_vectors=True) -> list[StoredPoint]:
        if not ids:
            return []
        points = self.client.retrieve(
            self._resolve(name),
            ids=list(ids),
            with_payload=list(fields) if fields else False,
            with_vectors=with_vectors,
        )
        return [
            StoredPoint(str(p.id), list(p.vector) if with_vectors and p.vector is not None else None, p.payload or {})  # type: ignore[arg-type]
            for p in points
        ]

    def search(self, name, vectors, limit, fields=(), where: Where | None = None) -> list[list[Hit]]:
        from qdrant_client import models

        rows = vectors.tolist() if hasattr(vectors, "tolist") else [list(v) for v in vectors]
        if not rows:
            return []
        condition = (
            models.Filter(
                must=[models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in where.items()]
            )
            if where
            else None
        )
        requests = [
            models.QueryRequest(
                query=row, limit=limit, with_payload=list(fields) if fields else False, filter=condition
            )
            for row in rows
        ]
        answers = self.client.query_batch_points(self._resolve(name), requests=requests)
        return [[Hit(str(p.id), float(p.score), p.payload or {}) for p in answer.points] for answer in answers]

    def close(self) -> None:
        self.client.close()
