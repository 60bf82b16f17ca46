"""Shared test fixtures: where the shared measurement data lives, a clean HOME for NNI, one torch thread."""

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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures(...)``).

    The models and networks under test are small: a second thread gains nothing, and on a CPU
    shared with other jobs two threads spin against each other and run several times slower.
    The previous setting is restored after the module.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
