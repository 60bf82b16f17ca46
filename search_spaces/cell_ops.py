"""The networks of the cell spaces, described once and interpreted twice: as torch and as ONNX.

Every operation is a short list of primitive layers (:class:`ReLU`, :class:`Conv`, :class:`BN`,
:class:`Pool`, :class:`FactorizedReduce`). Each primitive knows how to become a torch module
(``module()``) and how to write itself as ONNX nodes (``emit()``), and :class:`Network` and
:func:`network_onnx` walk the same :class:`~search_spaces.cell.CellPlan` list, so the network that
``build()`` returns and the graph ``to_onnx()`` writes cannot drift apart.

Module names follow NNI 3.0's ``nni/nas/hub/pytorch/nasnet.py`` (itself pycls/DARTS): an op is an
``nn.Sequential`` whose indices are the positions in its layer list, except that a lone
factorized reduce is the module itself (``conv_1``, ``conv_2``, ``bn``). So ``state_dict`` keys
are NNI's (``stem.0.weight``, ``stages.1.0.preprocessor.pre0.conv_1.weight``,
``stages.1.0.ops.3.1.6.weight``, ``classifier.weight``) and ONNX weights carry the same names.

This module imports torch; :mod:`search_spaces.cell` imports it only when a network is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.onnx_graph import GraphBuilder

if TYPE_CHECKING:
    import onnx

    from search_spaces.cell import CellPlan


# --- primitive layers --------------------------------------------------------------------------
@dataclass(frozen=True)
class ReLU:
    def module(self) -> nn.Module:
        return nn.ReLU()

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        return gb.node("Relu", [x])


@dataclass(frozen=True)
class Conv:
    """A bias-free 2-D convolution; 2-tuples are (height, width)."""

    c_in: int
    c_out: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int] = (0, 0)
    dilation: int = 1
    groups: int = 1

    def module(self) -> nn.Module:
        return nn.Conv2d(
            self.c_in, self.c_out, self.kernel, self.stride, self.pad, self.dilation, self.groups, bias=False
        )

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        w = gb.weight(prefix + "weight", (self.c_out, self.c_in // self.groups, *self.kernel))
        ph, pw = self.pad
        return gb.node(
            "Conv", [x, w], kernel_shape=list(self.kernel), strides=list(self.stride),
            pads=[ph, pw, ph, pw], dilations=[self.dilation] * 2, group=self.groups,
        )


def conv(c_in: int, c_out: int, k: int, stride: int = 1, pad: int = 0, dilation: int = 1, groups: int = 1) -> Conv:
    """A square :class:`Conv`."""
    return Conv(c_in, c_out, (k, k), (stride, stride), (pad, pad), dilation, groups)


@dataclass(frozen=True)
class BN:
    """BatchNorm2d with torch's defaults (affine, eps 1e-5); ONNX sees it in eval mode."""

    c: int

    def module(self) -> nn.Module:
        return nn.BatchNorm2d(self.c)

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        stats = [gb.weight(prefix + n, (self.c,)) for n in ("weight", "bias", "running_mean", "running_var")]
        return gb.node("BatchNormalization", [x, *stats], epsilon=1e-5)


@dataclass(frozen=True)
class Pool:
    """``kind`` "max" or "avg" pooling, k x k, padding k // 2; averages exclude the padding."""

    kind: str
    k: int
    stride: int

    def module(self) -> nn.Module:
        if self.kind == "max":
            return nn.MaxPool2d(self.k, self.stride, self.k // 2)
        return nn.AvgPool2d(self.k, self.stride, self.k // 2, count_include_pad=False)

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        attrs = dict(kernel_shape=[self.k] * 2, strides=[self.stride] * 2, pads=[self.k // 2] * 4)
        if self.kind == "max":
            return gb.node("MaxPool", [x], **attrs)
        return gb.node("AveragePool", [x], count_include_pad=0, **attrs)


@dataclass(frozen=True)
class Linear:
    c_in: int
    c_out: int

    def module(self) -> nn.Module:
        return nn.Linear(self.c_in, self.c_out)

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        w = gb.weight(prefix + "weight", (self.c_out, self.c_in))
        b = gb.weight(prefix + "bias", (self.c_out,))
        return gb.node("Gemm", [x, w, b], transB=1)


class FactorizedReduceModule(nn.Module):
    """DARTS's FactorizedReduce: halve the resolution without dropping every other pixel.

    ReLU, then two 1x1 stride-2 convs, one on the input and one on the input shifted by one pixel
    (zero-padded at the bottom/right), concatenated to ``c_out`` channels, then BN.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.relu = nn.ReLU()
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

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
        x = gb.node("Relu", [x])
        half = conv(self.c_in, self.c_out // 2, 1, stride=2)
        a = half.emit(gb, x, prefix + "conv_1.")
        # Shift by one pixel: crop the first row and column, zero-pad one at the end (negative
        # ONNX pads crop), as torch's pad-then-slice.
        shifted = gb.node("Pad", [x, gb.constant([0, 0, -1, -1, 0, 0, 1, 1])])
        b = half.emit(gb, shifted, prefix + "conv_2.")
        return BN(self.c_out).emit(gb, gb.node("Concat", [a, b], axis=1), prefix + "bn.")


Layer = ReLU | Conv | BN | Pool | Linear | FactorizedReduce


# --- operations ------------------------------------------------------------------------------
def _sep_conv(c: int, k: int, stride: int, dilation: int = 1) -> list[Layer]:
    """Two stacked (ReLU, depthwise k x k, pointwise 1x1, BN); only the first one strides."""
    pad = dilation * (k - 1) // 2

    def half(s: int) -> list[Layer]:
        return [ReLU(), conv(c, c, k, s, pad, dilation, groups=c), conv(c, c, 1), BN(c)]

    return half(stride) + half(1)


def _dil_conv(c: int, k: int, stride: int) -> list[Layer]:
    return [ReLU(), conv(c, c, k, stride, k - 1, dilation=2, groups=c), conv(c, c, 1), BN(c)]


def _factorized_conv(c: int, k: int, stride: int) -> list[Layer]:
    """ReLU, 1 x k then k x 1 convolution (each striding along its own axis), BN."""
    p = k // 2
    return [ReLU(), Conv(c, c, (1, k), (1, stride), (0, p)), Conv(c, c, (k, 1), (stride, 1), (p, 0)), BN(c)]


#: op name -> layers at ``c`` channels and ``stride`` (2 on ops reading a reduction cell's inputs).
OPS = {
    "skip_connect": lambda c, s: [] if s == 1 else [FactorizedReduce(c, c)],
    "avg_pool_3x3": lambda c, s: [Pool("avg", 3, s)],
    "max_pool_3x3": lambda c, s: [Pool("max", 3, s)],
    "max_pool_5x5": lambda c, s: [Pool("max", 5, s)],
    "max_pool_7x7": lambda c, s: [Pool("max", 7, s)],
    "conv_1x1": lambda c, s: [ReLU(), conv(c, c, 1, s), BN(c)],
    "conv_3x3": lambda c, s: [ReLU(), conv(c, c, 3, s, 1), BN(c)],
    "sep_conv_3x3": lambda c, s: _sep_conv(c, 3, s),
    "sep_conv_5x5": lambda c, s: _sep_conv(c, 5, s),
    "sep_conv_7x7": lambda c, s: _sep_conv(c, 7, s),
    "dil_conv_3x3": lambda c, s: _dil_conv(c, 3, s),
    "dil_conv_5x5": lambda c, s: _dil_conv(c, 5, s),
    "dil_sep_conv_3x3": lambda c, s: _sep_conv(c, 3, s, dilation=2),
    "conv_3x1_1x3": lambda c, s: _factorized_conv(c, 3, s),
    "conv_7x1_1x7": lambda c, s: _factorized_conv(c, 7, s),
}


def _is_lone_reduce(layers: Sequence[Layer]) -> bool:
    # NNI uses FactorizedReduce directly (not in a Sequential), which changes the weight names.
    return len(layers) == 1 and isinstance(layers[0], FactorizedReduce)


def to_module(layers: Sequence[Layer]) -> nn.Module:
    """The torch module of a layer list (an empty list is the identity)."""
    if _is_lone_reduce(layers):
        return layers[0].module()
    return nn.Sequential(*(layer.module() for layer in layers))


def emit(gb: GraphBuilder, layers: Sequence[Layer], x: str, prefix: str) -> str:
    """ONNX nodes of a layer list, weights named as in :func:`to_module` under ``prefix``."""
    if _is_lone_reduce(layers):
        return layers[0].emit(gb, x, prefix)
    for i, layer in enumerate(layers):
        x = layer.emit(gb, x, f"{prefix}{i}.")
    return x


# --- cells and network -----------------------------------------------------------------------
def stem_layers(width: int) -> list[Layer]:
    """CIFAR stem: 3x3 conv to 3 * width channels, BN."""
    return [conv(3, 3 * width, 3, pad=1), BN(3 * width)]


def preprocess_layers(p: CellPlan) -> tuple[list[Layer], list[Layer]]:
    """Bring both cell inputs to ``p.c`` channels and this cell's input resolution.

    After a reduction cell the older input is at twice the resolution, so it is factorized-reduced.
    """
    def relu_conv_bn(c_in: int) -> list[Layer]:
        return [ReLU(), conv(c_in, p.c, 1), BN(p.c)]

    pre0 = [FactorizedReduce(p.c_pp, p.c)] if p.reduce_prev else relu_conv_bn(p.c_pp)
    return pre0, relu_conv_bn(p.c_p)


def node_layers(p: CellPlan) -> list[list[tuple[list[Layer], int]]]:
    """Per intermediate node, its two (layers, input index); in a reduction cell ops reading a
    cell input stride 2."""
    def op(name: str, j: int) -> tuple[list[Layer], int]:
        return OPS[name](p.c, 2 if p.reduce and j < 2 else 1), j

    return [[op(*p.ops[2 * i + k]) for k in range(2)] for i in range(len(p.ops) // 2)]


class Cell(nn.Module):
    """One cell: preprocess both inputs, each node sums two ops of earlier states, concat."""

    def __init__(self, p: CellPlan):
        super().__init__()
        pre0, pre1 = preprocess_layers(p)
        self.preprocessor = nn.ModuleDict({"pre0": to_module(pre0), "pre1": to_module(pre1)})
        nodes = node_layers(p)
        self.ops = nn.ModuleList(nn.ModuleList(to_module(layers) for layers, _ in node) for node in nodes)
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
        self.stem = to_module(stem_layers(width))
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
    for i, node in enumerate(node_layers(p)):
        outs = [emit(gb, layers, states[j], f"ops.{i}.{k}.") for k, (layers, j) in enumerate(node)]
        states.append(gb.node("Add", outs))
    return gb.node("Concat", [states[n] for n in p.concat], axis=1)


def _preprocess_call(gb: GraphBuilder, layers: Sequence[Layer], x: str, prefix: str) -> str:
    """A preprocessing as a local function call; its (hashable) layers are the whole key."""
    layers = tuple(layers)
    return gb.call(("preprocess", layers), "preprocess", lambda g, a: emit(g, layers, a, ""), [x], prefix)


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
    s0 = s1 = emit(gb, stem_layers(width), x, "stem.")
    for p in plan:
        path = f"stages.{p.stage}.{p.index}."
        pre0, pre1 = preprocess_layers(p)
        t0 = _preprocess_call(gb, pre0, s0, f"{path}preprocessor.pre0.")
        t1 = _preprocess_call(gb, pre1, s1, f"{path}preprocessor.pre1.")
        kind = "reduce" if p.reduce else "normal"
        key = ("cell", kind, p.ops, p.concat, p.c)
        s0, s1 = s1, gb.call(key, f"{kind}_cell", lambda g, a, b, p=p: _cell_body(p, g, a, b), [t0, t1], path)
    pooled = gb.node("Flatten", [gb.node("GlobalAveragePool", [s1])], axis=1)
    logits = Linear(plan[-1].c_out, num_classes).emit(gb, pooled, "classifier.")
    return gb.build({logits: (batch_size, num_classes)})
