"""Which backend answers a file: `sync` (the engine, now) or `batch_api` (the Batch API, within 24 h).

The choice, first that applies:

1. the run's config (`mode`), per run: the launchpad, `submit --mode`, a sensor's run request;
2. batches of this exact input still in flight: the run goes on in `batch_api` (a sync run would pay
   for their items a second time, so an explicit `sync` is refused until they are collected);
3. the file's own choice: a text file `<name>.mode` beside it in the inbox holding `sync` or `batch_api`
   (written by `submit --mode`, or by hand *before* the JSONL file is dropped);
4. the deployment's default, INFERENCE_MODE.
"""

from __future__ import annotations

from pathlib import Path

from ai_assets.lib.inference.files import InferenceFolders

MODES = ("sync", "batch_api")
MODE_SUFFIX = ".mode"


class ModeError(ValueError):
    """A mode that is not `sync` or `batch_api`, or a choice that would pay for items twice."""


def mode_file(folders: InferenceFolders, partition_key: str) -> Path:
    """Where a file's own choice lies: `<inbox>/<key>.mode` (the key is checked as for the input)."""
    source = folders.input_path(partition_key)
    return source.with_name(source.name + MODE_SUFFIX)


def read_mode_file(path: Path) -> str | None:
    """The mode a `.mode` file names, None when there is no such file; a wrong one raises `ModeError`."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    if text not in MODES:
        raise ModeError(f"{path}:1: {text[:40]!r} is not a mode: write sync or batch_api")
    return text


def choose_mode(
    *, configured: str | None, batches_in_flight: list[str], file_choice: str | None, default: str
) -> tuple[str, str]:
    """`(mode, why)` per the module docstring. `batches_in_flight`: ids (or intents) of this input's open
    batches. Raises `ModeError` for an unknown mode, and for `sync` while batches are in flight."""
    if configured is not None and configured not in MODES:
        raise ModeError(f"run config mode: {configured!r} is not one of {', '.join(MODES)}")
    if configured == "sync" and batches_in_flight:
        shown = ", ".join(batches_in_flight[:5]) + (" ..." if len(batches_in_flight) > 5 else "")
        raise ModeError(
            f"mode sync was asked for, but {len(batches_in_flight)} batch(es) of this input are still in flight "
            f"({shown}): their items would be paid for twice. Wait for inference_batch_sensor to collect them, "
            "or cancel them at the provider (client.batches.cancel) and run again in batch_api mode to collect "
            "what they answered; then a sync run answers the rest"
        )
    if configured is not None:
        return configured, "run config"
    if batches_in_flight:
        return "batch_api", f"{len(batches_in_flight)} batch(es) of this input in flight"
    if file_choice is not None:
        return file_choice, f"the file's {MODE_SUFFIX} file"
    return default, "INFERENCE_MODE"
