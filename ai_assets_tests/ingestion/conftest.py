"""Fixtures of the ingestion tests."""

from __future__ import annotations

import pytest

from ai_assets_tests.ingestion import harness


@pytest.fixture(params=harness.STORE_KINDS)
def store_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test once on each vector-store implementation."""
    monkeypatch.setattr(harness, "STORE_KIND", request.param)
    return request.param
