"""The model registry: content versions, deployments, rollback and its atomic file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ai_assets.lib.training.registry import Deployment, Registry, RegistryError, model_version


def test_a_version_is_the_hash_of_what_decided_the_model() -> None:
    base = {"name": "all-MiniLM-L6-v2", "config": "abc"}
    params = {"epochs": 1.0, "batch_size": 32}
    version = model_version("data-1", base, params)
    assert len(version) == 16 and version == model_version("data-1", dict(base), dict(params))
    assert version != model_version("data-2", base, params)
    assert version != model_version("data-1", {**base, "config": "abd"}, params)
    assert version != model_version("data-1", base, {**params, "batch_size": 16})


def deployment(version: str, collection: str) -> Deployment:
    return Deployment(version, f"/models/{version}", "base-model", collection, {"ndcg_at_10": 0.7}, "t")


def test_deploy_rollback_and_undo(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    assert registry.current is None and registry.previous is None
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback("t1")

    base = Deployment("base", "/bundled", "base-model", "kb-base")
    registry.deploy(deployment("v1", "kb-v1"), replacing=base)
    assert registry.current.version == "v1" and registry.previous == base

    registry.deploy(deployment("v2", "kb-v2"), replacing=base)  # `replacing` only counts the first time
    assert registry.current.version == "v2" and registry.previous.version == "v1"

    restored, undone = registry.rollback("t2")
    assert (restored.version, restored.collection, restored.previous_version) == ("v1", "kb-v1", "v2")
    assert undone.version == "v2" and registry.current == restored and registry.previous.version == "v2"
    restored, _ = registry.rollback("t3")  # a second rollback undoes the first
    assert registry.current.version == "v2" == restored.version
    assert [h["action"] for h in registry.history()] == ["deploy", "deploy", "rollback", "rollback"]
    # Written whole and renamed into place: no temporary file is left beside it.
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["registry.json"]
    assert json.loads((tmp_path / "models" / "registry.json").read_text())["current"]["version"] == "v2"


def test_an_unreadable_registry_is_named(tmp_path: Path) -> None:
    (tmp_path / "registry.json").write_text("{half a reco")
    with pytest.raises(RegistryError, match=r"registry\.json cannot be read"):
        Registry(tmp_path).current  # noqa: B018 - reading it is the check
