"""FBNet as measured by HW-NAS-Bench and HELP: 22 searchable layers, nine block choices each.

The network is the CIFAR setting of HW-NAS-Bench (32x32 input, 100 classes); see
``docs/spaces.md``. The native string is the 22 block names joined by commas; :meth:`FBNetSpace.parse`
also reads HELP's ``op_idx_list`` (a JSON list of 22 indices into :data:`BLOCKS`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from search_spaces.base import ParamValue, Space, check_choice
from search_spaces.errors import InvalidGenotype

if TYPE_CHECKING:
    import onnx
    import optuna
    import torch

#: Block names in HELP's ``op_idx_list`` order.
BLOCKS: tuple[str, ...] = ("k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip")
#: (kernel, expansion, groups of the 1x1 convs) of each inverted-residual block.
BLOCK_SHAPES: dict[str, tuple[int, int, int]] = {
    name: (int(name[1]), int(name[4]), 2 if name.endswith("_g2") else 1) for name in BLOCKS if name != "skip"
}

STAGE_DEPTHS = (1, 4, 4, 4, 4, 4, 1)
STAGE_CHANNELS = (16, 24, 32, 64, 112, 184, 352)
STAGE_STRIDES = (1, 1, 2, 2, 1, 2, 1)  # of each stage's first layer (CIFAR setting)
STEM_CHANNELS, HEAD_CHANNELS = 16, 1504
NUM_LAYERS = sum(STAGE_DEPTHS)


def _layer_shapes() -> tuple[tuple[int, int, int], ...]:
    shapes, c_in = [], STEM_CHANNELS
    for c, depth, stride in zip(STAGE_CHANNELS, STAGE_DEPTHS, STAGE_STRIDES):
        for k in range(depth):
            shapes.append((c_in, c, stride if k == 0 else 1))
            c_in = c
    return tuple(shapes)


#: (C_in, C_out, stride) of each searchable layer.
LAYERS = _layer_shapes()
#: Optuna parameter names, zero-padded so that sorting them keeps the layer order.
PARAMS: tuple[str, ...] = tuple(f"layer_{i:02d}" for i in range(NUM_LAYERS))


@dataclass(frozen=True)
class FBNetGenotype:
    """The 22 block names, input to output."""

    blocks: tuple[str, ...]


class FBNetSpace(Space[FBNetGenotype]):
    name = "fbnet"
    num_classes = 100

    def validate(self, genotype: FBNetGenotype) -> FBNetGenotype:
        if not isinstance(genotype, FBNetGenotype):
            raise InvalidGenotype(self.name, "genotype", genotype, "an FBNetGenotype")
        if not isinstance(genotype.blocks, tuple) or len(genotype.blocks) != NUM_LAYERS:
            raise InvalidGenotype(self.name, "blocks", genotype.blocks, f"a tuple of {NUM_LAYERS} block names")
        for i, block in enumerate(genotype.blocks):
            check_choice(self.name, f"layer {i} block", block, BLOCKS)
        return genotype

    def size(self) -> int:
        return len(BLOCKS) ** NUM_LAYERS

    def parse(self, text: str) -> FBNetGenotype:
        """``k3_e6,skip,...`` (22 names) or HELP's ``op_idx_list`` as JSON, e.g. ``[3, 8, ...]``."""
        if not isinstance(text, str):
            allowed = f"{NUM_LAYERS} comma-separated block names or a JSON list of indices"
            raise InvalidGenotype(self.name, "string", text, allowed)
        text = text.strip()
        if text.startswith("["):
            return self._parse_indices(text)
        blocks = tuple(name.strip() for name in text.split(","))
        if len(blocks) != NUM_LAYERS:
            raise InvalidGenotype(self.name, "number of blocks", len(blocks), NUM_LAYERS)
        return self.validate(FBNetGenotype(blocks))

    def _parse_indices(self, text: str) -> FBNetGenotype:
        try:
            indices = json.loads(text)
        except json.JSONDecodeError:
            raise InvalidGenotype(self.name, "op_idx_list", text, f"a JSON list of {NUM_LAYERS} ints") from None
        if not isinstance(indices, list) or len(indices) != NUM_LAYERS:
            raise InvalidGenotype(self.name, "op_idx_list", text, f"a JSON list of {NUM_LAYERS} ints")
        for i, index in enumerate(indices):
            # bool is an int subclass, and JSON's true must not pass as block 1
            if type(index) is not int:
                raise InvalidGenotype(self.name, f"op_idx_list[{i}]", index, f"an int 0..{len(BLOCKS) - 1}")
            check_choice(self.name, f"op_idx_list[{i}]", index, range(len(BLOCKS)))
        return FBNetGenotype(tuple(BLOCKS[i] for i in indices))

    def format(self, genotype: FBNetGenotype) -> str:
        return ",".join(self.validate(genotype).blocks)

    def op_indices(self, genotype: FBNetGenotype) -> list[int]:
        """HELP's ``op_idx_list`` of the genotype."""
        return [BLOCKS.index(b) for b in self.validate(genotype).blocks]

    def distributions(self) -> dict[str, optuna.distributions.CategoricalDistribution]:
        from optuna.distributions import CategoricalDistribution

        return {p: CategoricalDistribution(BLOCKS) for p in PARAMS}

    def to_params(self, genotype: FBNetGenotype) -> dict[str, ParamValue]:
        return dict(zip(PARAMS, self.validate(genotype).blocks))

    def from_params(self, params: Mapping[str, ParamValue]) -> FBNetGenotype:
        if set(params) != set(PARAMS):
            raise InvalidGenotype(self.name, "params keys", sorted(params), ", ".join(PARAMS))
        return self.validate(FBNetGenotype(tuple(params[p] for p in PARAMS)))

    def build(self, genotype: FBNetGenotype, num_classes: int | None = None) -> torch.nn.Module:
        return self._spec(genotype, num_classes).module()

    def to_onnx(
        self, genotype: FBNetGenotype, weights: Mapping[str, Any] | torch.nn.Module | None = None, batch_size: int = 1
    ) -> onnx.ModelProto:
        return self._spec(genotype, None).to_onnx(weights, batch_size, self.input_shape)

    def _spec(self, genotype: FBNetGenotype, num_classes: int | None):
        """The network as a :mod:`search_spaces.layers` spec (the one description of it)."""
        from search_spaces.layers import BN, Conv, Network, ReLU, Seq

        blocks = tuple(_block(name, *layer) for name, layer in zip(self.validate(genotype).blocks, LAYERS))
        return Network(
            stem=Seq((Conv(3, STEM_CHANNELS, 3), BN(STEM_CHANNELS), ReLU())),
            blocks=blocks,
            head=Seq((Conv(STAGE_CHANNELS[-1], HEAD_CHANNELS, 1), BN(HEAD_CHANNELS), ReLU())),
            features=HEAD_CHANNELS,
            num_classes=self.num_classes if num_classes is None else num_classes,
        )


def _block(name: str, c_in: int, c_out: int, stride: int):
    """One searchable layer: FBNet's inverted-residual block ``name``, or ``skip``."""
    from search_spaces.layers import BN, Conv, Identity, ReLU, Residual, Seq, Shuffle

    same_shape = c_in == c_out and stride == 1
    if name == "skip":
        return Identity() if same_shape else Seq((Conv(c_in, c_out, 1, stride), BN(c_out), ReLU()))
    k, e, g = BLOCK_SHAPES[name]
    mid = c_in * e
    layers = (
        (Conv(c_in, mid, 1, groups=g), BN(mid), ReLU())
        + ((Shuffle(g, mid),) if g > 1 else ())
        + (Conv(mid, mid, k, stride, groups=mid), BN(mid), ReLU())  # depthwise
        + (Conv(mid, c_out, 1, groups=g), BN(c_out))  # linear bottleneck: no ReLU
    )
    return Residual(Seq(layers)) if same_shape else Seq(layers)


def get(name: str) -> FBNetSpace:
    """Registry hook (see :func:`search_spaces.get_space`)."""
    return FBNetSpace()
