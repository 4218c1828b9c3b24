"""Submit a JSONL file for batch inference from the command line.

    python -m ai_assets.inference.submit prompts.jsonl          # copy into the inbox, add the partition
    python -m ai_assets.inference.submit prompts.jsonl --run    # ... and materialize it now

The file is validated first, so a malformed line is reported as file:line before anything is copied.
Uses the Dagster instance of DAGSTER_HOME, like the `dagster` CLI.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg

from ai_assets.inference.assets import inference_files
from ai_assets.inference.storage import inbox_dir, partition_key_for
from ai_assets.inference.validation import validate_jsonl


def submit(source: Path, instance: dg.DagsterInstance) -> str:
    """Copy `source` into the inbox and register its partition; returns the partition key."""
    validated = validate_jsonl(source)
    for problem in validated.problems:
        print(f"warning: {problem}", file=sys.stderr)
    validated.raise_if_unusable(strict=False)
    key = partition_key_for(source)
    inbox = inbox_dir()
    inbox.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, inbox / key)
    if not instance.has_dynamic_partition(inference_files.name, key):
        instance.add_dynamic_partitions(inference_files.name, [key])
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path)
    parser.add_argument("--run", action="store_true", help="materialize the partition now")
    args = parser.parse_args(argv)
    key = submit(args.file, dg.DagsterInstance.get())
    command = [
        str(Path(sys.executable).parent / "dagster"), "asset", "materialize",
        "-m", "ai_assets.definitions", "--select", "inference_outputs", "--partition", key,
    ]  # fmt: skip
    if not args.run:
        print(f"partition {key} added; run it with:\n  dagster {' '.join(command[1:])}")
        return 0
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
