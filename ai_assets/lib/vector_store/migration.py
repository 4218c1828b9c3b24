"""Moving an embedded store of earlier versions (qdrant-client's local mode) to Qdrant Edge.

Points are copied with their vectors and payloads, so nothing is re-embedded; aliases are carried over.
The old files are then set aside in `local-mode-backup/` (not deleted) for the operator to remove.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ai_assets.lib.vector_store.edge import EdgeStore

PAGE = 1024


def has_local_mode_data(root: Path) -> bool:
    return (root / "meta.json").is_file() and (root / "collection").is_dir()


def migrate_local_mode(root: Path, store: EdgeStore, log: Callable[[str], None]) -> None:
    """Copy every collection and alias of the local-mode store in `root` into `store`."""
    from qdrant_client import QdrantClient

    started = time.perf_counter()
    log(
        f"Migrating the embedded vector store in {root} from qdrant-client local mode to Qdrant Edge: "
        "copying points with their vectors (nothing is re-embedded)"
    )
    client = QdrantClient(path=str(root))
    try:
        total = 0
        for description in client.get_collections().collections:
            name = description.name
            dimension = client.get_collection(name).config.params.vectors.size  # type: ignore[union-attr]
            store.create_collection(name, int(dimension))  # type: ignore[arg-type]
            offset, copied = None, 0
            while True:
                points, offset = client.scroll(name, limit=PAGE, offset=offset, with_payload=True, with_vectors=True)
                if points:
                    store.upsert(
                        name,
                        [str(p.id) for p in points],
                        [list(p.vector) for p in points],  # type: ignore[arg-type]
                        [p.payload or {} for p in points],
                    )
                    copied += len(points)
                if offset is None:
                    break
            store.optimize(name)
            log(f"Migrated collection {name}: {copied} points")
            total += copied
        for alias in client.get_aliases().aliases:
            store.set_alias(alias.alias_name, alias.collection_name)
            log(f"Migrated alias {alias.alias_name} -> {alias.collection_name}")
    finally:
        client.close()
    log(f"Migration to Qdrant Edge done: {total} points in {time.perf_counter() - started:.1f} s")


def set_local_mode_aside(root: Path, log: Callable[[str], None]) -> None:
    """Move the local-mode files into `local-mode-backup/` once their points are in the new store."""
    backup = root / "local-mode-backup"
    backup.mkdir(exist_ok=True)
    for name in ("meta.json", "collection", ".lock"):
        source = root / name
        if source.exists():
            target = backup / name
            if target.exists():
                target = backup / f"{name}.{int(time.time())}"
            os.rename(source, target)
    log(f"The old local-mode files are kept in {backup}; delete that folder once the migrated store serves well")
