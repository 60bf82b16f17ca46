"""NAS-Bench-201: six cell edges, five ops each, in the CIFAR network that NAS-Bench-201 trained.

The genotype lists the edge ops in the order of the native string
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (the inputs of nodes 1, 2 and 3; ``op~i`` is the op on
the edge from node i). The space holds no data: mapping strings to NAS-Bench-201 indices is the
data loaders' job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from search_spaces.base import ParamValue, Space, check_choice
from search_spaces.errors import InvalidGenotype

if TYPE_CHECKING:
    import onnx
    import optuna
    import torch

OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: (from node i, into node j) of each genotype position, in string order.
EDGES: tuple[tuple[int, int], ...] = tuple((i, j) for j in range(1, 4) for i in range(j))
#: Optuna parameter names, ``edge_<into>_<from>`` like NAS-Bench-201's ``j<-i`` edge keys.
PARAMS: tuple[str, ...] = tuple(f"edge_{j}_{i}" for i, j in EDGES)

STAGE_CHANNELS = (16, 32, 64)
CELLS_PER_STAGE = 5


@dataclass(frozen=True)
class NB201Genotype:
    """The six edge ops, in the order of the native string (edges 0->1, 0->2, 1->2, 0->3, 1->3, 2->3)."""

    ops: tuple[str, ...]


class NB201Space(Space[NB201Genotype]):
    name = "nb201"
    num_classes = 10

    def validate(self, genotype: NB201Genotype) -> NB201Genotype:
        if not isinstance(genotype, NB201Genotype):
            raise InvalidGenotype(self.name, "genotype", genotype, "an NB201Genotype")
        if not isinstance(genotype.ops, tuple) or len(genotype.ops) != len(EDGES):
            raise InvalidGenotype(self.name, "ops", genotype.ops, f"a tuple of {len(EDGES)} op names")
        for op, (i, j) in zip(genotype.ops, EDGES):
            check_choice(self.name, f"edge {i}->{j} op", op, OPS)
        return genotype

    def size(self) -> int:
        return len(OPS) ** len(EDGES)

    def parse(self, text: str) -> NB201Genotype:
        example = "a string like |op~0|+|op~0|op~1|+|op~0|op~1|op~2|"
        if not isinstance(text, str):
            raise InvalidGenotype(self.name, "string", text, example)
        nodes = text.strip().split("+")
        if len(nodes) != 3:
            raise InvalidGenotype(self.name, "string", text, example)
        ops = []
        for j, node in enumerate(nodes, start=1):
            if len(node) < 2 or node[0] != "|" or node[-1] != "|":
                allowed = f"{j} entries '<op>~i' between '|'s"
                raise InvalidGenotype(self.name, f"node {j} inputs", node, allowed)
            entries = node[1:-1].split("|")
            if len(entries) != j:
                raise InvalidGenotype(self.name, f"node {j} input count", len(entries), j)
            for i, entry in enumerate(entries):
                op, sep, source = entry.partition("~")
                if not sep or source != str(i):
                    raise InvalidGenotype(self.name, f"node {j} input {i}", entry, f"'<op>~{i}'")
                ops.append(check_choice(self.name, f"edge {i}->{j} op", op, OPS))
        return NB201Genotype(tuple(ops))

    def format(self, genotype: NB201Genotype) -> str:
        ops = self.validate(genotype).ops
        nodes = ("|" + "|".join(f"{ops[k]}~{i}" for k, (i, to) in enumerate(EDGES) if to == j) + "|" for j in (1, 2, 3))
        return "+".join(nodes)

    def distributions(self) -> dict[str, optuna.distributions.CategoricalDistribution]:
        from optuna.distributions import CategoricalDistribution

        return {p: CategoricalDistribution(OPS) for p in PARAMS}

    def to_params(self, genotype: NB201Genotype) -> dict[str, ParamValue]:
        return dict(zip(PARAMS, self.validate(genotype).ops))

    def from_params(self, params: Mapping[str, ParamValue]) -> NB201Genotype:
        if set(params) != set(PARAMS):
            raise InvalidGenotype(self.name, "params keys", sorted(params), ", ".join(PARAMS))
        return self.validate(NB201Genotype(tuple(params[p] for p in PARAMS)))

    def build(self, genotype: NB201Genotype, num_classes: int | None = None) -> torch.nn.Module:
        return self._spec(genotype, num_classes).module()

    def to_onnx(
        self, genotype: NB201Genotype, weights: Mapping[str, Any] | torch.nn.Module | None = None, batch_size: int = 1
    ) -> onnx.ModelProto:
        return self._spec(genotype, None).to_onnx(weights, batch_size, self.input_shape)

    def _spec(self, genotype: NB201Genotype, num_classes: int | None):
        """The network as a :mod:`search_spaces.layers` spec (the one description of it)."""
        from search_spaces.layers import BN, AvgPool, Cell, Conv, Identity, Network, ReLU, Residual, Seq, Zero

        def relu_conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> tuple:
            return (ReLU(), Conv(c_in, c_out, k, stride), BN(c_out))

        def edge(op: str, c: int):
            return {
                "none": Zero(),
                "skip_connect": Identity(),
                "nor_conv_1x1": Seq(relu_conv_bn(c, c, 1)),
                "nor_conv_3x3": Seq(relu_conv_bn(c, c, 3)),
                "avg_pool_3x3": AvgPool(3, stride=1, pad=1),
            }[op]

        ops = self.validate(genotype).ops
        blocks: list = []
        for c_prev, c in zip((STAGE_CHANNELS[0], *STAGE_CHANNELS), STAGE_CHANNELS):
            if c != c_prev:  # NB201's ResNet basic block, reducing resolution between stages
                body = Seq(relu_conv_bn(c_prev, c, 3, stride=2) + relu_conv_bn(c, c, 3))
                blocks.append(Residual(body, shortcut=Seq((AvgPool(2, stride=2), Conv(c_prev, c, 1)))))
            blocks += [Cell(tuple((i, j, edge(op, c)) for op, (i, j) in zip(ops, EDGES)))] * CELLS_PER_STAGE
        c0, c_last = STAGE_CHANNELS[0], STAGE_CHANNELS[-1]
        return Network(
            stem=Seq((Conv(3, c0, 3), BN(c0))),
            blocks=tuple(blocks),
            head=Seq((BN(c_last), ReLU())),
            features=c_last,
            num_classes=self.num_classes if num_classes is None else num_classes,
        )


def get(name: str) -> NB201Space:
    """Registry hook (see :func:`search_spaces.get_space`)."""
    return NB201Space()
