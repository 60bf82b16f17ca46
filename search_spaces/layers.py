"""Layer descriptions shared by the NB201, FBNet and cell-space builders.

A network is described once, as a tree of small frozen dataclasses ("specs"). Every spec has two
interpreters that walk the same tree:

* ``module()`` builds the PyTorch module;
* ``emit(gb, x, prefix)`` writes the same computation into a
  :class:`~search_spaces.onnx_graph.GraphBuilder`, naming each weight by the ``state_dict`` key
  that ``module()`` gives it (``prefix`` is the key prefix of the spec's module).

So ``build()`` and ``to_onnx()`` cannot drift apart. Specs are hashable and hold every channel
count, kernel and stride, so a cell's or block's spec is also the key of the ONNX local function
that holds its body: two positions share a function exactly when their bodies are identical.

The primitives (:class:`Conv`, :class:`BN`, :class:`ReLU`, the pools, :class:`Linear`, ...) also
serve :mod:`search_spaces.cell_ops`, which adds the DARTS-family ops on top of them.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from search_spaces.onnx_graph import GraphBuilder

BN_EPS = 1e-5  # torch's BatchNorm2d default, which every space uses


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class Conv:
    """Bias-free 2-D convolution.

    ``k``, ``stride`` and ``pad`` are ints (square) or (height, width) pairs; ``pad`` defaults to
    'same' padding, ``dilation * (k - 1) // 2`` per axis (``k // 2`` for an odd undilated
    kernel). They are stored as pairs, so equal convolutions are equal specs however written.
    """

    cin: int
    cout: int
    k: int | tuple[int, int] = 1
    stride: int | tuple[int, int] = 1
    groups: int = 1
    pad: int | tuple[int, int] | None = None
    dilation: int = 1

    def __post_init__(self) -> None:
        k = _pair(self.k)
        pad = tuple(self.dilation * (n - 1) // 2 for n in k) if self.pad is None else _pair(self.pad)
        for name, value in (("k", k), ("stride", _pair(self.stride)), ("pad", pad)):
            object.__setattr__(self, name, value)

    def module(self) -> nn.Module:
        return nn.Conv2d(
            self.cin, self.cout, self.k, self.stride, self.pad, self.dilation, self.groups, bias=False
        )

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        w = gb.weight(prefix + "weight", (self.cout, self.cin // self.groups, *self.k))
        (ph, pw), attrs = self.pad, {}
        if self.dilation != 1:  # ONNX's default is 1: written only where it says something
            attrs["dilations"] = [self.dilation] * 2
        return gb.node(
            "Conv", [x, w], kernel_shape=list(self.k), strides=list(self.stride), pads=[ph, pw, ph, pw],
            group=self.groups, **attrs,
        )


@dataclass(frozen=True)
class BN:
    """``BatchNorm2d(c)`` (affine); in ONNX the inference form with the running statistics."""

    c: int

    def module(self) -> nn.Module:
        return nn.BatchNorm2d(self.c, eps=BN_EPS)

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        params = [gb.weight(prefix + n, (self.c,)) for n in ("weight", "bias", "running_mean", "running_var")]
        return gb.node("BatchNormalization", [x, *params], epsilon=BN_EPS)


@dataclass(frozen=True)
class ReLU:
    def module(self) -> nn.Module:
        return nn.ReLU()

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        return gb.node("Relu", [x])


@dataclass(frozen=True)
class _Pool:
    k: int
    stride: int = 1
    pad: int = 0

    def _attrs(self) -> dict[str, list[int]]:
        return dict(kernel_shape=[self.k] * 2, strides=[self.stride] * 2, pads=[self.pad] * 4)


@dataclass(frozen=True)
class AvgPool(_Pool):
    """``k x k`` average pooling; padding, where there is any, is left out of the average (the
    pool of NB201 and of the DARTS-family cells)."""

    def module(self) -> nn.Module:
        return nn.AvgPool2d(self.k, self.stride, self.pad, count_include_pad=False)

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        return gb.node("AveragePool", [x], count_include_pad=0, **self._attrs())


@dataclass(frozen=True)
class MaxPool(_Pool):
    """``k x k`` max pooling."""

    def module(self) -> nn.Module:
        return nn.MaxPool2d(self.k, self.stride, self.pad)

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        return gb.node("MaxPool", [x], **self._attrs())


@dataclass(frozen=True)
class Linear:
    """``nn.Linear`` (with bias); in ONNX a Gemm."""

    cin: int
    cout: int

    def module(self) -> nn.Module:
        return nn.Linear(self.cin, self.cout)

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        w = gb.weight(prefix + "weight", (self.cout, self.cin))
        b = gb.weight(prefix + "bias", (self.cout,))
        return gb.node("Gemm", [x, w, b], transB=1)


@dataclass(frozen=True)
class Shuffle:
    """Channel shuffle of ``groups`` groups (ShuffleNet's; FBNet's ``_g2`` blocks)."""

    groups: int
    channels: int

    def module(self) -> nn.Module:
        return nn.ChannelShuffle(self.groups)

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        # (N, C, H, W) -> (N, g, C/g, HW) -> swap the two channel axes -> back to x's shape; this
        # is how exporters write it (ONNX has no shuffle op), and it keeps the body size-agnostic.
        t = gb.node("Reshape", [x, gb.constant([0, self.groups, self.channels // self.groups, -1])])
        t = gb.node("Transpose", [t], perm=[0, 2, 1, 3])
        return gb.node("Reshape", [t, gb.node("Shape", [x])])


@dataclass(frozen=True)
class Identity:
    def module(self) -> nn.Module:
        return nn.Identity()

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        return x


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)  # as NAS-Bench-201's `none` op does: a zero tensor of the input's shape


@dataclass(frozen=True)
class Zero:
    """NB201's ``none`` edge: zeros of the input's shape."""

    def module(self) -> nn.Module:
        return _Zero()

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        return gb.node("Mul", [x, gb.constant(0.0, dtype=np.float32)])


@dataclass(frozen=True)
class Seq:
    """Layers applied in order; an ``nn.Sequential``, so the keys are ``<prefix><i>.<name>``."""

    layers: tuple[Any, ...]

    def module(self) -> nn.Module:
        return nn.Sequential(*(layer.module() for layer in self.layers))

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        for i, layer in enumerate(self.layers):
            x = layer.emit(gb, x, f"{prefix}{i}.")
        return x


class _Residual(nn.Module):
    def __init__(self, body: nn.Module, shortcut: nn.Module):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


@dataclass(frozen=True)
class Residual:
    """``body(x) + shortcut(x)``."""

    body: Any
    shortcut: Any = Identity()

    def module(self) -> nn.Module:
        return _Residual(self.body.module(), self.shortcut.module())

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        body, shortcut = self.body.emit(gb, x, prefix + "body."), self.shortcut.emit(gb, x, prefix + "shortcut.")
        return gb.node("Add", [body, shortcut])


class _Cell(nn.Module):
    def __init__(self, routes: tuple[tuple[int, int], ...], edges: list[nn.Module]):
        super().__init__()
        self.routes, self.edges = routes, nn.ModuleList(edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for j in range(1, 1 + max(to for _, to in self.routes)):
            terms = [edge(nodes[i]) for edge, (i, to) in zip(self.edges, self.routes) if to == j]
            nodes.append(functools.reduce(operator.add, terms))
        return nodes[-1]


@dataclass(frozen=True)
class Cell:
    """A DAG cell (NAS-Bench-201's): node j is the sum of ``edge(node i)`` over the edges (i, j, edge)
    into it; node 0 is the input and the last node the output. Every node needs an incoming edge."""

    edges: tuple[tuple[int, int, Any], ...]  # (from node i, into node j, edge spec); keys edges.<k>

    def module(self) -> nn.Module:
        return _Cell(tuple((i, j) for i, j, _ in self.edges), [edge.module() for *_, edge in self.edges])

    def emit(self, gb: GraphBuilder, x: str, prefix: str) -> str:
        nodes = [x]
        for j in range(1, 1 + max(to for _, to, _ in self.edges)):
            terms = [
                edge.emit(gb, nodes[i], f"{prefix}edges.{k}.") for k, (i, to, edge) in enumerate(self.edges) if to == j
            ]
            nodes.append(functools.reduce(lambda a, b: gb.node("Add", [a, b]), terms))
        return nodes[-1]


class _Network(nn.Module):
    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module, features: int, num_classes: int):
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.ModuleList(blocks), head
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = Linear(features, num_classes).module()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.pool(self.head(x)).flatten(1))


@dataclass(frozen=True)
class Network:
    """stem, blocks, head, global average pool, linear classifier: the macro shape of both spaces."""

    stem: Any
    blocks: tuple[Any, ...]
    head: Any
    features: int  # channels entering the classifier
    num_classes: int

    def module(self) -> nn.Module:
        blocks = [block.module() for block in self.blocks]
        return _Network(self.stem.module(), blocks, self.head.module(), self.features, self.num_classes)

    def to_onnx(self, weights: Any, batch_size: int, input_shape: tuple[int, int, int]):
        """The ONNX model; each block is a call of the local function keyed by its spec."""
        gb = GraphBuilder(weights)
        x = self.stem.emit(gb, gb.input("input", (batch_size, *input_shape)), "stem.")
        for i, block in enumerate(self.blocks):
            if isinstance(block, Identity):
                continue  # nothing to compute (and a function cannot return its input unchanged)
            body = functools.partial(_emit_body, block)
            x = gb.call(block, type(block).__name__.lower(), body, [x], prefix=f"blocks.{i}.")
        x = gb.node("Flatten", [gb.node("GlobalAveragePool", [self.head.emit(gb, x, "head.")])], axis=1)
        y = Linear(self.features, self.num_classes).emit(gb, x, "classifier.")
        return gb.build({y: (batch_size, self.num_classes)})


def _emit_body(spec: Any, gb: GraphBuilder, x: str) -> str:
    """A function body: the spec emitted with weight names relative to its own module."""
    return spec.emit(gb, x, "")
