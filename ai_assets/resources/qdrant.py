"""The vector store: Qdrant Edge embedded on disk by default, a Qdrant server when `QDRANT_URL` is set."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
from pydantic import PrivateAttr

from ai_assets.lib import settings
from ai_assets.resources.data_folder import DataFolderResource

if TYPE_CHECKING:
    from ai_assets.lib.vector_store import VectorStore


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

    With `url` (QDRANT_URL) empty it is Qdrant Edge, Qdrant's engine embedded in this process, in
    `path` (QDRANT_PATH; empty means `qdrant` inside the data folder). The folder serves one process
    at a time, so a second process (another step, another run) waits here for up to `lock_timeout_s`
    instead of failing at once; the `qdrant` concurrency pool keeps such waits rare. A folder written
    by qdrant-client's local mode (earlier versions) is migrated on first open, vectors included.

    With `url` set it is that Qdrant server or cluster (`api_key`: QDRANT_API_KEY), for several
    processes and hosts at once.
    """

    data_folder: DataFolderResource
    url: str | None = None
    api_key: str | None = None
    path: str | None = None
    alias: str = "knowledge-base"
    timeout_s: int = 60
    lock_timeout_s: float = 900.0

    _store: VectorStore | None = PrivateAttr(default=None)

    @property
    def is_local(self) -> bool:
        return not self.url

    @property
    def location(self) -> str:
        return display_url(self.url) if self.url else str(self.local_path)

    @property
    def local_path(self) -> Path:
        if not self.path:
            return self.data_folder.qdrant_dir
        return Path(settings.parse("QDRANT_PATH", self.path, field="QdrantResource.path")).expanduser().resolve()

    def get_store(self, log: dg.DagsterLogManager | None = None) -> VectorStore:
        """The store, opened on first use so steps that never touch it never take the folder lock."""
        if self._store is None:
            self._store = self._open(log)
        return self._store

    def _open(self, log: dg.DagsterLogManager | None) -> VectorStore:
        if not self.is_local:
            return self._open_server(log)
        from ai_assets.lib.vector_store.edge import EdgeStore

        return EdgeStore(self.local_path, lock_timeout_s=self.lock_timeout_s, log=log.info if log else None)

    def _open_server(self, log: dg.DagsterLogManager | None) -> VectorStore:
        """A store on a server that has answered one request, so that a wrong URL or key fails here,
        named, instead of as a bare `Connection refused` deep inside the first real operation."""
        import importlib.metadata

        from qdrant_client import QdrantClient
        from qdrant_client.common.version_check import is_compatible
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        from ai_assets.lib.vector_store.client_store import QdrantClientStore

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
        return QdrantClientStore(client, display_url(self.url))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        # Releases the folder lock when the resource is torn down (after the step, or after the run
        # when a run's steps share one process), not when the process exits.
        self.close()

    # --- the alias ---------------------------------------------------------------------------------

    def alias_target(self) -> str | None:
        """The collection the alias points at, or None before the first build."""
        return self.get_store().alias_target(self.alias)

    def ensure_collection(self, name: str, dimension: int) -> bool:
        """Create the collection (cosine, `dimension`) unless it exists; True when created."""
        store = self.get_store()
        if store.collection_exists(name):
            size = store.dimension(name)
            if size != dimension:
                raise ValueError(f"Qdrant collection {name} holds {size}-d vectors, the model makes {dimension}-d")
            return False
        store.create_collection(name, dimension)
        return True

    def point_alias_at(self, collection: str) -> str | None:
        """Swap the alias to `collection` in one atomic operation; returns the previous target."""
        store = self.get_store()
        previous = store.alias_target(self.alias)
        if previous != collection:
            store.set_alias(self.alias, collection)
        return previous
