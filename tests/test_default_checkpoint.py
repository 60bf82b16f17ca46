"""The shipped checkpoint: it loads offline and ranks unseen NB201 architectures by pixel3 latency."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from rlm_nas import RLM
from rlm_nas.data import load_help_latency

TEST_SPLIT = Path(__file__).resolve().parents[1] / "benchmarks" / "test_split.json"


@pytest.fixture(scope="module")
def default_rlm():
    return RLM.from_pretrained("default")


def test_default_checkpoint_loads_and_knows_the_shared_metrics(default_rlm):
    assert {"accuracy:cifar10", "latency:pixel3", "latency:eyeriss", "params", "flops"} <= set(default_rlm.metrics)
    assert ("nb201", "latency:pixel3") in default_rlm.known_pairs


def test_default_checkpoint_was_trained_on_the_current_texts():
    # A change to the canonical text without a retrain would leave the shipped model reading marks
    # it never saw (loading it would warn); the text version and the default move together.
    from rlm_nas.model import checkpoint_dir
    from search_spaces.text import TEXT_VERSION

    config = json.loads((checkpoint_dir("default") / "config.json").read_text())
    assert config["text_version"] == TEXT_VERSION


def test_default_ranks_unseen_nb201_architectures_by_pixel3_latency(default_rlm, shared_data):
    # The test split's architectures were excluded from the default's training, so this is held out.
    held_out = [a for s, a in json.loads(TEST_SPLIT.read_text())["archs"] if s == "nb201"][:200]
    truth = {e.arch: e.value for e in load_help_latency(shared_data / "help/nasbench201/latency/pixel3.pt").examples}
    archs = [a for a in held_out if a in truth]
    assert len(archs) == 200
    pred = default_rlm.predict(archs, ["latency:pixel3"], space="nb201", num_samples=8, seed=0)
    assert not pred.extrapolated[0]
    rho = spearmanr(pred.median[:, 0], np.array([truth[a] for a in archs])).statistic
    assert rho > 0.8, f"Spearman {rho:.3f} on 200 held-out NB201 architectures"
