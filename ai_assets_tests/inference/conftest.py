"""Fixtures of the inference tests: a private inbox inside a private data folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def inbox(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    monkeypatch.setenv("AI_ASSETS_INFERENCE_INBOX", str(folder))
    return folder
