"""An NNI 3.0 strategy that searches NNI's NDS model spaces with the RLM as a surrogate.

Each round draws a pool of new samples from the model space (seeded), converts each to our genotype
(``space.from_nni``), predicts the objective (and any constrained metrics) with the RLM, submits the
best predicted candidates to the engine, reads their metrics back and fine-tunes the RLM on
everything reported so far, within a time bound. It stops when the engine's budget (or
``max_collect``) is spent. A sample is never submitted twice.

The helpers here (:func:`detect_space`, :func:`nni_genotype`, :func:`score`) are shared with
:mod:`rlm_nas.nni.filter`.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from nni.nas.execution import ExecutionEngine
from nni.nas.hub.pytorch import DARTS, ENAS, PNAS, AmoebaNet, NASNet
from nni.nas.space import ExecutableModelSpace
from nni.nas.strategy import Strategy

from rlm_nas.core import METRIC_RE, Example, check_metric

_logger = logging.getLogger(__name__)

#: Our space name -> the operator candidates of the NNI class that implements it. The five sets
#: differ, so the operators of a cell identify the space even when the class is renamed or hidden
#: (a frozen RawFormatModelSpace holds an ``NDS`` module, a simplified one no module at all).
NNI_OPS: dict[str, frozenset[str]] = {
    "nasnet": frozenset(NASNet.NASNET_OPS),
    "amoeba": frozenset(AmoebaNet.AMOEBA_OPS),
    "pnas": frozenset(PNAS.PNAS_OPS),
    "enas": frozenset(ENAS.ENAS_OPS),
    "darts": frozenset(DARTS.DARTS_OPS),
}


def detect_space(model_space: ExecutableModelSpace) -> str:
    """Name of our NDS space that an NNI model space (or a model frozen from it) samples.

    >>> from nni.nas.hub.pytorch import ENAS
    >>> from nni.nas.space import RawFormatModelSpace
    >>> detect_space(RawFormatModelSpace.from_model(ENAS(width=16, num_cells=4)))
    'enas'
    """
    op = model_space.simplify().get("normal/op_2_0")
    ops = frozenset(getattr(op, "values", ()))
    for name, candidates in NNI_OPS.items():
        if ops == candidates:
            return name
    raise ValueError(
        f"cannot tell which NDS space {type(model_space).__name__} samples: its 'normal/op_2_0' "
        f"candidates {sorted(ops) or 'are missing'} match none of {', '.join(NNI_OPS)}; "
        "pass space=... explicitly"
    )


def _fixed_shape(model: ExecutableModelSpace) -> dict[str, Any]:
    """``{"width", "depth"}`` the NNI space was built with, for spaces that fix them.

    A sample only has ``width``/``depth`` keys when they vary, yet our genotypes always carry
    them. RawFormatModelSpace keeps the NDS module (its attributes hold ints when fixed);
    SimplifiedModelSpace keeps only the constructor call, so read its arguments (NNI's hub
    classes take ``width, num_cells`` first).
    """
    inner = getattr(model, "model_space", None)
    if inner is not None and hasattr(inner, "num_cells"):
        return {"width": inner.width, "depth": inner.num_cells}
    trace = getattr(model, "model", None)
    if trace is None or not hasattr(trace, "trace_kwargs"):
        raise TypeError(f"{type(model).__name__} is not supported; use the raw or simplified model format")
    kwargs = dict(zip(("width", "num_cells"), trace.trace_args)) | dict(trace.trace_kwargs)
    return {"width": kwargs.get("width"), "depth": kwargs.get("num_cells")}


def nni_genotype(space, model: ExecutableModelSpace, sample: Mapping | None = None):
    """Our genotype of ``sample`` (default: the frozen ``model``'s own sample) in ``space``.

    ``model`` is any model of the NNI space (frozen or not); it supplies width and depth when the
    space fixes them.
    """
    sample = model.sample if sample is None else sample
    if sample is None:
        raise ValueError(f"{model} is not frozen: it has no sample to convert")
    full = dict(sample)
    for key, value in _fixed_shape(model).items():
        if key not in full:
            if not isinstance(value, int):
                raise ValueError(f"the NNI space fixes no {key} and the sample has no {key!r} key: {value!r}")
            full[key] = value
    return space.from_nni(full)


def random_sample(mutables: Mapping, random_state: np.random.RandomState) -> dict:
    """One NNI sample drawn uniformly from ``model_space.simplify()``."""
    sample: dict = {}
    for mutable in mutables.values():
        mutable.random(sample, random_state)
    return sample


def sample_key(sample: Mapping) -> str:
    """A hashable, order-free key of an NNI sample (values are strs, ints and lists of ints)."""
    return json.dumps(sample, sort_keys=True)


def goal_sign(metric: str) -> float:
    """+1 when larger is better (accuracy), -1 when smaller is (latency, params, flops)."""
    return 1.0 if metric.startswith("accuracy:") else -1.0


def score(rlm, genotypes: list, space: str, objective: str, constraints: Mapping[str, float],
          num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RLM medians as ``(goodness, feasible, objective_median)`` per genotype.

    ``goodness`` is the objective median signed so that larger is better; ``feasible`` is True
    where every constrained metric's predicted median is within its budget.
    """
    metrics = [objective, *[m for m in constraints if m != objective]]
    pred = rlm.predict(genotypes, metrics, space=space, num_samples=num_samples, seed=seed)
    for metric, guess in zip(pred.metrics, pred.extrapolated):
        if guess:  # a warning (not a log line) so that a long search says it once
            warnings.warn(f"the RLM has no training data for {metric} on {space}: its predictions are a guess", stacklevel=2)
    median = pred.column(objective)["median"]
    feasible = np.ones(len(genotypes), dtype=bool)
    for metric, budget in constraints.items():
        feasible &= pred.column(metric)["median"] <= budget
    return goal_sign(objective) * median, feasible, median


def load_rlm(rlm):
    """``rlm`` itself, or the RLM loaded from a checkpoint path / ``"default"``."""
    if isinstance(rlm, str) or hasattr(rlm, "__fspath__"):
        from rlm_nas.model import RLM

        return RLM.from_pretrained(rlm)
    return rlm


def check_targets(rlm, objective: str, constraints: Mapping[str, float]) -> dict[str, float]:
    """Validate the objective and constraints against what the RLM predicts; return the constraints."""
    check_metric(objective)
    constraints = {check_metric(m): float(b) for m, b in (constraints or {}).items()}
    missing = [m for m in (objective, *constraints) if m not in rlm.metrics]
    if missing:
        raise ValueError(f"the RLM does not predict {', '.join(missing)}; it predicts: {', '.join(rlm.metrics)}")
    bad = [m for m in constraints if m.startswith("accuracy:")]
    if bad:
        raise ValueError(f"constraints are upper bounds on costs (latency, params, flops), not on {', '.join(bad)}")
    return constraints


class RLMStrategy(Strategy):
    """Search an NNI NDS model space, spending real evaluations only on what the RLM ranks best.

    Works on ``nni.nas.hub.pytorch`` DARTS, NASNet, ENAS, AmoebaNet and PNAS, with fixed or variable
    width and depth, in the raw or simplified model format.

    Args:
        rlm: an RLM, or a checkpoint path / ``"default"`` for ``RLM.from_pretrained``. It is
            fine-tuned **in place** on the reported results (read it back as :attr:`rlm`).
        objective: metric to optimize (accuracy: maximized; latency/params/flops: minimized).
            The evaluator must report it in the RLM's units (e.g. accuracy in percent).
        constraints: ``{metric: budget}``; only candidates whose predicted median is within every
            budget are submitted, e.g. ``{"latency:pixel3": 20.0}``.
        space: our space name; detected from the model space's operators when None.
        pool_size: new random samples scored per round.
        batch_size: best-ranked samples submitted per round (then metrics are read and the RLM
            fine-tuned).
        max_collect: most models this strategy submits (None: until the engine's budget ends).
        num_samples: RLM samples per prediction (the median ranks).
        finetune_steps, finetune_seconds: bound of each online fine-tuning (0 steps: none).
        seed: seeds sampling, prediction and fine-tuning.

    The evaluator reports a number (the objective) or a dict whose ``"default"`` is the objective
    and whose metric-named keys (e.g. ``"latency:pixel3"``) are learned from as well.

    Example (a cheap evaluator; see ``examples/nni_darts.py`` for a complete run)::

        from nni.nas.evaluator import FunctionalEvaluator
        from nni.nas.execution import SequentialExecutionEngine
        from nni.nas.hub.pytorch import DARTS
        from nni.nas.space import RawFormatModelSpace

        space = RawFormatModelSpace.from_model(DARTS(width=16, num_cells=8), FunctionalEvaluator(train_and_report))
        strategy = RLMStrategy("path/to/checkpoint", objective="accuracy:cifar10", batch_size=4)
        strategy(space, SequentialExecutionEngine(max_model_count=20))
        best = next(strategy.list_models(limit=1))
    """

    #: Consecutive rounds whose whole pool is predicted over budget before the search gives up.
    max_empty_rounds = 10

    def __init__(self, rlm="default", *, objective: str = "accuracy:cifar10",
                 constraints: Mapping[str, float] | None = None, space: str | None = None,
                 pool_size: int = 64, batch_size: int = 4, max_collect: int | None = None,
                 num_samples: int = 8, finetune_steps: int = 20, finetune_seconds: float = 10.0,
                 seed: int = 0):
        super().__init__()
        if pool_size < batch_size or batch_size < 1:
            raise ValueError(f"need 1 <= batch_size <= pool_size, got batch_size={batch_size}, pool_size={pool_size}")
        self.rlm = load_rlm(rlm)
        self.objective = objective
        self.constraints = check_targets(self.rlm, objective, constraints or {})
        self.space_name = space
        self.pool_size, self.batch_size, self.max_collect = pool_size, batch_size, max_collect
        self.num_samples = num_samples
        self.finetune_steps, self.finetune_seconds = finetune_steps, finetune_seconds
        self.seed = seed
        self._random_state = np.random.RandomState(seed)
        self._seen: set[str] = set()  # keys of every sample ever submitted (by anyone, to this engine)
        self.examples: list[Example] = []  # what the engine reported, as RLM training examples
        self._round = 0

    def extra_repr(self) -> str:
        return f"objective={self.objective!r}, constraints={self.constraints}, space={self.space_name!r}, " \
               f"pool_size={self.pool_size}, batch_size={self.batch_size}"

    def _initialize(self, model_space: ExecutableModelSpace, engine: ExecutionEngine) -> ExecutableModelSpace:
        from search_spaces import get_space

        self.space_name = self.space_name or detect_space(model_space)
        self._space = get_space(self.space_name)
        self._mutables = model_space.simplify()
        return model_space

    def _draw_pool(self) -> list[tuple[dict, Any]]:
        """Up to ``pool_size`` distinct, never-submitted samples with their genotypes."""
        pool: dict[str, tuple[dict, Any]] = {}
        for _ in range(20 * self.pool_size):  # small spaces run dry: bounded retries, not a loop forever
            if len(pool) == self.pool_size:
                break
            sample = random_sample(self._mutables, self._random_state)
            key = sample_key(sample)
            if key not in self._seen and key not in pool:
                pool[key] = (sample, nni_genotype(self._space, self.model_space, sample))
        return list(pool.values())

    def _run(self) -> None:
        self._seen.update(sample_key(m.sample) for m in self.engine.list_models() if m.sample is not None)
        submitted_total, empty_rounds = 0, 0
        while self.max_collect is None or submitted_total < self.max_collect:
            if not self.wait_for_resource():
                break
            pool = self._draw_pool()
            if not pool:
                _logger.warning("no unsubmitted sample left in the space; stopping")
                break
            self._round += 1
            goodness, feasible, median = score(
                self.rlm, [g for _, g in pool], self.space_name, self.objective, self.constraints,
                self.num_samples, self.seed + self._round)
            order = [i for i in np.argsort(-goodness, kind="stable") if feasible[i]]
            if not order:
                # Every candidate is predicted over budget: draw again, but not forever.
                empty_rounds += 1
                _logger.warning("round %d: all %d candidates are predicted over budget %s", self._round, len(pool), self.constraints)
                if empty_rounds >= self.max_empty_rounds:
                    _logger.warning("%d rounds without a candidate predicted within budget; stopping", empty_rounds)
                    break
                continue
            empty_rounds = 0
            room = self.batch_size if self.max_collect is None else min(self.batch_size, self.max_collect - submitted_total)
            models = []
            for i in order[:room]:
                if not self.wait_for_resource():
                    break
                sample, _ = pool[i]
                model = self.model_space.freeze(sample)
                self._seen.add(sample_key(sample))
                _logger.info("[round %d] submit (predicted %s %.4g): %s", self._round, self.objective, median[i], sample)
                self.engine.submit_models(model)
                models.append((model, pool[i][1]))
            submitted_total += len(models)
            self.engine.wait_models(*[m for m, _ in models])
            self._learn(models)
        self.engine.wait_models()

    def _learn(self, models: list) -> None:
        """Turn reported metrics into examples and fine-tune the RLM on all of them (time-bounded)."""
        new = []
        for model, genotype in models:
            arch = self._space.format(genotype)
            for metric, value in self._reported(model.metric).items():
                new.append(Example(self.space_name, arch, metric, value))
        self.examples.extend(new)
        if not new or self.finetune_steps <= 0:
            return
        from rlm_nas.finetune import finetune

        start = time.perf_counter()
        finetune(self.rlm, self.examples, steps=self.finetune_steps, max_seconds=self.finetune_seconds,
                 seed=self.seed + self._round)
        _logger.info("[round %d] fine-tuned on %d examples in %.1fs", self._round, len(self.examples), time.perf_counter() - start)

    def _reported(self, metric) -> dict[str, float]:
        """``{metric name: value}`` from what the evaluator reported (see the class docstring)."""
        if metric is None:  # failed or invalid: nothing to learn
            return {}
        if not isinstance(metric, Mapping):
            metric = {"default": metric}
        out = {}
        for key, value in metric.items():
            name = self.objective if key == "default" else key
            # Any metric-named key is learned (fine-tuning adds metrics the RLM lacks); other keys
            # (e.g. "loss") are the evaluator's business.
            if METRIC_RE.match(name) and isinstance(value, (int, float)) and math.isfinite(value):
                out[name] = float(value)
        return out

    def state_dict(self) -> dict:
        return {"seen": sorted(self._seen), "random_state": self._random_state.get_state(), "round": self._round}

    def load_state_dict(self, state_dict: dict) -> None:
        self._seen = set(state_dict["seen"])
        self._random_state.set_state(state_dict["random_state"])
        self._round = state_dict["round"]
