"""The map of the code location: the domains autoloaded from `ai_assets/defs/`, the shared resources,
the executor.

Each folder of `defs/` is one domain's wiring (assets, checks, jobs, schedules, sensors); the code they
call lives in `lib/`, and every resource in `resources/`. A new domain is a new folder: nothing here
changes.
"""

from pathlib import Path

import dagster as dg

from ai_assets.resources import build_resources
from ai_assets.run_recovery.executor import multiprocess_executor


def _domains() -> dg.Definitions:
    """Every domain folder under `defs/`. From a project checkout (editable install, `dg`) through the
    project's `[tool.dg]` config; from a wheel install, which has no `pyproject.toml` to find, straight
    from the installed `ai_assets.defs` package, so an image built with `pip install .` loads too."""
    package = Path(__file__).parent
    if (package.parent / "pyproject.toml").exists():
        return dg.load_from_defs_folder(path_within_project=package)
    from dagster.components.core.component_tree import ComponentTree

    import ai_assets.defs

    return ComponentTree.from_module(defs_module=ai_assets.defs, project_root=package).build_defs()


defs = dg.Definitions.merge(
    _domains(),
    dg.Definitions(
        resources=build_resources(),
        # Steps of other jobs run in parallel processes; two at a time on a 2-core machine, because
        # torch steps that each use every core run slower together than one after the other. Before a
        # step claims a pool slot, the run frees the slots of runs whose worker died (run_recovery).
        executor=multiprocess_executor.configured({"max_concurrent": 2}),
    ),
)
