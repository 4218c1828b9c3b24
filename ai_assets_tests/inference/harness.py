"""Materialize one partition of `inference_outputs` in process, and read its failure as the UI shows it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import dagster as dg

from ai_assets.defs.inference.assets import inference_files, inference_outputs
from ai_assets.resources.llm import LLMResource
from ai_assets_tests.resources import settings_resources


def materialize_partition(instance: dg.DagsterInstance, key: str, llm: LLMResource) -> dg.ExecuteInProcessResult:
    """Add the partition when missing, then materialize it with `llm`; failures are returned, not raised."""
    if not instance.has_dynamic_partition(inference_files.name, key):
        instance.add_dynamic_partitions(inference_files.name, [key])
    return dg.materialize(
        [inference_outputs],
        partition_key=key,
        instance=instance,
        resources={**settings_resources(), "llm": llm},
        raise_on_error=False,
    )


def error_text(result: dg.ExecuteInProcessResult) -> str:
    """The step's error with its causes, as the run log shows it."""
    error, parts = result.failure_data_for_node("inference_outputs").error, []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)


def submit_and_kill_when(
    source: Path, env: Mapping[str, str], done: Callable[[], bool], timeout_s: float = 120
) -> None:
    """`python -m ai_assets.lib.inference.submit SOURCE --run` in a new process group with `env`, SIGKILLed
    (the whole group: the CLI and the run it launched) as soon as `done()` holds, or after `timeout_s`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ai_assets.lib.inference.submit", str(source), "--run"],
        env=dict(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None and not done():
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
