"""Qdrant: embedded on disk by default, a Qdrant server when `QDRANT_URL` is set."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
from pydantic import PrivateAttr

from ai_assets.lib import settings
from ai_assets.resources.data_folder import DataFolderResource

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

# Payload fields that ingestion filters and deletes by; indexed on a server (local mode has no indexes).
INDEXED_PAYLOAD_FIELDS = ("doc_id", "source", "chunk_hash")


class QdrantServerError(ConnectionError):
    """The Qdrant server at `QDRANT_URL` could not be reached or refused the client."""


def display_url(url: str) -> str:
    """`url` without any `user:password@` part, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def unreachable_message(url: str, reason: BaseException, embedded_path: Path) -> str:
    """Why the server at `url` could not be reached, which setting holds it, and what to do."""
    return (
        f"Could not connect to the Qdrant server at {display_url(url)} (QDRANT_URL): "
        f"{type(reason).__name__}: {reason}. Start the server or make it reachable from this machine, "
        "or correct QDRANT_URL (e.g. http://qdrant:6333); unset QDRANT_URL to use the embedded Qdrant "
        f"in {embedded_path} instead."
    )


def refused_message(url: str, status: int | None, reason_phrase: str) -> str:
    """What a non-success answer to the first request means for the configuration."""
    answer = f"{status} {reason_phrase}".strip()
    if status in (401, 403):
        advice = "set QDRANT_API_KEY to the server's API key (or correct it)"
    else:
        advice = "check that QDRANT_URL is the server's root URL (e.g. http://qdrant:6333), not a path"
    return f"The Qdrant server at {display_url(url)} (QDRANT_URL) answered {answer}: {advice}."


class QdrantResource(dg.ConfigurableResource):
    """The vector store. Collections are versioned; readers go through `alias`.

    Local mode keeps the whole collection in this process and takes an exclusive lock on its folder, so
    a second process (another step, another run) waits here for up to `lock_timeout_s` instead of
    failing at once; the `qdrant` concurrency pool keeps such waits rare.

    `url` (QDRANT_URL), `api_key` (QDRANT_API_KEY) and `path` (QDRANT_PATH) empty mean unset: the
    embedded Qdrant in `qdrant` inside the data folder.
    """

    data_folder: DataFolderResource
    url: str | None = None
    api_key: str | None = None
    path: str | None = None
    alias: str = "knowledge-base"
    timeout_s: int = 60
    lock_timeout_s: float = 900.0

    _client: QdrantClient | None = PrivateAttr(default=None)

    @property
    def is_local(self) -> bool:
        return not self.url

    @property
    def location(self) -> str:
        return self.url if self.url else str(self.local_path)

    @property
    def local_path(self) -> Path:
        if not self.path:
            return self.data_folder.qdrant_dir
        return Path(settings.parse("QDRANT_PATH", self.path, field="QdrantResource.path")).expanduser().resolve()

    def get_client(self, log: dg.DagsterLogManager | None = None) -> QdrantClient:
        """The client, opened on first use so steps that never touch Qdrant never take the lock."""
        if self._client is None:
            self._client = self._open(log)
        return self._client

    def _open(self, log: dg.DagsterLogManager | None) -> QdrantClient:
        from qdrant_client import QdrantClient

        if not self.is_local:
            return self._open_server(log)
        path = self.local_path
        path.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_s
        delay, warned = 0.5, False
        while True:
            try:
                return QdrantClient(path=str(path))
            except RuntimeError as err:
                if "already accessed" not in str(err):
                    raise
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"Qdrant folder {path} stayed locked by another process for "
                        f"{self.lock_timeout_s:.0f} s (QDRANT_PATH). Embedded Qdrant serves one "
                        "process at a time: wait for the other run, or set QDRANT_URL to a server."
                    ) from err
                if log and not warned:
                    log.info(f"Waiting for the Qdrant folder lock on {path} (held by another process)")
                    warned = True
                time.sleep(delay)
                delay = min(delay * 1.5, 5.0)

    def _open_server(self, log: dg.DagsterLogManager | None) -> QdrantClient:
        """A client on a server that has answered one request, so that a wrong URL or key fails here,
        named, instead of as a bare `Connection refused` deep inside the first real operation."""
        import importlib.metadata

        from qdrant_client import QdrantClient
        from qdrant_client.common.version_check import is_compatible
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        assert self.url
        # The client's own version check runs in a thread and only warns "Failed to obtain server
        # version" when the server is down; it is done below, after the server has answered.
        client = QdrantClient(
            url=self.url, api_key=self.api_key or None, timeout=self.timeout_s, check_compatibility=False
        )
        try:
            client.get_collections()
            server_version = client.info().version
        except ResponseHandlingException as err:
            client.close()
            raise QdrantServerError(unreachable_message(self.url, err.source, self.local_path)) from err
        except UnexpectedResponse as err:
            client.close()
            raise QdrantServerError(refused_message(self.url, err.status_code, err.reason_phrase)) from err
        client_version = importlib.metadata.version("qdrant-client")
        if log and not is_compatible(client_version, server_version):
            log.warning(
                f"Qdrant server {server_version} at {display_url(self.url)} may not work with "
                f"qdrant-client {client_version}: their major versions should match and their minor "
                "versions differ by at most 1"
            )
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        # Releases the local folder lock as soon as the step ends, not when the process exits.
        self.close()

    # --- collections and aliases -------------------------------------------------------------

    def alias_target(self) -> str | None:
        """The collection the alias points at, or None before the first build."""
        for alias in self.get_client().get_aliases().aliases:
            if alias.alias_name == self.alias:
                return alias.collection_name
        return None

    def ensure_collection(self, name: str, dimension: int) -> bool:
        """Create the collection (cosine, `dimension`) unless it exists; True when created."""
        from qdrant_client import models

        client = self.get_client()
        if client.collection_exists(name):
            size = client.get_collection(name).config.params.vectors.size  # type: ignore[union-attr]
            if size != dimension:
                raise ValueError(f"Qdrant collection {name} holds {size}-d vectors, the model makes {dimension}-d")
            return False
        client.create_collection(
            name,
            vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE),
        )
        if not self.is_local:
            for field in INDEXED_PAYLOAD_FIELDS:
                client.create_payload_index(name, field, models.PayloadSchemaType.KEYWORD)
        return True

    def point_alias_at(self, collection: str) -> str | None:
        """Swap the alias to `collection` in one atomic operation; returns the previous target."""
        from qdrant_client import models

        previous = self.alias_target()
        if previous == collection:
            return previous
        operations: list = []
        if previous is not None:
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.alias)))
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=collection, alias_name=self.alias)
            )
        )
        self.get_client().update_collection_aliases(change_aliases_operations=operations)
        return previous
