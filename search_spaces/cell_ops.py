"""The networks of the cell spaces, described once and interpreted twice: as torch and as ONNX.

Every operation is a spec built from the primitive layers of :mod:`search_spaces.layers`
(:class:`~search_spaces.layers.ReLU`, :class:`~search_spaces.layers.Conv`, ...) and the
:class:`FactorizedReduce` defined here. Each spec knows how to become a torch module
(``module()``) and how to write itself as ONNX nodes (``emit()``), and :class:`Network` and
:func:`network_onnx` walk the same :class:`~search_spaces.cell.CellPlan` list, so the network that
``build()`` returns and the graph ``to_onnx()`` writes cannot drift apart.

Module names follow NNI 3.0's ``nni/nas/hub/pytorch/nasnet.py`` (itself pycls/DARTS): an op is an
``nn.Sequential`` (a :class:`~search_spaces.layers.Seq`) whose indices are the positions in its
layer list, except that a lone factorized reduce is the module itself (``conv_1``, ``conv_2``,
``bn``). So ``state_dict`` keys are NNI's (``stem.0.weight``,
``stages.1.0.preprocessor.pre0.conv_1.weight``, ``stages.1.0.ops.3.1.6.weight``,
``classifier.weight``) and ONNX weights carry the same names.

This module imports torch; :mod:`search_spaces.cell` imports it only when a network is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.layers import BN, AvgPool, Conv, Linear, MaxPool, ReLU, Seq
from search_spaces.onnx_graph import GraphBuilder

if TYPE_CHECKING:
    import onnx

    from search_spaces.cell import CellPlan


# --- factorized reduce -----------------------------------------------------------------------
class FactorizedReduceModule(nn.Module):
    """DARTS's FactorizedReduce: halve the resolution without dropping every other pixel.

    ReLU, then two 1x1 stride-2 convs, one on the input and one on the input shifted by one pixel
    (zero-padded at the bottom/right), concatenated to ``c_out`` channels, then BN.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        half = Conv(c_in, c_out // 2, 1, stride=2)
        self.relu, self.conv_1, self.conv_2, self.bn = ReLU().module(), half.module(), half.module(), BN(c_out).module()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


@dataclass(frozen=True)
class FactorizedReduce:
    c_in: int
    c_out: int

    def module(self) -> nn.Module:
        return FactorizedReduceModule(self.c_in, self.c_out)

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        x = ReLU().emit(gb, x, prefix + "relu.")
        half = Conv(self.c_in, self.c_out // 2, 1, stride=2)
        a = half.emit(gb, x, prefix + "conv_1.")
        # Shift by one pixel: crop the first row and column, zero-pad one at the end (negative
        # ONNX pads crop), as torch's pad-then-slice.
        shifted = gb.node("Pad", [x, gb.constant([0, 0, -1, -1, 0, 0, 1, 1])])
        b = half.emit(gb, shifted, prefix + "conv_2.")
        return BN(self.c_out).emit(gb, gb.node("Concat", [a, b], axis=1), prefix + "bn.")


# --- operations ------------------------------------------------------------------------------
# An op is a spec: a Seq of primitive layers (the empty Seq is the identity), or a lone
# FactorizedReduce (NNI uses it directly, not in a Sequential, which changes the weight names).
def _sep_conv(c: int, k: int, stride: int, dilation: int = 1) -> Seq:
    """Two stacked (ReLU, depthwise k x k, pointwise 1x1, BN); only the first one strides."""

    def half(s: int) -> tuple[Any, ...]:
        return (ReLU(), Conv(c, c, k, s, groups=c, dilation=dilation), Conv(c, c, 1), BN(c))

    return Seq(half(stride) + half(1))


def _dil_conv(c: int, k: int, stride: int) -> Seq:
    return Seq((ReLU(), Conv(c, c, k, stride, groups=c, dilation=2), Conv(c, c, 1), BN(c)))


def _factorized_conv(c: int, k: int, stride: int) -> Seq:
    """ReLU, 1 x k then k x 1 convolution (each striding along its own axis), BN."""
    return Seq((ReLU(), Conv(c, c, (1, k), (1, stride)), Conv(c, c, (k, 1), (stride, 1)), BN(c)))


#: op name -> spec at ``c`` channels and ``stride`` (2 on ops reading a reduction cell's inputs);
#: every conv has 'same' padding (see :class:`~search_spaces.layers.Conv`), every pool ``k // 2``.
OPS = {
    "skip_connect": lambda c, s: Seq(()) if s == 1 else FactorizedReduce(c, c),
    "avg_pool_3x3": lambda c, s: Seq((AvgPool(3, s, 1),)),
    "max_pool_3x3": lambda c, s: Seq((MaxPool(3, s, 1),)),
    "max_pool_5x5": lambda c, s: Seq((MaxPool(5, s, 2),)),
    "max_pool_7x7": lambda c, s: Seq((MaxPool(7, s, 3),)),
    "conv_1x1": lambda c, s: Seq((ReLU(), Conv(c, c, 1, s), BN(c))),
    "conv_3x3": lambda c, s: Seq((ReLU(), Conv(c, c, 3, s), BN(c))),
    "sep_conv_3x3": lambda c, s: _sep_conv(c, 3, s),
    "sep_conv_5x5": lambda c, s: _sep_conv(c, 5, s),
    "sep_conv_7x7": lambda c, s: _sep_conv(c, 7, s),
    "dil_conv_3x3": lambda c, s: _dil_conv(c, 3, s),
    "dil_conv_5x5": lambda c, s: _dil_conv(c, 5, s),
    "dil_sep_conv_3x3": lambda c, s: _sep_conv(c, 3, s, dilation=2),
    "conv_3x1_1x3": lambda c, s: _factorized_conv(c, 3, s),
    "conv_7x1_1x7": lambda c, s: _factorized_conv(c, 7, s),
}


# --- cells and network -----------------------------------------------------------------------
def stem_spec(width: int) -> Seq:
    """CIFAR stem: 3x3 conv to 3 * width channels, BN."""
    return Seq((Conv(3, 3 * width, 3), BN(3 * width)))


def preprocess_specs(p: CellPlan) -> tuple[Any, Seq]:
    """Bring both cell inputs to ``p.c`` channels and this cell's input resolution.

    After a reduction cell the older input is at twice the resolution, so it is factorized-reduced.
    """
    def relu_conv_bn(c_in: int) -> Seq:
        return Seq((ReLU(), Conv(c_in, p.c, 1), BN(p.c)))

    pre0 = FactorizedReduce(p.c_pp, p.c) if p.reduce_prev else relu_conv_bn(p.c_pp)
    return pre0, relu_conv_bn(p.c_p)


def node_specs(p: CellPlan) -> list[list[tuple[Any, int]]]:
    """Per intermediate node, its two (op spec, input index); in a reduction cell ops reading a
    cell input stride 2."""
    def op(name: str, j: int) -> tuple[Any, int]:
        return OPS[name](p.c, 2 if p.reduce and j < 2 else 1), j

    return [[op(*p.ops[2 * i + k]) for k in range(2)] for i in range(len(p.ops) // 2)]


class Cell(nn.Module):
    """One cell: preprocess both inputs, each node sums two ops of earlier states, concat."""

    def __init__(self, p: CellPlan):
        super().__init__()
        pre0, pre1 = preprocess_specs(p)
        self.preprocessor = nn.ModuleDict({"pre0": pre0.module(), "pre1": pre1.module()})
        nodes = node_specs(p)
        self.ops = nn.ModuleList(nn.ModuleList(spec.module() for spec, _ in node) for node in nodes)
        self.inputs = [[j for _, j in node] for node in nodes]
        self.concat = list(p.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocessor["pre0"](s0), self.preprocessor["pre1"](s1)]
        for ops, (a, b) in zip(self.ops, self.inputs):
            states.append(ops[0](states[a]) + ops[1](states[b]))
        return torch.cat([states[n] for n in self.concat], dim=1)


class Network(nn.Module):
    """CIFAR NetworkCIFAR (DARTS/pycls): stem, three stages of cells, global pool, linear.

    No auxiliary head and no drop path: the measured network at evaluation.
    """

    def __init__(self, plan: Sequence[CellPlan], width: int, num_classes: int):
        super().__init__()
        self.stem = stem_spec(width).module()
        self.stages = nn.ModuleList(nn.ModuleList() for _ in range(3))
        for p in plan:
            self.stages[p.stage].append(Cell(p))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = Linear(plan[-1].c_out, num_classes).module()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for stage in self.stages:
            for cell in stage:
                s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.global_pooling(s1).flatten(1))


def _cell_body(p: CellPlan, gb: GraphBuilder, s0: str, s1: str) -> str:
    """ONNX body of a cell on its preprocessed inputs; weights named relative to the cell."""
    states = [s0, s1]
    for i, node in enumerate(node_specs(p)):
        outs = [spec.emit(gb, states[j], f"ops.{i}.{k}.") for k, (spec, j) in enumerate(node)]
        states.append(gb.node("Add", outs))
    return gb.node("Concat", [states[n] for n in p.concat], axis=1)


def _preprocess_call(gb: GraphBuilder, spec: Any, x: str, prefix: str) -> str:
    """A preprocessing as a local function call; its (hashable) spec is the whole key."""
    return gb.call(("preprocess", spec), "preprocess", lambda g, a: spec.emit(g, a, ""), [x], prefix)


def network_onnx(
    plan: Sequence[CellPlan],
    width: int,
    num_classes: int,
    weights: Mapping[str, torch.Tensor] | nn.Module | None,
    batch_size: int,
) -> onnx.ModelProto:
    """The :class:`Network` of ``plan`` as ONNX; see :meth:`search_spaces.base.Space.to_onnx`.

    Each cell body and each preprocessing is a local function, defined once per distinct key
    and called per cell, so depth adds one call line per function use, not a copy of the cell.
    The body depends only on the cell's ops, concat, reduction and channels (not on where its
    inputs come from: preprocessing is a separate function), which keeps the distinct bodies at
    one per (stage, cell type).
    """
    gb = GraphBuilder(weights)
    x = gb.input("input", (batch_size, 3, 32, 32))
    s0 = s1 = stem_spec(width).emit(gb, x, "stem.")
    for p in plan:
        path = f"stages.{p.stage}.{p.index}."
        pre0, pre1 = preprocess_specs(p)
        t0 = _preprocess_call(gb, pre0, s0, f"{path}preprocessor.pre0.")
        t1 = _preprocess_call(gb, pre1, s1, f"{path}preprocessor.pre1.")
        kind = "reduce" if p.reduce else "normal"
        key = ("cell", kind, p.ops, p.concat, p.c)
        s0, s1 = s1, gb.call(key, f"{kind}_cell", lambda g, a, b, p=p: _cell_body(p, g, a, b), [t0, t1], path)
    pooled = gb.node("Flatten", [gb.node("GlobalAveragePool", [s1])], axis=1)
    logits = Linear(plan[-1].c_out, num_classes).emit(gb, pooled, "classifier.")
    return gb.build({logits: (batch_size, num_classes)})
