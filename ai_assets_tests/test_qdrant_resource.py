"""Embedded Qdrant locks its folder per process: a second process waits for it, then fails clearly."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ai_assets.resources.qdrant import QdrantResource

HOLD = """
import sys, time
from qdrant_client import QdrantClient
client = QdrantClient(path=sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
client.close()
"""


def hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_waits_for_the_folder_lock(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path / "qdrant", 2.0)
    started = time.monotonic()
    resource = QdrantResource(path=str(tmp_path / "qdrant"), lock_timeout_s=60)
    try:
        client = resource.get_client()
        assert client.get_collections().collections == []
        assert time.monotonic() - started >= 1.0  # it really waited for the other process
    finally:
        resource.close()
        holder.wait()


def test_lock_timeout_names_the_folder_and_the_way_out(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path / "qdrant", 10.0)
    try:
        with pytest.raises(RuntimeError, match=r"QDRANT_PATH.*QDRANT_URL"):
            QdrantResource(path=str(tmp_path / "qdrant"), lock_timeout_s=1).get_client()
    finally:
        holder.kill()
        holder.wait()


def test_alias_swap_is_one_operation(tmp_path: Path) -> None:
    resource = QdrantResource(path=str(tmp_path / "qdrant"), alias="kb")
    try:
        assert resource.alias_target() is None
        assert resource.ensure_collection("kb-one", 8) is True
        assert resource.ensure_collection("kb-one", 8) is False
        assert resource.point_alias_at("kb-one") is None
        resource.ensure_collection("kb-two", 8)
        assert resource.point_alias_at("kb-two") == "kb-one"
        assert resource.alias_target() == "kb-two"
        with pytest.raises(ValueError, match="8-d vectors, the model makes 16-d"):
            resource.ensure_collection("kb-two", 16)
    finally:
        resource.close()
