"""One domain's wiring (`ai_assets/defs/<domain>`) as Definitions without resources, for tests and benches
that supply their own resources."""

from __future__ import annotations

import importlib
import pkgutil

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition


def domain_defs(*domains: str) -> dg.Definitions:
    """The assets, checks, jobs, schedules and sensors of `domains`, from the modules the code location
    autoloads."""
    modules = [
        importlib.import_module(f"ai_assets.defs.{domain}.{info.name}")
        for domain in domains
        for info in pkgutil.iter_modules(importlib.import_module(f"ai_assets.defs.{domain}").__path__)
    ]
    objects = [value for module in modules for value in vars(module).values()]
    return dg.Definitions(
        assets=dg.load_assets_from_modules(modules),
        asset_checks=dg.load_asset_checks_from_modules(modules),
        jobs=[o for o in objects if isinstance(o, UnresolvedAssetJobDefinition | dg.JobDefinition)],
        schedules=[o for o in objects if isinstance(o, dg.ScheduleDefinition)],
        sensors=[o for o in objects if isinstance(o, dg.SensorDefinition)],
    )
