"""The Optuna examples and the OptunaHub package run as shipped, each well within 2 minutes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.rlm_fixtures import tiny_checkpoint  # noqa: F401  (pytest fixture)

ROOT = Path(__file__).resolve().parents[1]
HUB = ROOT / "examples" / "optunahub"


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):  # noqa: F811
    """The shipped checkpoint once it exists; until then the tiny untrained one (plumbing only)."""
    from rlm_nas.model import DEFAULT_CHECKPOINT

    return "default" if (DEFAULT_CHECKPOINT / "config.json").is_file() else tiny_checkpoint


@pytest.mark.parametrize(
    "script, expected",
    [
        ("examples/optuna_darts.py", r"20 trials; best \d+\.\d\d \(trial \d+; the RLM predicted .*\n\{\"normal\": "),
        ("examples/latency_constrained.py", r"\d+ of 20 trials within 12 ms on pixel3\n(best: .*source: predicted\)\n\|.*\||no trial is predicted)"),
        ("examples/optunahub/example.py", r"best \d+\.\d\d: \|.*~0\|"),
    ],
    ids=["optuna_darts", "latency_constrained", "optunahub"],
)
def test_example_runs(script, expected, checkpoint):
    # One torch thread: on a CPU shared with other jobs, the default two spin against each other
    # and are several times slower than one (the examples themselves leave torch's default).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, script, "--checkpoint", checkpoint], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(expected, r.stdout), r.stdout
    assert seconds < 120, f"{script} took {seconds:.0f} s"


def test_optunahub_loads_the_local_package():
    import optunahub

    from rlm_nas.optuna import RLMSampler

    module = optunahub.load_local_module(package=HUB.name, registry_root=str(HUB.parent))
    assert module.RLMSampler is RLMSampler


def test_optunahub_readme_and_license():
    text = (HUB / "README.md").read_text()
    front = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert front, "README.md must start with a --- front-matter block"
    keys = dict(line.split(": ", 1) for line in front.group(1).splitlines())
    assert set(keys) == {"author", "title", "description", "tags", "optuna_versions", "license"}
    assert keys["license"] == "Apache License 2.0" and "5.0.0" in keys["optuna_versions"]
    for section in ("## Abstract", "## APIs", "## Installation", "## Example"):
        assert section in text
    assert "Apache License" in (HUB / "LICENSE").read_text()[:200]
