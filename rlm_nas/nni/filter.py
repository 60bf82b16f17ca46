"""An RLM filter for NNI's ``Filter`` middleware: reject candidates before they are trained.

NNI's :class:`~nni.nas.strategy.Filter` calls its function with each submitted *model* (an
``ExecutableModelSpace``), so the filter reads the sample from ``model.sample``, converts it to
our genotype and asks the RLM.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from nni.nas.space import ExecutableModelSpace

from rlm_nas.nni.strategy import check_targets, detect_space, goal_sign, load_rlm, nni_genotype, random_sample, score

_logger = logging.getLogger(__name__)


class RLMFilter:
    """Callable ``model -> bool`` for ``nni.nas.strategy.Filter``: False rejects the model.

    A model is rejected when any constrained metric is predicted over its budget, or when the
    predicted objective is worse than ``threshold`` (a value in the objective's units: a minimum
    for accuracy, a maximum for latency/params/flops) or worse than the ``quantile``-quantile of
    the predictions for ``reference_size`` random samples of the same space (``quantile=0.5``
    passes the predicted better half). Predictions are medians over ``num_samples`` RLM samples.

    Args:
        rlm: an RLM, or a checkpoint path / ``"default"`` for ``RLM.from_pretrained``.
        objective: the metric that ``threshold``/``quantile`` apply to.
        threshold, quantile: at most one of them; neither means only the constraints filter.
        constraints: ``{metric: budget}`` upper bounds, e.g. ``{"latency:pixel3": 20.0}``.
        space: our space name; detected from the first model when None.

    Counters :attr:`accepted` and :attr:`rejected` say what it did.

    Example::

        from nni.nas.strategy import Chain, Filter, RegularizedEvolution

        strategy = Chain(
            RegularizedEvolution(population_size=20, sample_size=5),
            Filter(rlm_filter(rlm, objective="accuracy:cifar10", quantile=0.5,
                              constraints={"latency:pixel3": 20.0})),
        )
    """

    def __init__(self, rlm="default", *, objective: str = "accuracy:cifar10", threshold: float | None = None,
                 quantile: float | None = None, constraints: Mapping[str, float] | None = None,
                 space: str | None = None, reference_size: int = 64, num_samples: int = 8, seed: int = 0):
        if threshold is not None and quantile is not None:
            raise ValueError("give threshold or quantile, not both")
        if quantile is not None and not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile!r}")
        self.rlm = load_rlm(rlm)
        self.objective = objective
        self.constraints = check_targets(self.rlm, objective, constraints or {})
        self.threshold, self.quantile = threshold, quantile
        self.space_name = space
        self.reference_size, self.num_samples, self.seed = reference_size, num_samples, seed
        self.accepted = self.rejected = 0
        self._space = None

    def __repr__(self) -> str:
        return f"RLMFilter(objective={self.objective!r}, threshold={self.threshold}, quantile={self.quantile}, " \
               f"constraints={self.constraints})"

    def _bind(self, model: ExecutableModelSpace) -> None:
        """On the first model: find the space and, for ``quantile``, the threshold it means."""
        from search_spaces import get_space

        self.space_name = self.space_name or detect_space(model)
        self._space = get_space(self.space_name)
        if self.quantile is None:
            return
        # The reference: random samples of the same NNI space (the frozen model still knows its
        # mutables), so the quantile means "better than that share of the space".
        mutables, rs = model.simplify(), np.random.RandomState(self.seed)
        genotypes = [nni_genotype(self._space, model, random_sample(mutables, rs)) for _ in range(self.reference_size)]
        goodness, _, _ = score(self.rlm, genotypes, self.space_name, self.objective, {}, self.num_samples, self.seed)
        self.threshold = goal_sign(self.objective) * float(np.quantile(goodness, self.quantile))
        _logger.info("RLM filter: quantile %.2f of %s over %d random samples is %.4g",
                     self.quantile, self.objective, self.reference_size, self.threshold)

    def __call__(self, model: ExecutableModelSpace) -> bool:
        if self._space is None:
            self._bind(model)
        genotype = nni_genotype(self._space, model)
        goodness, feasible, median = score(self.rlm, [genotype], self.space_name, self.objective,
                                           self.constraints, self.num_samples, self.seed)
        ok = bool(feasible[0])
        if ok and self.threshold is not None:
            ok = goodness[0] >= goal_sign(self.objective) * self.threshold
        self.accepted += ok
        self.rejected += not ok
        _logger.debug("RLM filter %s (predicted %s %.4g): %s", "accepts" if ok else "rejects",
                      self.objective, median[0], model.sample)
        return ok


#: ``Filter(rlm_filter(...))`` reads as what it does.
rlm_filter = RLMFilter
