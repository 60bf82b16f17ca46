"""The typed core shared by every part of rlm_nas: what goes in (Example) and what comes out
(Prediction). Kept free of torch so that loaders, samplers and CLIs can import it cheaply."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

#: How ``RLM.predict`` draws its numbers: the model's quantiles at levels (i + 0.5) / k, or
#: ancestral samples. The first is the default.
DRAWS = ("quantiles", "random")
#: Equivalent genotypes read per architecture by the CLIs and benchmarks (``RLM.predict``'s
#: ``equivalents``; it matters in the cell spaces only). Chosen on validation architectures:
#: ``benchmarks/equivalents.py``.
EQUIVALENTS = 8

#: Metric names: ``accuracy:<dataset>``, ``latency:<device>``, ``params``, ``flops``.
METRIC_RE = re.compile(r"^(params|flops|(accuracy|latency):[a-z0-9][a-z0-9_.\-]*)$")


def check_metric(name: str) -> str:
    """Return ``name`` if it is a well-formed metric name, else raise ValueError saying why."""
    if not isinstance(name, str) or not METRIC_RE.match(name):
        raise ValueError(
            f"metric {name!r} is not a valid metric name; expected 'params', 'flops', "
            "'accuracy:<dataset>' or 'latency:<device>' (lower-case letters, digits, '_', '-', '.')"
        )
    return name


@dataclass(frozen=True)
class Example:
    """One measurement: architecture ``arch`` (the space's native string) has ``value`` on ``metric``."""

    space: str
    arch: str
    metric: str
    value: float

    def __post_init__(self):
        check_metric(self.metric)
        if not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise ValueError(f"Example value for {self.space}/{self.metric} must be a finite number, got {self.value!r}")


@dataclass(frozen=True)
class Prediction:
    """Draws of the RLM for ``n`` inputs and ``m`` metrics, with the usual aggregates.

    ``samples`` has shape ``(n, m, k)``: the model's quantiles at levels ``(i + 0.5) / k`` or random
    samples (``RLM.predict(draws=...)``). Aggregates have shape ``(n, m)``; :meth:`column` picks
    one metric. ``extrapolated[j]`` is True when the model had no training data for the
    (space, ``metrics[j]``) pair: the numbers are then a guess, not an estimate.
    """

    metrics: tuple[str, ...]
    samples: np.ndarray
    extrapolated: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if self.extrapolated is None:
            object.__setattr__(self, "extrapolated", np.zeros(len(self.metrics), dtype=bool))

    @property
    def median(self) -> np.ndarray:
        return np.median(self.samples, axis=-1)

    @property
    def mean(self) -> np.ndarray:
        return self.samples.mean(axis=-1)

    # The quantiles are samples themselves ("nearest"), never interpolated: with 8 samples the
    # interpolated p90 takes 30% of the largest, so one sample decoded with a wrong exponent
    # (94.2 read as 2.9e5) would drag the interval to absurd values, and UCB acquisition with it.
    @property
    def p10(self) -> np.ndarray:
        return np.quantile(self.samples, 0.1, axis=-1, method="nearest")

    @property
    def p90(self) -> np.ndarray:
        return np.quantile(self.samples, 0.9, axis=-1, method="nearest")

    def column(self, metric: str) -> dict[str, np.ndarray]:
        """``{"median", "mean", "p10", "p90", "samples"}`` for one metric, each indexed by input."""
        if metric not in self.metrics:
            raise KeyError(f"metric {metric!r} was not predicted; predicted: {', '.join(self.metrics)}")
        j = self.metrics.index(metric)
        return {
            "median": self.median[:, j],
            "mean": self.mean[:, j],
            "p10": self.p10[:, j],
            "p90": self.p90[:, j],
            "samples": self.samples[:, j],
        }
