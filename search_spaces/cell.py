"""The NDS cell spaces (NASNet, Amoeba, PNAS, ENAS, DARTS) and NAS-Bench-301, as one class.

The five spaces of "On Network Design Spaces for Visual Recognition" differ only in data: the op
list, the nodes per cell and the concat rule (see ``docs/nds-format.md``). A genotype is a normal
and a reduction cell plus the network's width and depth; the network is DARTS/pycls's
NetworkCIFAR, as in NNI 3.0's ``nni.nas.hub.pytorch.nasnet`` (whose sample keys are the Optuna
parameter names here). ``nb301`` is the DARTS cell space at NAS-Bench-301's fixed width and depth,
written as NASLib's ``[[(input, op_index) x 8], [(input, op_index) x 8]]`` string.

The torch network and the ONNX graph are in :mod:`search_spaces.cell_ops` (imported on use, so
parsing and sampling don't need torch).
"""

from __future__ import annotations

import ast
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from search_spaces.base import ParamValue, Space, check_choice
from search_spaces.errors import InvalidGenotype

if TYPE_CHECKING:
    import onnx
    import optuna
    import torch

CELLS = ("normal", "reduce")
WIDTHS = (16, 24, 32)
DEPTHS = (4, 8, 12, 16, 20)

Cell = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class CellGenotype:
    """A cell-space network, as in an NDS record.

    ``normal[2i + k]`` is the ``k``-th ``(op, input)`` of intermediate node ``i + 2``; inputs 0
    and 1 are the outputs of the two previous cells. ``*_concat`` lists the nodes concatenated
    into the cell's output (fixed by the space's concat rule). ``width`` is the channel count of
    the first stage and ``depth`` the total number of cells.
    """

    normal: Cell
    normal_concat: tuple[int, ...]
    reduce: Cell
    reduce_concat: tuple[int, ...]
    width: int
    depth: int


@dataclass(frozen=True)
class CellPlan:
    """One cell of the macro network: what ``build()`` and ``to_onnx()`` both make of it.

    It is module ``stages.{stage}.{index}``; it reads cells with ``c_pp`` and ``c_p`` output
    channels (the older one at twice the resolution when ``reduce_prev``) and works at ``c``
    channels, so it outputs ``c * len(concat)``.
    """

    stage: int
    index: int
    ops: Cell
    concat: tuple[int, ...]
    reduce: bool
    reduce_prev: bool
    c_pp: int
    c_p: int
    c: int

    @property
    def c_out(self) -> int:
        return self.c * len(self.concat)


def macro_plan(g: CellGenotype) -> list[CellPlan]:
    """The cells of NetworkCIFAR for ``g``.

    ``depth`` cells split over three stages as ``(s + 1) * depth // 3 - s * depth // 3`` (so the
    reduction cells, the first of stages 1 and 2, sit at ``depth // 3`` and ``2 * depth // 3`` as
    in DARTS/pycls; NNI splits the same way). Channels double at each reduction; the stem gives
    ``3 * width``.
    """
    plan: list[CellPlan] = []
    c_pp = c_p = 3 * g.width
    c, reduce_prev = g.width, False
    for stage in range(3):
        if stage:
            c *= 2
        for index in range((stage + 1) * g.depth // 3 - stage * g.depth // 3):
            reduce = stage > 0 and index == 0
            ops, concat = (g.reduce, g.reduce_concat) if reduce else (g.normal, g.normal_concat)
            plan.append(CellPlan(stage, index, ops, concat, reduce, reduce_prev, c_pp, c_p, c))
            c_pp, c_p, reduce_prev = c_p, plan[-1].c_out, reduce
    return plan


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class CellSpace(Space[CellGenotype]):
    """A cell space: ``ops`` for each of ``nodes`` intermediate nodes, ``concat`` rule "all" (every
    intermediate node) or "loose_end" (those no other node reads), ``widths`` x ``depths``.

    A width or depth with a single allowed value is fixed: it is no parameter and may be left out
    of the NDS JSON.
    """

    def __init__(
        self,
        name: str,
        ops: tuple[str, ...],
        nodes: int,
        concat: str,
        nni_class: str,
        widths: tuple[int, ...] = WIDTHS,
        depths: tuple[int, ...] = DEPTHS,
    ):
        assert concat in ("all", "loose_end"), concat
        self.name, self.ops, self.nodes, self.concat_rule = name, ops, nodes, concat
        self.nni_class, self.widths, self.depths = nni_class, widths, depths

    # --- membership ---------------------------------------------------------------------------
    def concat(self, cell: Cell) -> tuple[int, ...]:
        """The nodes that the concat rule puts in ``cell``'s output, in node order."""
        nodes = range(2, self.nodes + 2)
        if self.concat_rule == "all":
            return tuple(nodes)
        used = {j for _, j in cell}
        return tuple(n for n in nodes if n not in used)

    def validate(self, genotype: CellGenotype) -> CellGenotype:
        if not isinstance(genotype, CellGenotype):
            raise InvalidGenotype(self.name, "genotype", genotype, "a CellGenotype")
        for cell in CELLS:
            entries = getattr(genotype, cell)
            if not isinstance(entries, tuple):
                raise InvalidGenotype(self.name, cell, _short(entries), "a tuple of (op, input) pairs")
            if len(entries) != 2 * self.nodes:
                raise InvalidGenotype(
                    self.name, f"{cell} entry count", len(entries),
                    f"{2 * self.nodes} (two per node, {self.nodes} nodes)",
                )
            for e, entry in enumerate(entries):
                if not (isinstance(entry, tuple) and len(entry) == 2 and _is_int(entry[1])):
                    raise InvalidGenotype(self.name, f"{cell}[{e}]", entry, "an (op name, input int) pair")
                check_choice(self.name, f"{cell}[{e}] op", entry[0], self.ops)
                # node e // 2 + 2 may read the two cell inputs and the nodes before it
                check_choice(self.name, f"{cell}[{e}] input", entry[1], range(e // 2 + 2))
            expected = self.concat(entries)
            if getattr(genotype, f"{cell}_concat") != expected:
                raise InvalidGenotype(
                    self.name, f"{cell}_concat", getattr(genotype, f"{cell}_concat"),
                    f"{expected} (the {self.concat_rule} rule of this cell)",
                )
        for field, allowed in (("width", self.widths), ("depth", self.depths)):
            value = getattr(genotype, field)
            if not _is_int(value) or value not in allowed:
                raise InvalidGenotype(self.name, field, value, ", ".join(map(str, allowed)))
        return genotype

    def equivalents(self, genotype: CellGenotype, n: int, seed: int = 0) -> list[CellGenotype]:
        """A node sums its two inputs, so swapping them (in any nodes of either cell) leaves the
        network unchanged but reorders its ONNX graph: ``genotype``, then up to ``n - 1`` such
        swaps drawn with ``seed``, all distinct. (Renumbering the nodes in another order their
        inputs allow is a symmetry too, up to a permutation of weights; averaging over it as well
        ranked no better on validation architectures: ``benchmarks/RESULTS.md``.)"""
        g = self.validate(genotype)
        rng = random.Random(seed)
        out, seen = [g], {(g.normal, g.reduce)}
        for _ in range(8 * n):  # random draws: a cell of repeated pairs has few distinct swaps
            if len(out) >= n:
                break
            flips = [rng.random() < 0.5 for _ in range(2 * self.nodes)]  # normal's nodes, then reduce's
            cells = tuple(
                tuple(x for i in range(self.nodes) for x in cell[2 * i : 2 * i + 2][:: -1 if flip[i] else 1])
                for cell, flip in ((g.normal, flips[: self.nodes]), (g.reduce, flips[self.nodes :]))
            )
            if cells not in seen:
                seen.add(cells)
                out.append(replace(g, normal=cells[0], reduce=cells[1]))
        return out

    def size(self) -> int:
        # node i + 2 picks two (op, input) pairs out of len(ops) * (i + 2); two cells
        per_cell = math.prod((len(self.ops) * (i + 2)) ** 2 for i in range(self.nodes))
        return per_cell**2 * len(self.widths) * len(self.depths)

    # --- NDS genotype JSON --------------------------------------------------------------------
    def parse(self, text: str) -> CellGenotype:
        """Parse the NDS genotype JSON (``normal``, ``normal_concat``, ``reduce``,
        ``reduce_concat``, ``width``, ``depth``) on one line."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError) as e:
            raise InvalidGenotype(self.name, "JSON", _short(text), f"an NDS genotype JSON object ({e})") from None
        return self._from_json(data)

    def format(self, genotype: CellGenotype) -> str:
        g = self.validate(genotype)
        return json.dumps({
            "normal": g.normal, "normal_concat": g.normal_concat,
            "reduce": g.reduce, "reduce_concat": g.reduce_concat,
            "width": g.width, "depth": g.depth,
        })

    def _from_json(self, data: Any) -> CellGenotype:
        required = [*CELLS, *(f"{c}_concat" for c in CELLS), *self._macro()]
        allowed = ", ".join([*required[:4], "width", "depth"])
        if not isinstance(data, dict):
            raise InvalidGenotype(self.name, "JSON", _short(data), f"an object with keys {allowed}")
        for key in sorted(data.keys() - {*required, "width", "depth"}):
            raise InvalidGenotype(self.name, "unknown JSON key", key, allowed)
        for key in required:
            if key not in data:
                raise InvalidGenotype(self.name, "missing JSON key", key, f"an object with keys {allowed}")

        def pairs(cell: str) -> Cell:
            value = data[cell]
            if not (isinstance(value, list) and all(isinstance(e, list) and len(e) == 2 for e in value)):
                raise InvalidGenotype(self.name, cell, _short(value), "a list of [op, input] pairs")
            return tuple(tuple(e) for e in value)

        def ints(key: str) -> tuple[int, ...]:
            value = data[key]
            if not (isinstance(value, list) and all(map(_is_int, value))):
                raise InvalidGenotype(self.name, key, _short(value), "a list of node indices")
            return tuple(value)

        return self.validate(CellGenotype(
            normal=pairs("normal"), normal_concat=ints("normal_concat"),
            reduce=pairs("reduce"), reduce_concat=ints("reduce_concat"),
            width=data.get("width", self.widths[0]), depth=data.get("depth", self.depths[0]),
        ))

    # --- parameters ---------------------------------------------------------------------------
    def _macro(self) -> dict[str, tuple[int, ...]]:
        """The free macro parameters (those with more than one allowed value)."""
        return {f: v for f, v in (("width", self.widths), ("depth", self.depths)) if len(v) > 1}

    def _keys(self, cell: str):
        """(entry index, op key, input key) in NNI's naming: entry 2i + k is key (i + 2, k)."""
        for i in range(self.nodes):
            for k in range(2):
                yield 2 * i + k, f"{cell}/op_{i + 2}_{k}", f"{cell}/input_{i + 2}_{k}"

    def distributions(self) -> dict[str, optuna.distributions.CategoricalDistribution]:
        from optuna.distributions import CategoricalDistribution

        dists = {f: CategoricalDistribution(list(v)) for f, v in self._macro().items()}
        for cell in CELLS:
            for e, op_key, input_key in self._keys(cell):
                dists[op_key] = CategoricalDistribution(list(self.ops))
                dists[input_key] = CategoricalDistribution(list(range(e // 2 + 2)))
        return dists

    def to_params(self, genotype: CellGenotype) -> dict[str, ParamValue]:
        g = self.validate(genotype)
        params: dict[str, ParamValue] = {f: getattr(g, f) for f in self._macro()}
        for cell in CELLS:
            for e, op_key, input_key in self._keys(cell):
                params[op_key], params[input_key] = getattr(g, cell)[e]
        return params

    def from_params(self, params: Mapping[str, ParamValue]) -> CellGenotype:
        known = {*self._macro(), *(k for c in CELLS for _, *keys in self._keys(c) for k in keys)}
        for key in params.keys() ^ known:
            field = "unknown param" if key in params else "missing param"
            raise InvalidGenotype(self.name, field, key, "the keys of distributions()")
        cells = {c: tuple((params[o], params[i]) for _, o, i in self._keys(c)) for c in CELLS}
        return self.validate(CellGenotype(
            normal=cells["normal"], normal_concat=self.concat(cells["normal"]),
            reduce=cells["reduce"], reduce_concat=self.concat(cells["reduce"]),
            width=params.get("width", self.widths[0]), depth=params.get("depth", self.depths[0]),
        ))

    # --- NNI 3.0 ------------------------------------------------------------------------------
    def to_nni(self, genotype: CellGenotype) -> dict[str, Any]:
        """The sample that ``nni_model_space().freeze()`` takes for this genotype.

        Same keys and values as :meth:`to_params`, except that an input is a one-element list.
        NNI's ``depth`` is, as here, the total number of cells split over three stages.
        """
        return {k: [v] if "/input_" in k else v for k, v in self.to_params(genotype).items()}

    def from_nni(self, sample: Mapping[str, Any]) -> CellGenotype:
        """Inverse of :meth:`to_nni`; validates."""
        params = {}
        for key, value in sample.items():
            if "/input_" in key:
                if not (isinstance(value, (list, tuple)) and len(value) == 1):
                    raise InvalidGenotype(self.name, key, value, "a one-element list [input]")
                value = value[0]
            params[key] = value
        return self.from_params(params)

    def nni_model_space(self):
        """NNI 3.0's model space of this space (CIFAR, no auxiliary head); needs ``nni``."""
        from nni.nas.hub import pytorch as hub

        def arg(values: tuple[int, ...]):
            return values[0] if len(values) == 1 else values

        return getattr(hub, self.nni_class)(width=arg(self.widths), num_cells=arg(self.depths), dataset="cifar")

    # --- networks -----------------------------------------------------------------------------
    def build(self, genotype: CellGenotype, num_classes: int | None = None) -> torch.nn.Module:
        from search_spaces.cell_ops import Network

        g = self.validate(genotype)
        return Network(macro_plan(g), g.width, self.num_classes if num_classes is None else num_classes)

    def to_onnx(
        self,
        genotype: CellGenotype,
        weights: Mapping[str, torch.Tensor] | torch.nn.Module | None = None,
        batch_size: int = 1,
    ) -> onnx.ModelProto:
        from search_spaces.cell_ops import network_onnx

        g = self.validate(genotype)
        return network_onnx(macro_plan(g), g.width, self.num_classes, weights, batch_size)


class NB301Space(CellSpace):
    """DARTS cells at NAS-Bench-301's fixed width and depth, in NASLib's string form.

    The string is ``[[(input, op_index) x 8] normal, [(input, op_index) x 8] reduce]`` with op
    indices into :attr:`ops` (DARTS's order); :meth:`parse` also takes the NDS genotype JSON.
    """

    def parse(self, text: str) -> CellGenotype:
        if not isinstance(text, str):
            raise InvalidGenotype(self.name, "arch string", _short(text), "a str")
        if text.lstrip().startswith("{"):
            return super().parse(text)
        form = "NASLib's '[[(input, op) x 8], [(input, op) x 8]]' or NDS JSON"
        try:
            arch = ast.literal_eval(text.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise InvalidGenotype(self.name, "arch string", _short(text), form) from None
        if not (isinstance(arch, (list, tuple)) and len(arch) == 2):
            raise InvalidGenotype(self.name, "arch string", _short(text), form)
        cells = []
        for cell, pairs in zip(CELLS, arch):
            if not (isinstance(pairs, (list, tuple))
                    and all(isinstance(p, (list, tuple)) and len(p) == 2 and all(map(_is_int, p)) for p in pairs)):
                raise InvalidGenotype(self.name, cell, _short(pairs), "a list of (input, op index) int pairs")
            for e, (_, op) in enumerate(pairs):
                check_choice(self.name, f"{cell}[{e}] op index", op, range(len(self.ops)))
            cells.append(tuple((self.ops[op], j) for j, op in pairs))
        normal, reduce = cells
        return self.validate(CellGenotype(
            normal, self.concat(normal), reduce, self.concat(reduce), self.widths[0], self.depths[0]
        ))

    def format(self, genotype: CellGenotype) -> str:
        g = self.validate(genotype)
        return str([[(j, self.ops.index(op)) for op, j in cell] for cell in (g.normal, g.reduce)])


def _short(value: Any, limit: int = 80) -> str:
    """``value`` for an error message, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


DARTS_OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5")  # fmt: skip

#: NAS-Bench-301's setting of the DARTS evaluation network (see tests/test_cell_spaces.py, which
#: checks it against the params of the 600 NB301 architectures in the shared data).
NB301_WIDTH, NB301_DEPTH = 32, 8

_SPACES = {
    "nasnet": lambda: CellSpace("nasnet", (
        "skip_connect", "conv_3x1_1x3", "conv_7x1_1x7", "dil_conv_3x3", "avg_pool_3x3", "max_pool_3x3",
        "max_pool_5x5", "max_pool_7x7", "conv_1x1", "conv_3x3", "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7",
    ), 5, "loose_end", "NASNet"),
    "amoeba": lambda: CellSpace("amoeba", (
        "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "avg_pool_3x3", "max_pool_3x3",
        "dil_sep_conv_3x3", "conv_7x1_1x7",
    ), 5, "loose_end", "AmoebaNet"),
    "pnas": lambda: CellSpace("pnas", (
        "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "conv_7x1_1x7", "skip_connect", "avg_pool_3x3",
        "max_pool_3x3", "dil_conv_3x3",
    ), 5, "all", "PNAS"),
    "enas": lambda: CellSpace("enas", (
        "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3",
    ), 5, "loose_end", "ENAS"),
    "darts": lambda: CellSpace("darts", DARTS_OPS, 4, "all", "DARTS"),
    "nb301": lambda: NB301Space("nb301", DARTS_OPS, 4, "all", "DARTS", (NB301_WIDTH,), (NB301_DEPTH,)),
}


def get(name: str) -> CellSpace:
    """The cell space ``name`` (one of nasnet, amoeba, pnas, enas, darts, nb301)."""
    if name not in _SPACES:
        raise ValueError(f"unknown cell space {name!r}; known: {', '.join(_SPACES)}")
    return _SPACES[name]()
