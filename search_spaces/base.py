"""The typed interface that every search space implements.

A space is a set of genotypes (frozen dataclasses) with: a seeded sampler, one-edit mutation,
validation, the native string form, Optuna and one-hot encodings, the PyTorch network that was
measured, and a direct ONNX export. Subclasses implement the abstract methods; everything else
here is derived from them, so it is written once.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from search_spaces.errors import InvalidGenotype

if TYPE_CHECKING:  # heavy imports stay out of `import search_spaces`
    import onnx
    import optuna
    import torch

G = TypeVar("G")

#: Optuna parameter values are kept to plain JSON types so every storage round-trips them.
ParamValue = int | str


class Space(abc.ABC, Generic[G]):
    """A search space. See the module docstring; subclasses fill in the abstract methods."""

    #: Registry name, e.g. ``"darts"``; it is also the ``{space}`` line of the RLM input.
    name: str
    #: Shape of one input image (C, H, W) of the measured networks.
    input_shape: tuple[int, int, int] = (3, 32, 32)
    #: Number of classes of the measured networks.
    num_classes: int = 10

    # --- membership ---------------------------------------------------------------------------
    @abc.abstractmethod
    def validate(self, genotype: G) -> G:
        """Return ``genotype`` unchanged if it is in the space, else raise :class:`InvalidGenotype`."""

    @abc.abstractmethod
    def size(self) -> int:
        """Number of distinct genotypes (exact; it may be a very large int)."""

    # --- native string form --------------------------------------------------------------------
    @abc.abstractmethod
    def parse(self, text: str) -> G:
        """Parse the native string form; raise :class:`InvalidGenotype` on anything malformed."""

    @abc.abstractmethod
    def format(self, genotype: G) -> str:
        """The native string form (one line). ``parse(format(g)) == g``."""

    # --- parameters (Optuna, one-hot, sampling) ------------------------------------------------
    @abc.abstractmethod
    def distributions(self) -> dict[str, "optuna.distributions.CategoricalDistribution"]:
        """One categorical distribution per free parameter, with plain ``int``/``str`` choices."""

    @abc.abstractmethod
    def to_params(self, genotype: G) -> dict[str, ParamValue]:
        """The genotype as a flat ``{param: choice}`` dict over :meth:`distributions`."""

    @abc.abstractmethod
    def from_params(self, params: Mapping[str, ParamValue]) -> G:
        """Inverse of :meth:`to_params`; validates."""

    # --- networks -----------------------------------------------------------------------------
    @abc.abstractmethod
    def build(self, genotype: G, num_classes: int | None = None) -> "torch.nn.Module":
        """The PyTorch network that was measured (default ``num_classes``: :attr:`num_classes`)."""

    @abc.abstractmethod
    def to_onnx(
        self,
        genotype: G,
        weights: "Mapping[str, torch.Tensor] | torch.nn.Module | None" = None,
        batch_size: int = 1,
    ) -> "onnx.ModelProto":
        """The network as ONNX, built directly from the genotype (no tracing).

        Weight tensors are named after ``build(genotype).state_dict()`` keys. With ``weights``
        they become initializers holding those values (so ONNX Runtime reproduces ``build()`` in
        eval mode); without, they are graph inputs that carry only their shapes, which is all
        the canonical text needs and keeps export fast.
        """

    # --- derived ------------------------------------------------------------------------------
    def sample(self, n: int, seed: int | None = None) -> list[G]:
        """``n`` genotypes drawn uniformly over :meth:`distributions` (resampled until valid)."""
        rng = random.Random(seed)
        dists = self.distributions()
        out: list[G] = []
        while len(out) < n:
            params = {k: rng.choice(d.choices) for k, d in dists.items()}
            try:
                out.append(self.from_params(params))
            except InvalidGenotype:
                continue  # e.g. a cell whose choices leave it disconnected; draw again
        return out

    def mutate(self, genotype: G, seed: int | None = None) -> G:
        """One local edit: a single parameter changed to another valid choice."""
        rng = random.Random(seed)
        params = self.to_params(self.validate(genotype))
        dists = self.distributions()
        keys = [k for k, d in dists.items() if len(d.choices) > 1]
        for _ in range(1000):
            key = rng.choice(keys)
            params2 = dict(params)
            params2[key] = rng.choice([c for c in dists[key].choices if c != params[key]])
            try:
                return self.from_params(params2)
            except InvalidGenotype:
                continue
        raise RuntimeError(f"{self.name}: found no valid one-edit mutation of {self.format(genotype)}")

    def suggest(self, trial: "optuna.trial.BaseTrial") -> G:
        """Ask an Optuna trial for every parameter and return the genotype."""
        params = {k: trial.suggest_categorical(k, d.choices) for k, d in self.distributions().items()}
        return self.from_params(params)

    def equivalents(self, genotype: G, n: int, seed: int = 0) -> list[G]:
        """``genotype`` first, then up to ``n - 1`` other genotypes of the same network (fewer if
        there are none). Their texts differ, so the RLM can average over them (``RLM.predict``'s
        ``equivalents``). By default a space has no such symmetry: ``[genotype]``."""
        return [self.validate(genotype)]

    def one_hot(self, genotype: G) -> np.ndarray:
        """Concatenated one-hot encoding of :meth:`to_params` (the classic baseline's features)."""
        params = self.to_params(genotype)
        parts = []
        for key, dist in self.distributions().items():
            v = np.zeros(len(dist.choices), dtype=np.float32)
            v[dist.choices.index(params[key])] = 1.0
            parts.append(v)
        return np.concatenate(parts)

    def to_text(self, genotype: G) -> str:
        """Canonical ONNX text of the genotype's network (what the RLM reads)."""
        from search_spaces.text import onnx_to_text

        return onnx_to_text(self.to_onnx(genotype))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_choice(space: str, field: str, value: Any, allowed: list | tuple | range) -> Any:
    """Raise :class:`InvalidGenotype` unless ``value`` is one of ``allowed``; return it."""
    if value not in allowed:
        shown = ", ".join(map(str, allowed)) if not isinstance(allowed, range) else f"{allowed.start}..{allowed.stop - 1}"
        raise InvalidGenotype(space, field, value, shown)
    return value
