"""Direct ONNX construction, shared by every space's ``to_onnx``.

Why not ``torch.onnx.export``: tracing a network costs ~100x more than writing its graph, and a
surrogate scores thousands of candidates. Spaces instead describe their network here, node by
node, mirroring ``build()``: weights carry the ``state_dict`` key of the parameter they stand for,
so ``to_onnx(g, weights=module)`` reproduces ``module`` in eval mode.

Repeated structure (a cell used many times) goes into an ONNX *local function*, defined once and
called at every use, with the cell's weights passed in as extra inputs. The canonical text then
writes each cell body once, so depth costs one line per cell.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9
FUNCTION_DOMAIN = "local"


@dataclass
class _Scope:
    """Nodes and weights of the main graph or of one function body."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    weights: dict[str, tuple[int, ...]] = field(default_factory=dict)  # name -> shape, in order
    counter: int = 0


@dataclass(frozen=True)
class _Function:
    name: str
    num_inputs: int
    weights: tuple[tuple[str, tuple[int, ...]], ...]  # relative name, shape
    num_outputs: int


class GraphBuilder:
    """Builds one ONNX model; see the module docstring.

    Example::

        gb = GraphBuilder(weights=None)
        x = gb.input("input", (1, 3, 32, 32))
        w = gb.weight("stem.0.weight", (16, 3, 3, 3))
        y = gb.node("Conv", [x, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        model = gb.build({y: (1, 16, 32, 32)})
    """

    def __init__(self, weights: Mapping[str, Any] | None = None):
        if weights is not None and hasattr(weights, "state_dict"):
            weights = weights.state_dict()
        self._values = weights
        self._main = _Scope()
        self._scope = self._main
        self._inputs: list[onnx.ValueInfoProto] = []
        self._functions: dict[Hashable, _Function] = {}
        self._function_protos: list[onnx.FunctionProto] = []
        self._prefix = ""  # weight-name prefix of the function call being defined

    # --- values -------------------------------------------------------------------------------
    def _fresh(self) -> str:
        self._scope.counter += 1
        return f"t{self._scope.counter}"

    def input(self, name: str, shape: Sequence[int]) -> str:
        """A float graph input (the image batch)."""
        self._inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def weight(self, name: str, shape: Sequence[int]) -> str:
        """A parameter tensor, named by its ``state_dict`` key (relative inside a function)."""
        shape = tuple(int(s) for s in shape)
        known = self._scope.weights.get(name)
        if known is not None and known != shape:
            raise ValueError(f"weight {name!r} used with shapes {known} and {shape}")
        self._scope.weights[name] = shape
        return name

    def constant(self, values: Sequence[int] | np.ndarray, dtype=np.int64) -> str:
        """A small constant tensor (e.g. a Reshape target), emitted as a Constant node."""
        arr = np.asarray(values, dtype=dtype)
        return self.node("Constant", [], value=numpy_helper.from_array(arr))

    # --- nodes --------------------------------------------------------------------------------
    def node(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> Any:
        """Append one node; returns its output name (or a tuple of ``n_out`` names)."""
        outs = [self._fresh() for _ in range(n_out)]
        self._scope.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else tuple(outs)

    def call(
        self,
        key: Hashable,
        name: str,
        body: Callable[..., str | Sequence[str]],
        inputs: Sequence[str],
        prefix: str,
    ) -> Any:
        """Call the local function ``key``, defining it from ``body`` on first use.

        ``body(gb, *formal_inputs)`` emits nodes with weights named relative to the module it
        mirrors; at this call those weights become ``prefix + relative_name``. ``key`` must
        capture everything that changes the body, shapes included.
        """
        fn = self._functions.get(key)
        if fn is None:
            fn = self._define(key, name, body, len(inputs))
        actual_weights = [self.weight(prefix + rel, shape) for rel, shape in fn.weights]
        outs = [self._fresh() for _ in range(fn.num_outputs)]
        self._scope.nodes.append(
            helper.make_node(fn.name, list(inputs) + actual_weights, outs, domain=FUNCTION_DOMAIN)
        )
        return outs[0] if fn.num_outputs == 1 else tuple(outs)

    def _define(self, key: Hashable, name: str, body: Callable, num_inputs: int) -> _Function:
        outer, self._scope = self._scope, _Scope()
        try:
            formals = [f"x{i}" for i in range(num_inputs)]
            outs = body(self, *formals)
            outs = [outs] if isinstance(outs, str) else list(outs)
            scope = self._scope
        finally:
            self._scope = outer
        fname = f"{name}_{len(self._functions)}"
        weights = tuple(scope.weights.items())
        self._function_protos.append(
            helper.make_function(
                FUNCTION_DOMAIN,
                fname,
                inputs=formals + [w for w, _ in weights],
                outputs=outs,
                nodes=scope.nodes,
                opset_imports=[helper.make_opsetid("", OPSET)],
            )
        )
        fn = _Function(fname, num_inputs, weights, len(outs))
        self._functions[key] = fn
        return fn

    # --- model --------------------------------------------------------------------------------
    def build(self, outputs: Mapping[str, Sequence[int]], graph_name: str = "network") -> onnx.ModelProto:
        """Finish the model. ``outputs`` maps output value names to their shapes."""
        out_infos = [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in outputs.items()
        ]
        inputs = list(self._inputs)
        initializers = []
        for name, shape in self._main.weights.items():
            if self._values is None:
                inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
                continue
            if name not in self._values:
                raise KeyError(f"weights has no tensor {name!r} (the ONNX graph and build() disagree)")
            arr = self._values[name]
            arr = arr.detach().cpu().numpy() if hasattr(arr, "detach") else np.asarray(arr)
            if tuple(arr.shape) != shape:
                raise ValueError(f"weight {name!r}: ONNX expects shape {shape}, got {tuple(arr.shape)}")
            initializers.append(numpy_helper.from_array(arr.astype(np.float32), name))
        graph = helper.make_graph(self._main.nodes, graph_name, inputs, out_infos, initializer=initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(FUNCTION_DOMAIN, 1)],
            functions=self._function_protos,
            producer_name="search_spaces",
        )
        model.ir_version = IR_VERSION
        return model
