"""Guardrails on the code location's map: what the UI shows a person, and the names the README promises."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from ai_assets.definitions import defs
from ai_assets_tests.corpora import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
GROUPS = {"ingestion", "evaluation", "inference", "training", "llm_training"}


def specs() -> list[dg.AssetSpec]:
    return list(defs.resolve_all_asset_specs())


@pytest.mark.parametrize("spec", specs(), ids=lambda spec: spec.key.to_user_string())
def test_every_asset_says_what_it_is_who_owns_it_and_when_it_changed(spec: dg.AssetSpec) -> None:
    name = spec.key.to_user_string()
    assert spec.group_name in GROUPS, f"{name}: group {spec.group_name!r}"
    assert spec.owners and all(o.startswith("team:") or "@" in o for o in spec.owners), f"{name}: owners {spec.owners}"
    assert spec.kinds, f"{name}: no kinds (the UI's technology badges)"
    assert spec.code_version, f"{name}: no code_version (staleness after a logic change)"
    # The docstring is the asset's description in the UI: a sentence, not a placeholder.
    assert spec.description and len(spec.description.split()) >= 8, f"{name}: description {spec.description!r}"
    assert f"`{name}`" in README, f"{name} is not documented in the README"


def test_every_check_has_a_description_saying_what_a_failure_means() -> None:
    checks = list(defs.resolve_asset_graph().asset_check_keys)
    assert checks
    for key in checks:
        spec = defs.resolve_asset_graph().get_check_spec(key)
        assert spec.description and len(spec.description.split()) >= 6, f"{key.name}: {spec.description!r}"
        assert f"`{key.name}`" in README, f"check {key.name} is not documented in the README"


def test_jobs_schedules_and_sensors_are_the_documented_ones() -> None:
    jobs = {job.name for job in defs.jobs}
    schedules = {schedule.name for schedule in defs.schedules}
    sensors = {sensor.name for sensor in defs.sensors}
    assert jobs == {
        "rag_ingestion",
        "rag_evaluation",
        "batch_inference",
        "fine_tuning",
        "rollback_embedding_model",
        "llm_fine_tuning",
        "rollback_llm",
        "deployment_checks",
    }
    assert schedules == {"nightly_rag_refresh", "daily_rag_evaluation", "weekly_fine_tune", "weekly_llm_fine_tune"}
    assert sensors == {
        "source_change_sensor",
        "inference_inbox_sensor",
        "inference_batch_sensor",
        "rag_quality_automation",
        "rescore_after_model_change",
    }
    for name in jobs | schedules | sensors:
        assert f"`{name}`" in README, f"{name} is not documented in the README"


def test_each_domain_folder_is_wiring_only() -> None:
    # defs/ holds Dagster wiring; the code it calls lives in lib/ (pure) and resources/.
    defs_root = Path(sys.modules["ai_assets.definitions"].__file__).parent / "defs"
    for module in defs_root.rglob("*.py"):
        if module.name == "__init__.py":
            continue
        assert module.stem in {"assets", "checks", "automation"}, f"{module.relative_to(defs_root)} is not wiring"
        assert re.search(r"^import dagster as dg$", module.read_text(), re.M), (
            f"{module.name}: no `import dagster as dg`"
        )


@pytest.mark.slow
def test_dg_sees_the_same_code_location() -> None:
    dg_cli = str(Path(sys.executable).parent / "dg")
    checked = subprocess.run([dg_cli, "check", "defs"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    listed = subprocess.run(
        [dg_cli, "list", "defs", "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert listed.returncode == 0, listed.stderr
    for name in ("raw_documents", "document_embeddings", "rag_quality_metrics", "inference_outputs", "rag_ingestion"):
        assert name in listed.stdout


def test_the_code_location_loads_from_an_installed_package_without_the_project_file(tmp_path: Path) -> None:
    # A wheel install (e.g. an image built with `pip install .`) has the package but no pyproject.toml.
    site = tmp_path / "site"
    shutil.copytree(REPO_ROOT / "ai_assets", site / "ai_assets", ignore=shutil.ignore_patterns("__pycache__"))
    probe = (
        "import ai_assets, ai_assets.definitions as d; "
        "print(ai_assets.__file__); print(sorted(a.key.to_user_string() for a in d.defs.resolve_all_asset_specs()))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "DAGSTER_HOME": str(tmp_path),
        "AI_ASSETS_DATA_DIR": str(tmp_path / "d"),
    }
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    origin, assets = done.stdout.strip().splitlines()[-2:]
    assert origin.startswith(str(site))
    assert assets == str(sorted(spec.key.to_user_string() for spec in specs()))
