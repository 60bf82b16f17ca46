"""RLMSampler: Optuna's own sampler test cases, proposals, acquisitions, constraints, storages,
threads and processes, online fine-tuning. The tiny fixture RLM is untrained: these tests check
the wiring, not the quality of the predictions."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

import rlm_nas.optuna.sampler as sampler_module
from rlm_nas.core import Prediction
from rlm_nas.model import RLM
from rlm_nas.optuna import RLMSampler
from rlm_nas.optuna.sampler import ARCH_ATTR, PREDICTED_ATTR, constraint_values, pareto_mask
from search_spaces import get_space
from tests.rlm_fixtures import tiny_checkpoint, tiny_rlm  # noqa: F401  (pytest fixtures)

ROOT = Path(__file__).resolve().parents[1]
SPACE = get_space("nb201")
# The tiny fixture has no known pairs and reads 256 tokens: both warnings are expected here.
pytestmark = [pytest.mark.filterwarnings("ignore:.*no training data.*"), pytest.mark.filterwarnings("ignore:.*truncated.*"),
              pytest.mark.usefixtures("one_torch_thread")]
optuna.logging.set_verbosity(optuna.logging.WARNING)


def make(rlm, **kw) -> RLMSampler:
    kw = {"objectives": ("accuracy:cifar10",), "pool_size": 4, "online_finetune": False, "seed": 0, **kw}
    return RLMSampler(SPACE, checkpoint=rlm, **kw)


def archs(study) -> list[str]:
    return [SPACE.format(SPACE.from_params({k: t.params[k] for k in SPACE.distributions()})) for t in study.trials]


# --- Optuna's own sampler tests: parameters outside the space go to the independent sampler -----
# (RelativeSamplerTestCase does not apply: it asks sample_relative for arbitrary float spaces.)
try:  # shipped as optuna.testing.pytest_samplers since Optuna 5.0
    from optuna.testing.pytest_samplers import BasicSamplerTestCase, MultiObjectiveSamplerTestCase
except ImportError:  # Optuna 4.x
    BasicSamplerTestCase = MultiObjectiveSamplerTestCase = None

if BasicSamplerTestCase is not None:

    class TestOptunaSuite(BasicSamplerTestCase, MultiObjectiveSamplerTestCase):
        @pytest.fixture
        def sampler(self, tiny_rlm):  # noqa: F811
            return lambda: make(tiny_rlm, warn_independent_sampling=False)


# --- proposals ------------------------------------------------------------------------------------
@pytest.mark.parametrize("acquisition", ["thompson", "ucb", "mean"])
def test_proposals_are_valid_new_and_annotated(tiny_rlm, acquisition):  # noqa: F811
    study = optuna.create_study(direction="maximize", sampler=make(tiny_rlm, acquisition=acquisition))
    study.optimize(lambda t: float(SPACE.format(SPACE.suggest(t)).count("conv")), n_trials=12)
    names = archs(study)
    assert len(set(names)) == 12  # never the same architecture twice
    for t, name in zip(study.trials, names):
        assert t.system_attrs[ARCH_ATTR] == name  # the objective got exactly the proposal
        pred = t.system_attrs[PREDICTED_ATTR]["accuracy:cifar10"]
        assert pred["p10"] <= pred["median"] <= pred["p90"]


def test_same_seed_same_proposals(tiny_rlm):  # noqa: F811
    runs = []
    for _ in range(2):
        study = optuna.create_study(direction="maximize", sampler=make(tiny_rlm, seed=3))
        study.optimize(lambda t: float(len(SPACE.format(SPACE.suggest(t)))), n_trials=4)
        runs.append(archs(study))
    assert runs[0] == runs[1]


def test_fixed_candidates_are_proposed_each_once(tiny_rlm):  # noqa: F811
    shortlist = [SPACE.format(g) for g in SPACE.sample(5, seed=11)]
    study = optuna.create_study(direction="maximize", sampler=make(tiny_rlm, candidates=shortlist + shortlist[:1]))
    study.optimize(lambda t: float(SPACE.format(SPACE.suggest(t)).count("conv")), n_trials=5)
    assert sorted(archs(study)) == sorted(shortlist)  # all of them, none twice (the duplicate dropped)
    with pytest.raises(ValueError, match="candidates is empty"):
        make(tiny_rlm, candidates=[])
    with pytest.raises(ValueError):  # an invalid architecture is named at construction
        make(tiny_rlm, candidates=["|bogus~0|+|"])


def test_never_proposes_evaluated_arch_except_failed(tiny_rlm):  # noqa: F811
    study = optuna.create_study(direction="maximize", sampler=make(tiny_rlm))
    done, failed = SPACE.sample(2, seed=5)
    dists = SPACE.distributions()
    study.add_trial(optuna.create_trial(params=SPACE.to_params(done), distributions=dists, value=1.0))
    study.add_trial(optuna.create_trial(params=SPACE.to_params(failed), distributions=dists, state=TrialState.FAIL))
    sampler = study.sampler
    # Both look far better than anything the model can predict (its largest number is 9.999e9).
    sampler._scored = {SPACE.format(g): (g, np.full((1, sampler._num_samples), 1e12)) for g in (done, failed)}
    trial = study.ask()
    assert SPACE.format(SPACE.suggest(trial)) == SPACE.format(failed)  # failed may be retried, done never


def test_space_name_is_accepted_and_bad_arguments_are_named(tiny_rlm):  # noqa: F811
    assert RLMSampler("nb201", checkpoint=tiny_rlm).space is SPACE
    with pytest.raises(ValueError, match="acquisition 'ei'.*thompson, ucb, mean"):
        make(tiny_rlm, acquisition="ei")
    with pytest.raises(ValueError, match=r"latency:nodevice.*known: accuracy:cifar10"):
        make(tiny_rlm, constraints={"latency:nodevice": 1.0})
    with pytest.raises(ValueError, match="pool_size must be a positive int, got 0"):
        make(tiny_rlm, pool_size=0)
    with pytest.raises(ValueError, match=r"constraints\['latency:pixel3'\] must be a finite number"):
        make(tiny_rlm, constraints={"latency:pixel3": float("nan")})
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make(tiny_rlm))

    def objective(t):
        SPACE.suggest(t)
        return 0.0, 0.0

    with pytest.raises(ValueError, match=r"2 objective\(s\) but RLMSampler\(objectives=...\) names 1"):
        study.optimize(objective, n_trials=1, catch=())


def test_unknown_params_go_to_the_independent_sampler_with_a_warning(tiny_rlm):  # noqa: F811
    study = optuna.create_study(sampler=make(tiny_rlm))
    with pytest.warns(UserWarning, match="'lr' is sampled by RandomSampler because it is not a parameter of the nb201"):
        study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-1, log=True) + len(SPACE.format(SPACE.suggest(t))), n_trials=3)
    assert all(1e-4 <= t.params["lr"] <= 1e-1 for t in study.trials)
    assert len(set(archs(study))) == 3


def test_docstring_example(tiny_checkpoint, monkeypatch):  # noqa: F811
    # Until a trained checkpoint ships, "default" in the example is served by the tiny fixture.
    if not default_checkpoint_exists():
        real = RLM.from_pretrained.__func__
        monkeypatch.setattr(RLM, "from_pretrained", classmethod(lambda cls, d="default": real(cls, tiny_checkpoint if d == "default" else d)))
    results = doctest.testmod(sampler_module, optionflags=doctest.ELLIPSIS, raise_on_error=False)
    assert results.attempted >= 5 and results.failed == 0


def default_checkpoint_exists() -> bool:
    from rlm_nas.model import DEFAULT_CHECKPOINT

    return (DEFAULT_CHECKPOINT / "config.json").is_file()


# --- selection (synthetic predictions: exact expectations) ----------------------------------------
def fake_prediction(medians: dict[str, list[float]], spread: float = 1.0) -> Prediction:
    """Samples median +/- spread for each metric: median, p10 and p90 are known exactly."""
    offsets = np.linspace(-spread, spread, 11)
    samples = np.stack([np.add.outer(np.asarray(v, float), offsets) for v in medians.values()], 1)
    return Prediction(tuple(medians), samples)


def test_select_filters_on_predicted_constraint_and_falls_back_to_lowest(tiny_rlm):  # noqa: F811
    s = make(tiny_rlm, acquisition="mean", constraints={"latency:pixel3": 10.0})
    rng = np.random.default_rng(0)
    max_ = [StudyDirection.MAXIMIZE]
    pred = fake_prediction({"accuracy:cifar10": [95, 90, 80], "latency:pixel3": [20, 9, 5]})
    assert s._select(pred, max_, rng) == 1  # 0 is more accurate but predicted over budget
    over = fake_prediction({"accuracy:cifar10": [95, 90, 80], "latency:pixel3": [30, 12, 15]})
    assert s._select(over, max_, rng) == 1  # none fits: the smallest excess


def test_select_ucb_uses_p90_for_maximized_and_p10_for_minimized(tiny_rlm):  # noqa: F811
    pred = Prediction(("accuracy:cifar10",), np.stack([np.linspace(89, 91, 11), np.linspace(80, 100, 11)])[:, None])
    rng = np.random.default_rng(0)
    assert make(tiny_rlm, acquisition="mean")._select(pred, [StudyDirection.MINIMIZE], rng) == 0  # medians tie: first
    assert make(tiny_rlm, acquisition="ucb")._select(pred, [StudyDirection.MAXIMIZE], rng) == 1  # p90 98 > 90.8
    assert make(tiny_rlm, acquisition="ucb")._select(pred, [StudyDirection.MINIMIZE], rng) == 1  # p10 82 < 89.2
    pred = Prediction(("accuracy:cifar10",), np.stack([np.linspace(89, 91, 11), np.linspace(88.5, 89.5, 11)])[:, None])
    assert make(tiny_rlm, acquisition="ucb")._select(pred, [StudyDirection.MAXIMIZE], rng) == 0  # 90.8 > 89.4


def test_select_multi_objective_draws_from_the_predicted_pareto_front(tiny_rlm):  # noqa: F811
    s = make(tiny_rlm, objectives=("accuracy:cifar10", "latency:pixel3"), acquisition="mean")
    acc, lat = [90, 85, 80, 84, 70], [10, 5, 2, 6, 3]  # 3 is dominated by 1, 4 by 2
    pred = fake_prediction({"accuracy:cifar10": acc, "latency:pixel3": lat})
    picks = {s._select(pred, [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE], np.random.default_rng(i)) for i in range(40)}
    assert picks == {0, 1, 2}
    assert pareto_mask(np.array([[1, 1], [0, 0], [1, 0], [1, 1]])).tolist() == [True, False, False, True]


def test_multi_objective_study_runs(tiny_rlm):  # noqa: F811
    s = make(tiny_rlm, objectives=("accuracy:cifar10", "latency:pixel3"))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=s)
    study.optimize(lambda t: (len(SPACE.format(SPACE.suggest(t))), t.number), n_trials=5)
    assert len(set(archs(study))) == 5 and study.best_trials


# --- constraints are recorded where Optuna reads them ---------------------------------------------
@pytest.mark.parametrize("named", [True, False], ids=["optuna5-named", "optuna4-list"])
def test_real_constraint_is_recorded(tiny_rlm, monkeypatch, named):  # noqa: F811
    if named and not sampler_module._NAMED_CONSTRAINTS:
        pytest.skip("this Optuna has no named constraints (trial.set_constraint)")
    monkeypatch.setattr(sampler_module, "_NAMED_CONSTRAINTS", named)  # False: what runs on Optuna 4.x
    budget = 10.0
    study = optuna.create_study(direction="maximize", sampler=make(tiny_rlm, constraints={"latency:pixel3": budget}))

    def objective(t):
        SPACE.suggest(t)
        if t.number % 2 == 0:  # measured on even trials; odd ones fall back to the prediction
            t.set_user_attr("latency:pixel3", 4.0 + 4 * t.number)
            return 1.0 + t.number
        return 0.0  # below trial 0 whatever the (untrained) prediction makes of its feasibility

    study.optimize(objective, n_trials=4)
    for t in study.trials:
        (c,) = constraint_values(t)
        key = "constraints:latency:pixel3" if named else "constraints"
        assert key in t.system_attrs
        if t.number % 2 == 0:
            assert c == pytest.approx(4.0 + 4 * t.number - budget)
            assert t.system_attrs["rlm:constraint_source"] == {"latency:pixel3": "measured"}
        else:
            assert c == pytest.approx(t.system_attrs[PREDICTED_ATTR]["latency:pixel3"]["median"] - budget)
            assert t.system_attrs["rlm:constraint_source"] == {"latency:pixel3": "predicted"}
    assert study.best_trial.number == 0  # trial 2 has the best value but measured 12 ms > 10
    # Optuna's own constrained machinery (4.x and 5) reads what the sampler wrote:
    from optuna.study._constrained_optimization import _get_feasible_trials

    feasible = {t.number for t in _get_feasible_trials(study.trials)}
    assert feasible == {t.number for t in study.trials if constraint_values(t)[0] <= 0} and 0 in feasible and 2 not in feasible


# --- storages, threads, processes -----------------------------------------------------------------
def test_sqlite_storage_with_threads(tiny_rlm, tmp_path):  # noqa: F811
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="t", direction="maximize", sampler=make(tiny_rlm))
    study.optimize(lambda t: float(len(SPACE.format(SPACE.suggest(t)))), n_trials=8, n_jobs=2)
    loaded = optuna.load_study(study_name="t", storage=storage)
    assert [t.state for t in loaded.trials] == [TrialState.COMPLETE] * 8
    assert len(set(archs(loaded))) == 8
    assert all(PREDICTED_ATTR in t.system_attrs for t in loaded.trials)


WORKER = """
import sys, warnings, optuna
warnings.simplefilter("ignore")
from rlm_nas.optuna import RLMSampler
from search_spaces import get_space
space = get_space("nb201")
sampler = RLMSampler(space, checkpoint=sys.argv[1], pool_size=4, online_finetune=False, seed=0)  # same seed on purpose
study = optuna.load_study(study_name="shared", storage=sys.argv[2], sampler=sampler)
study.optimize(lambda t: float(len(space.format(space.suggest(t)))), n_trials=4)
"""


@pytest.mark.slow
def test_two_processes_share_one_study(tiny_checkpoint, tmp_path):  # noqa: F811
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(storage=storage, study_name="shared", direction="maximize")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, tiny_checkpoint, storage], cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 8
    # Proposals depend on (seed, trial number) and on the storage, not on the process: no repeats.
    assert len(set(archs(study))) == 8


# --- online fine-tuning ---------------------------------------------------------------------------
def test_online_finetune_adapts_within_its_time_bound(tiny_checkpoint):  # noqa: F811
    import time

    rlm = RLM.from_pretrained(tiny_checkpoint)  # its own copy: fine-tuning changes the weights
    before = {k: v.clone() for k, v in rlm.module.state_dict().items()}
    s = RLMSampler(SPACE, checkpoint=rlm, pool_size=4, finetune_every=3, finetune_seconds=0.5, seed=0)
    study = optuna.create_study(direction="maximize", sampler=s)
    durations = []

    def objective(t):
        t0 = time.monotonic()
        SPACE.suggest(t)  # sample_relative (and any fine-tune) runs here
        durations.append(time.monotonic() - t0)
        return 90.0 + t.number / 10  # in the checkpoint's units (% accuracy)

    study.optimize(objective, n_trials=7)
    assert s._finetuned_at == 6  # after trials 3 and 6
    assert any(not np.allclose(before[k], v) for k, v in rlm.module.state_dict().items())
    assert ("nb201", "accuracy:cifar10") in rlm.known_pairs
    assert max(durations) < 0.5 + 10  # the bound plus one step and a proposal on a busy CPU


def test_failing_finetune_warns_and_the_study_goes_on(tiny_checkpoint, monkeypatch):  # noqa: F811
    import rlm_nas.finetune

    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(rlm_nas.finetune, "finetune", boom)
    s = RLMSampler(SPACE, checkpoint=RLM.from_pretrained(tiny_checkpoint), pool_size=4, finetune_every=1, seed=0)
    study = optuna.create_study(direction="maximize", sampler=s)
    with pytest.warns(UserWarning, match="online fine-tuning failed and is now off: RuntimeError: out of memory"):
        study.optimize(lambda t: float(len(SPACE.format(SPACE.suggest(t)))), n_trials=3)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
