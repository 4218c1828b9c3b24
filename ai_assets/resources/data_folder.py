"""The data folder: where the tables, the embedded Qdrant, caches, inference files and evaluation
artifacts live. One resource, so that every user of the folder agrees on it and a deployment can point
it at a shared volume (and, later, an object store) in one place."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from ai_assets.lib.tables import resolve_data_dir


class DataFolderResource(dg.ConfigurableResource):
    """The project's data folder: `path` (AI_ASSETS_DATA_DIR), or when empty `.data` inside
    DAGSTER_HOME, else inside the current folder. Resolved in the process that uses it (a run worker, a
    sensor evaluation), so every process of one instance finds the same data."""

    path: str = ""

    @property
    def root(self) -> Path:
        """The folder, resolved; raises `SettingError` naming AI_ASSETS_DATA_DIR if it is a file."""
        return resolve_data_dir(self.path)

    def folder(self, *parts: str) -> Path:
        """A sub-folder of the data folder (not created)."""
        return self.root.joinpath(*parts)

    @property
    def tables_dir(self) -> Path:
        """The intermediate Parquet tables (the tables IO manager's default base)."""
        return self.folder("tables")

    @property
    def qdrant_dir(self) -> Path:
        """The embedded Qdrant's folder when QDRANT_PATH is not set."""
        return self.folder("qdrant")

    @property
    def http_cache_dir(self) -> Path:
        """Fetched URL sources, for conditional requests."""
        return self.folder("cache", "http")

    @property
    def evaluation_dir(self) -> Path:
        """Per-question evaluation artifacts."""
        return self.folder("evaluation")

    def staging_file(self, run_id: str, name: str) -> Path:
        """A private file for one run's output; the tables IO manager moves it to its final place."""
        return self.folder("staging", run_id, f"{name}.parquet")


def data_folder_from_environment() -> Path:
    """The data folder the code location uses in this process's environment, for code outside a run
    (benchmarks, command-line tools): its `data_folder` resource, resolved here."""
    from ai_assets.resources import build_resources

    with build_resources()["data_folder"].process_config_and_initialize_cm() as folder:
        return folder.root
