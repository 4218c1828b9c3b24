"""The model store and the deployment registry of fine-tuned embedding models.

A trained model lives in the model store under a content-addressed version: the hash of what decided it
(the training data's version, the base model, the hyper-parameters). The same inputs give the same
version, so a retry or a re-run finds the model already there instead of training it again, and two
different trainings can never write one folder.

The registry is one small JSON file beside the versions: which version is deployed (serving queries
through the collection alias), which one it replaced (kept, with its collection, for a one-command
rollback) and the history of deployments. It is replaced atomically (write aside, fsync, rename), so a
reader sees the old record or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Deployment", "Registry", "RegistryError", "folder_digest", "model_version", "write_once"]

REGISTRY_FILE = "registry.json"
# Deployments remembered in the registry file; older ones stay in the asset's materialization history.
HISTORY_LIMIT = 50


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (nothing to roll back to, an unreadable file)."""


def model_version(data_version: str, base_model: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """The content address of a fine-tuned model: 16 hex digits of the hash of its inputs."""
    key = json.dumps({"data": data_version, "base": dict(base_model), "params": dict(params)}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Deployment:
    """One deployed model: what serves, where it came from, and how it scored when it was deployed."""

    version: str  # "base" for the configured base model itself
    model_path: str  # a local folder
    base_model: str  # the name of the base model it was trained from (EMBEDDING_MODEL or the bundled one)
    collection: str  # the collection the alias pointed at once it was deployed
    metrics: dict[str, float] = field(default_factory=dict)
    deployed_at: str = ""
    previous_version: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Deployment:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class Registry:
    """The registry file of one model store folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / REGISTRY_FILE

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"current": None, "previous": None, "history": []}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as err:
            raise RegistryError(f"model registry {self.path} cannot be read ({err}); restore it from a backup") from err
        if not isinstance(data, dict):
            raise RegistryError(f"model registry {self.path} is not a JSON object")
        return data

    @property
    def current(self) -> Deployment | None:
        record = self._read().get("current")
        return Deployment.from_json(record) if record else None

    @property
    def previous(self) -> Deployment | None:
        record = self._read().get("previous")
        return Deployment.from_json(record) if record else None

    def history(self) -> list[dict[str, Any]]:
        return list(self._read().get("history", []))

    def deploy(self, deployment: Deployment, replacing: Deployment | None = None) -> None:
        """Make `deployment` current; the current one (or, on the first deployment, `replacing`: the base
        model that served until now) becomes `previous`, the rollback target."""
        data = self._read()
        data["previous"] = data.get("current") or (asdict(replacing) if replacing else None)
        data["current"] = asdict(deployment)
        data["history"] = [*data.get("history", []), {"action": "deploy", **asdict(deployment)}][-HISTORY_LIMIT:]
        self._write(data)

    def rollback(self, deployed_at: str, collection: str | None = None) -> tuple[Deployment, Deployment]:
        """Swap current and previous: returns (now serving, rolled back). A second rollback undoes it.
        `collection`: where the restored model's index is now, when it had to be rebuilt elsewhere."""
        data = self._read()
        if not data.get("previous") or not data.get("current"):
            raise RegistryError(f"nothing to roll back to: model registry {self.path} records no previous deployment")
        back, undone = Deployment.from_json(data["previous"]), Deployment.from_json(data["current"])
        changes = {
            "deployed_at": deployed_at,
            "previous_version": undone.version,
            "collection": collection or back.collection,
        }
        restored = Deployment(**{**asdict(back), **changes})
        data["current"], data["previous"] = asdict(restored), asdict(undone)
        data["history"] = [*data.get("history", []), {"action": "rollback", **asdict(restored)}][-HISTORY_LIMIT:]
        self._write(data)
        return restored, undone

    def _write(self, data: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.folder, prefix=".registry.", delete=False) as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, self.path)
        directory = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)


def folder_digest(folder: Path, max_file_bytes: int = 5_000_000) -> str:
    """A hash of a model folder's small files (configs, tokenizer): which base model it is, without
    reading hundreds of MB of weights on every run."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.stat().st_size < max_file_bytes:
            digest.update(path.relative_to(folder).as_posix().encode() + b"\x00" + path.read_bytes())
    return digest.hexdigest()[:16]


def write_once(folder: Path, files: Mapping[str, str]) -> Path:
    """`files` (name -> text) in `folder`, written aside and renamed into place. A folder already there is
    kept: its name is the hash of its content, so it holds the same bytes."""
    if folder.exists():
        return folder
    scratch = folder.with_name(f".{folder.name}.{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for name, text in files.items():
        (scratch / name).write_text(text, encoding="utf-8")
    try:
        os.rename(scratch, folder)
    except OSError:  # another run wrote the same version first
        shutil.rmtree(scratch, ignore_errors=True)
        if not folder.exists():
            raise
    return folder
