"""Shared test fixtures: where the shared measurement data lives, and a clean HOME for NNI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_DIR = Path(os.environ.get("RLM_NAS_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; the test is skipped (with the reason) when it is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared measurement data not found at {DATA_DIR} (set RLM_NAS_DATA)")
    return DATA_DIR


@pytest.fixture
def nni_home(tmp_path, monkeypatch):
    """NNI writes experiments under ~/nni-experiments; keep that inside the test's temp dir."""
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path
