"""Submit a JSONL file for batch inference from the command line.

    python -m ai_assets.lib.inference.submit prompts.jsonl            # copy into the inbox, add the partition
    python -m ai_assets.lib.inference.submit prompts.jsonl --run      # ... and materialize it now
    python -m ai_assets.lib.inference.submit prompts.jsonl --replace  # overwrite a different file of that key
    python -m ai_assets.lib.inference.submit prompts.jsonl --mode batch_api  # this file via the Batch API

The file is validated first, so a malformed line is reported as file:line before anything is copied.
The partition key is the file name when that is a safe key, else a cleaned name with a short hash of the
original (see `files.key_for_name`). A different file already in the inbox under the same key is
never replaced without `--replace`; submitting the same content again changes nothing.
Uses the Dagster instance of DAGSTER_HOME, like the `dagster` CLI.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from ai_assets.lib.inference.files import PARTITIONS, InferenceFolders, file_digest, partition_key_for
from ai_assets.lib.inference.modes import MODES, mode_file
from ai_assets.lib.llm.validation import InputValidationError, ValidatedInput, validate_jsonl


class SubmitError(Exception):
    """The file was not submitted; the message says why and what to do instead."""


@dataclass(frozen=True)
class Submission:
    """What `submit` did."""

    key: str  # the partition key
    path: Path  # the file in the inbox
    action: str  # "added" (new file), "unchanged" (same content was there), "replaced" (--replace)
    validated: ValidatedInput


def submit(
    source: Path,
    instance: dg.DagsterInstance,
    *,
    replace: bool = False,
    folders: InferenceFolders | None = None,
    max_prompt_chars: int | None = None,
    mode: str | None = None,
) -> Submission:
    """Validate `source`, copy it into the inbox and register its partition.

    `folders` and `max_prompt_chars` default to the code location's (its `inference` resource, from this
    environment), so a file is validated here exactly as the run will validate it.

    Raises `InputValidationError` when no line is usable, and `SubmitError` when the inbox already
    holds a different file under the same key and `replace` is false. The copy is written beside the
    target and moved into place, so the inbox sensor never reads a half-copied file. `mode` (sync or
    batch_api) is the file's own choice of backend, written to `<name>.mode` beside it first, so no run
    of the file can start without it.
    """
    source = Path(source)
    if folders is None or max_prompt_chars is None:
        from ai_assets.resources.inference import settings_from_environment

        deployed_folders, deployed_limit = settings_from_environment()
        folders = folders or deployed_folders
        max_prompt_chars = max_prompt_chars if max_prompt_chars is not None else deployed_limit
    validated = validate_jsonl(source, max_prompt_chars=max_prompt_chars)
    validated.raise_if_unusable(strict=False)
    key = partition_key_for(source)
    target = folders.input_path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode is not None:
        if mode not in MODES:
            raise SubmitError(f"--mode {mode!r} is not one of {', '.join(MODES)}; nothing was submitted")
        chosen = mode_file(folders, key)
        staged = chosen.with_name(f".{chosen.name}.{os.getpid()}.partial")
        staged.write_text(mode + "\n")
        os.replace(staged, chosen)
    action = _place(source, target, key, replace)
    if not instance.has_dynamic_partition(PARTITIONS, key):
        instance.add_dynamic_partitions(PARTITIONS, [key])
    return Submission(key=key, path=target, action=action, validated=validated)


def _place(source: Path, target: Path, key: str, replace: bool) -> str:
    if target.exists() and _same_file(source, target):
        return "unchanged"
    staged = target.with_name(f".{key}.{os.getpid()}.partial")  # not *.jsonl: the sensor ignores it
    try:
        shutil.copyfile(source, staged)
        if target.exists() or target.is_symlink():
            return _replace_existing(source, staged, target, key, replace)
        try:
            # A hard link never overwrites: of two submits racing for one key, the second sees the first.
            os.link(staged, target)
        except FileExistsError:
            return _replace_existing(source, staged, target, key, replace)
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
            os.replace(staged, target)  # a file system without hard links
        return "added"
    finally:
        staged.unlink(missing_ok=True)


def _replace_existing(source: Path, staged: Path, target: Path, key: str, replace: bool) -> str:
    if _same_file(source, target):
        return "unchanged"
    if not replace:
        raise SubmitError(
            f"{target} already holds a different file for partition {key!r}; nothing was copied. Pass "
            f"--replace to overwrite it (the partition's outputs are then recomputed), or rename {source}."
        )
    os.replace(staged, target)
    return "replaced"


def _same_file(source: Path, target: Path) -> bool:
    try:
        if source.resolve() == target.resolve():
            return True
        return source.stat().st_size == target.stat().st_size and file_digest(source) == file_digest(target)
    except FileNotFoundError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path)
    parser.add_argument("--run", action="store_true", help="materialize the partition now")
    parser.add_argument(
        "--replace", action="store_true", help="overwrite a different file already in the inbox under the same key"
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        help="the backend for this file: sync (now) or batch_api (the Batch API, within 24 h, at a discount); "
        "default: INFERENCE_MODE",
    )
    args = parser.parse_args(argv)
    try:
        instance = dg.DagsterInstance.get()
    except dg.DagsterError as error:  # DAGSTER_HOME unset or not a folder: the message says which
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        submission = submit(args.file, instance, replace=args.replace, mode=args.mode)
    except InputValidationError as error:
        # The user needs every problem and no traceback: the file is theirs to fix, not the code.
        for problem in error.problems:
            print(problem, file=sys.stderr)
        print(f"error: {error.headline}; nothing was submitted", file=sys.stderr)
        return 1
    except SubmitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a missing or unreadable input file, an inbox that cannot be written
        print(f"error: {error.filename or args.file}: {error.strerror or error}", file=sys.stderr)
        return 1
    for problem in submission.validated.problems:
        print(f"warning: skipped {problem}", file=sys.stderr)
    for warning in submission.validated.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    key = submission.key
    if key != args.file.name:
        print(f"{args.file.name} is submitted as partition {key}", file=sys.stderr)
    if submission.action == "unchanged":
        print(f"{submission.path} already holds this content", file=sys.stderr)
    command = [
        str(Path(sys.executable).parent / "dagster"), "asset", "materialize",
        "-m", "ai_assets.definitions", "--select", "inference_outputs", "--partition", key,
    ]  # fmt: skip
    if not args.run:
        print(f"partition {key}: input {submission.action}; run it with:\n  dagster {' '.join(command[1:])}")
        return 0
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
