"""RLMStrategy and rlm_filter on NNI 3.0's own NDS model spaces.

Plumbing tests with the tiny untrained RLM: a SequentialExecutionEngine runs a FunctionalEvaluator
that reports a cheap deterministic score of the sample (no training). What is checked is the
wiring: space detection and conversion, ranking by the RLM, never resubmitting, constraints, the
Filter middleware and the example script.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nni")

import nni  # noqa: E402
from nni.nas.evaluator import FunctionalEvaluator  # noqa: E402
from nni.nas.execution import SequentialExecutionEngine  # noqa: E402
from nni.nas.hub.pytorch import DARTS, ENAS, PNAS, AmoebaNet, NASNet  # noqa: E402
from nni.nas.space import ModelStatus, RawFormatModelSpace, SimplifiedModelSpace  # noqa: E402
from nni.nas.strategy import RegularizedEvolution  # noqa: E402
from nni.nas.strategy.middleware import Chain, Filter  # noqa: E402

from rlm_nas.model import RLM  # noqa: E402
from rlm_nas.nni import RLMStrategy, detect_space, nni_genotype, rlm_filter  # noqa: E402
from rlm_nas.nni import strategy as strategy_module  # noqa: E402
from search_spaces import get_space  # noqa: E402
from tests.rlm_fixtures import tiny_checkpoint  # noqa: E402,F401  (pytest fixture)

# The tiny fixture is untrained (no known pairs) and reads 256 tokens: both warnings are expected.
pytestmark = pytest.mark.filterwarnings("ignore:.*were truncated:UserWarning", "ignore:the RLM has no training data:UserWarning")

ACC, LAT = "accuracy:cifar10", "latency:pixel3"
ROOT = Path(__file__).resolve().parents[1]


def score_of(sample) -> float:
    """The 'accuracy' the evaluator reports: share of separable convolutions, in percent."""
    ops = [v for k, v in sample.items() if "/op_" in k]
    return 80.0 + 20.0 * sum(op.startswith("sep_conv") for op in ops) / len(ops)


def report(network) -> None:
    # The sequential engine hands the model out as the trial's parameter; it carries the sample.
    nni.report_final_result(score_of(nni.get_current_parameter().sample))


class Spy:
    """Wraps an RLM and records every ``predict`` call as (genotypes, Prediction)."""

    def __init__(self, rlm):
        self.rlm, self.calls = rlm, []

    def __getattr__(self, name):
        return getattr(self.rlm, name)

    def predict(self, genotypes, metrics, **kwargs):
        pred = self.rlm.predict(genotypes, metrics, **kwargs)
        self.calls.append((list(genotypes), pred))
        return pred


@pytest.fixture
def rlm(tiny_checkpoint):  # noqa: F811
    """A fresh tiny RLM per test: the strategy fine-tunes it in place."""
    return RLM.from_pretrained(tiny_checkpoint)


@pytest.mark.parametrize("cls, name", [(NASNet, "nasnet"), (AmoebaNet, "amoeba"), (PNAS, "pnas"), (ENAS, "enas"), (DARTS, "darts")])
def test_detect_space_and_convert(cls, name):
    space = SimplifiedModelSpace.from_model(cls(width=16, num_cells=4))
    assert detect_space(space) == name
    model = space.random(random_state=np.random.RandomState(0))
    g = nni_genotype(get_space(name), model)
    # The fixed width/depth come from the NNI space, the cells from the sample.
    assert (g.width, g.depth) == (16, 4)
    assert get_space(name).to_nni(g) == {"width": 16, "depth": 4, **model.sample}


def test_detect_space_rejects_other_spaces():
    from nni.nas.hub.pytorch import NasBench201

    with pytest.raises(ValueError, match="match none of nasnet"):
        detect_space(RawFormatModelSpace.from_model(NasBench201()))


def test_strategy_on_darts_submits_the_rlm_top_and_learns(rlm, nni_home):
    spy = Spy(rlm)
    space = RawFormatModelSpace.from_model(DARTS(width=16, num_cells=4), FunctionalEvaluator(report))
    engine = SequentialExecutionEngine(max_model_count=6)
    strategy = RLMStrategy(spy, pool_size=6, batch_size=3, finetune_steps=1, finetune_seconds=5, seed=0)
    strategy(space, engine)

    models = list(engine.list_models())
    assert len(models) == 6 and all(m.status == ModelStatus.Trained for m in models)
    assert [m.metric for m in models] == [score_of(m.sample) for m in models]
    darts = get_space("darts")
    submitted = [darts.format(nni_genotype(darts, m)) for m in models]
    assert len(set(submitted)) == 6
    # Two rounds of 3; each round submits exactly the 3 best predicted of its pool.
    assert len(spy.calls) == 2
    for r, (genotypes, pred) in enumerate(spy.calls):
        order = np.argsort(-pred.column(ACC)["median"], kind="stable")
        assert submitted[3 * r: 3 * r + 3] == [darts.format(genotypes[i]) for i in order[:3]]
    # Every reported metric became an example, and fine-tuning registered the pair it learned.
    assert [(e.arch, e.value) for e in strategy.examples] == [(a, m.metric) for a, m in zip(submitted, models)]
    assert ("darts", ACC) in rlm.known_pairs
    assert next(strategy.list_models(limit=1)).metric == max(m.metric for m in models)


def test_strategy_on_variable_width_depth_enas(rlm, nni_home):
    space = SimplifiedModelSpace.from_model(ENAS(width=(16, 24), num_cells=(4, 8)), FunctionalEvaluator(report))
    engine = SequentialExecutionEngine(max_model_count=4)
    strategy = RLMStrategy(rlm, pool_size=8, batch_size=2, finetune_steps=1, finetune_seconds=5, seed=1)
    strategy(space, engine)

    models = list(engine.list_models())
    assert strategy.space_name == "enas" and len(models) == 4
    enas = get_space("enas")
    for m in models:
        g = nni_genotype(enas, m)
        assert (g.width, g.depth) == (m.sample["width"], m.sample["depth"])
    assert {e.space for e in strategy.examples} == {"enas"} and len(strategy.examples) == 4


def test_strategy_never_resubmits(rlm, nni_home, monkeypatch):
    """With only 5 distinct samples to draw and one already evaluated, it submits the other 4, once."""
    space = RawFormatModelSpace.from_model(DARTS(width=16, num_cells=4), FunctionalEvaluator(report))
    rs = np.random.RandomState(0)
    mutables = space.simplify()
    few = [strategy_module.random_sample(mutables, rs) for _ in range(5)]
    monkeypatch.setattr(strategy_module, "random_sample", lambda _, random_state: dict(few[random_state.randint(5)]))
    engine = SequentialExecutionEngine(max_model_count=20)
    engine.submit_models(space.freeze(few[0]))  # evaluated before the strategy starts

    RLMStrategy(rlm, pool_size=3, batch_size=2, finetune_steps=1, finetune_seconds=5)(space, engine)
    keys = [strategy_module.sample_key(m.sample) for m in engine.list_models()]
    assert len(keys) == 5 and sorted(keys) == sorted(map(strategy_module.sample_key, few))


def test_strategy_submits_nothing_predicted_over_budget(rlm, nni_home):
    space = RawFormatModelSpace.from_model(DARTS(width=16, num_cells=4), FunctionalEvaluator(report))
    engine = SequentialExecutionEngine(max_model_count=4)
    strategy = RLMStrategy(rlm, constraints={LAT: -1e30}, pool_size=4, batch_size=2, finetune_steps=1)
    strategy.max_empty_rounds = 2
    strategy(space, engine)
    assert list(engine.list_models()) == []


def test_bad_targets_are_clear_errors(rlm):
    with pytest.raises(ValueError, match="does not predict latency:nodevice"):
        RLMStrategy(rlm, constraints={"latency:nodevice": 1.0})
    with pytest.raises(ValueError, match="upper bounds on costs"):
        rlm_filter(rlm, constraints={ACC: 90.0})
    with pytest.raises(ValueError, match="not both"):
        rlm_filter(rlm, threshold=90.0, quantile=0.5)


def frozen_darts(n: int, seed: int):
    space = RawFormatModelSpace.from_model(DARTS(width=16, num_cells=4), FunctionalEvaluator(report))
    rs = np.random.RandomState(seed)
    return [space.random(random_state=rs) for _ in range(n)]


def predicted(rlm, model, metric: str) -> float:
    """What the filter predicts for one model (one genotype per call, same seed and samples)."""
    g = nni_genotype(get_space("darts"), model)
    return float(rlm.predict([g], [ACC, LAT] if metric == LAT else [ACC], space="darts", num_samples=8, seed=0).column(metric)["median"][0])


def test_filter_rejects_over_budget(rlm):
    models = frozen_darts(6, seed=0)
    latency = [predicted(rlm, m, LAT) for m in models]
    budget = float(np.median(latency))
    keep = rlm_filter(rlm, constraints={LAT: budget})
    assert [keep(m) for m in models] == [lat <= budget for lat in latency]
    assert keep.rejected >= 1 and keep.accepted >= 1


def test_filter_quantile_sets_a_threshold_from_the_space(rlm):
    models = frozen_darts(4, seed=1)
    keep = rlm_filter(rlm, quantile=0.5, reference_size=6)
    decisions = [keep(m) for m in models]
    assert keep.threshold is not None  # the median prediction over 6 random samples of the space
    assert decisions == [predicted(rlm, m, ACC) >= keep.threshold for m in models]


def test_chain_regularized_evolution_with_rlm_filter(rlm, nni_home):
    reference = [predicted(rlm, m, LAT) for m in frozen_darts(4, seed=2)]
    # The lowest of four: most proposals exceed it, so the chain must skip some to run four models
    # (with the median, an untrained model let the first four through on text version 3).
    budget = float(np.min(reference))
    keep = rlm_filter(rlm, constraints={LAT: budget})
    space = RawFormatModelSpace.from_model(DARTS(width=16, num_cells=4), FunctionalEvaluator(report))
    engine = SequentialExecutionEngine(max_model_count=4)
    Chain(RegularizedEvolution(population_size=3, sample_size=2, seed=0), Filter(keep))(space, engine)

    trained = list(engine.list_models())
    assert len(trained) == 4 and all(m.metric == score_of(m.sample) for m in trained)
    # Only what the filter accepted ran (test_filter_rejects_over_budget checks its decisions).
    assert keep.accepted == 4 and keep.rejected >= 1


def test_example_runs(tiny_checkpoint, tmp_path):  # noqa: F811
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "nni_darts.py"), "--checkpoint", tiny_checkpoint,
                          "--trials", "4", "--depth", "4"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "evaluated 4 networks; the best:" in out.stdout
    assert '"normal_concat"' in out.stdout  # the best genotypes, in the darts native form
