"""The code location's settings resources for tests that wire their own Definitions.

They are the deployment's own (`build_resources`): every field an `EnvVar`, read from the test's
environment (e.g. the `data_dir` fixture's AI_ASSETS_DATA_DIR) when the run starts.
"""

from __future__ import annotations

from typing import Any

from ai_assets.lib.inference.files import InferenceFolders
from ai_assets.lib.vector_store import VectorStore
from ai_assets.resources import QdrantResource, build_resources
from ai_assets.resources.inference import folders_from_environment

SETTINGS_RESOURCES = ("data_folder", "table_io_manager", "chunking", "evaluation", "judge", "inference")


def settings_resources() -> dict[str, Any]:
    """The data folder (and the tables IO manager on it), chunking, evaluation, judge and inference."""
    built = build_resources()
    return {name: built[name] for name in SETTINGS_RESOURCES}


def qdrant_on_data_folder(**fields: Any) -> QdrantResource:
    """A Qdrant resource on the deployment's data folder, with `fields` (lock timeouts, path, url)."""
    return QdrantResource(data_folder=build_resources()["data_folder"], **fields)


def inference_folders() -> InferenceFolders:
    """The inbox, ledgers and outputs folders the code location uses in this environment."""
    return folders_from_environment()


class QdrantClientStoreResource(QdrantResource):
    """The Qdrant-server implementation (`QdrantClientStore`) over qdrant-client's local mode.

    No Qdrant server can run here; local mode answers the same qdrant-client calls in process, so every
    line of the server store runs (payload indexes aside, which local mode does not have).
    """

    def _open(self, log: Any) -> VectorStore:
        from qdrant_client import QdrantClient

        from ai_assets.lib.vector_store.client_store import QdrantClientStore

        path = self.local_path / "qdrant-client"
        path.mkdir(parents=True, exist_ok=True)
        return QdrantClientStore(QdrantClient(path=str(path)), str(path), indexes=False)
