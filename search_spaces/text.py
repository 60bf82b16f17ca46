"""Canonical text of any ONNX model: the input the regression language model reads.

The text keeps what drives accuracy and latency (operators, attributes, tensor shapes, topology)
and drops what does not (names, weight values). It is canonical: renaming every tensor, node or
function, or storing independent branches in another order, gives byte-identical text, because
values are numbered in a topological order whose tie-breaks hash only structure. It is compact
(one short line per node) and repetition-aware: each distinct ONNX local function body is written
once and every call to it is one line, so a network's depth costs about one line per cell.

Format
------
A block per distinct function body, ``F0``, ``F1``, ... in order of first use, then ``main``. A
block is a header ``NAME: SHAPE ...`` (shapes of its data inputs), one line per node, and a final
``out`` line listing the block's outputs. A node line is::

    OP [ATTR ...] [INPUT ...] [> SHAPE ...]

* ``OP``: the operator type (``BN`` = BatchNormalization, ``GAP`` = GlobalAveragePool, ``F3`` =
  call of function block F3; other domains are written ``domain.Op``).
* ``ATTR``: attributes that differ from the ONNX default, ``k`` kernel_shape, ``s`` strides, ``p``
  pads, ``d`` dilations, ``g`` group, ``a`` axis written glued (``k3 s2 p1``), others as
  ``name=value``. A list whose entries are all equal is written once (``p1`` = pads 1,1,1,1).
* ``INPUT``, in input order: an integer ``n`` is the value produced ``n`` values before this
  node's first output (``1`` = the previous value; a block's data inputs are its first values).
  The usual case, a node whose only data input is its first input and the previous value,
  writes no number; a node without any data input writes ``-``. Weights: required weights of
  Conv, ConvTranspose, Gemm, MatMul and the normalisations are not written (their shapes
  follow from attributes and shapes), a bias is ``w``, any other weight ``wSHAPE``. ``c...``
  is a small integer or scalar constant with its values (``c[1,-1]``, ``c0.5``; ``max`` and
  ``min`` stand for the int64 limits, as in Slice ends), ``_`` a
  missing optional input. A call lists only its data inputs; the weights it passes are those
  of the function body.
* ``const``: a node all of whose outputs are the same for every network input starts with
  ``const``: a product with a constant zero (NB201's ``none`` op) and whatever is computed only
  from such values, through function calls too (a cell whose every path from its input passes a
  zero, and everything after it). The network still computes these nodes, so their lines stay
  (they cost time), but they carry nothing of the input: a network whose output is ``const``
  predicts the same class for every image, and a cell whose convolutions only see zeros is, for
  accuracy, a cell without them.
* ``dead``: a node whose outputs never reach the block's outputs starts with ``dead`` (unless it
  is ``const``): nothing uses them, or only products with a constant zero and other dead nodes
  do. Examples: an NB201 node whose every outgoing edge is ``none``, everything before a cell
  whose output is ``const``, and a cell's preprocessing of an input its genotype never reads.
  PyTorch still computes them, but runtimes that remove dead code skip their cost (HW-NAS-Bench's
  Pixel 3 and Raspberry Pi 4 timings of NB201 cells with dead nodes are a fraction of those
  without). Within a function body the mark is relative to the body's outputs.
* ``mN``: multiply-accumulates of a Conv or Gemm at batch 1, to two significant digits
  (``m790k``, ``m1.2M``): a node's cost without multiplying its shapes out. Latency is close to
  a sum of such costs on many devices, and a small model reads a number more easily than it
  learns the product of a kernel, two shapes and a group. A block's ``out`` line carries the
  block's total, calls included, to three significant digits (``out m51.2M`` ends ``main``): a
  latency that is a sum of layer costs is then one number to read, not 60 to add up.
* ``> SHAPE``: output shapes, omitted when a single output has the type of the first data input.
  The batch (leading) dimension of every tensor of rank >= 2 is dropped; an unknown dimension
  is ``?``; a type other than float32 is appended as ``:i64``, ``:f16``, ...

Example: a stem, two calls of a residual block function (ReLU, depthwise 3x3, pointwise 1x1,
BN, add), pooling and a classifier::

    F0: 8x32x32
    Relu
    Conv k3 p1 g8 m74k
    Conv k1 m66k
    BN
    Add 1 5
    out m139k
    main: 3x32x32
    Conv k3 p1 m220k > 8x32x32
    F0
    F0
    MaxPool k2 s2 > 8x16x16
    GAP > 8x1x1
    Flatten > 8
    Gemm transB=1 m80 w > 10
    out m500k

Shapes inside a function body come from ONNX shape inference on the body with the input types of
the call (``onnx.shape_inference`` does not fill function bodies itself); a function called with
different input types is written once per distinct body text. Inference propagates the values of
shape computations (``data_prop``): a body that reshapes back to ``Shape(x)`` (FBNet's channel
shuffle) keeps its static shape instead of printing ``?`` for every layer after it.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, helper, numpy_helper, shape_inference

# Bumped whenever the same network's text changes. A checkpoint records the version it was trained
# on, and loading it under another version warns: a model reading marks it never saw is still a
# model, but its predictions are off until it is fine-tuned or retrained.
# 1: const and dead marks (checkpoints without a recorded version are read as 1).
# 2: Conv and Gemm lines carry their multiply-accumulates (``mN``).
# 3: ``out`` lines carry their block's total multiply-accumulates.
TEXT_VERSION = 3

#: Type of a value: (ONNX elem_type, dims), dims None when the rank is unknown, a dim None when unknown.
_Type = tuple[int, "tuple[int | None, ...] | None"]

_OP_ABBREV = {
    "BatchNormalization": "BN",
    "GlobalAveragePool": "GAP",
    "GlobalMaxPool": "GMP",
    "InstanceNormalization": "IN",
    "LayerNormalization": "LN",
    "GroupNormalization": "GN",
}
_ATTR_ABBREV = {"kernel_shape": "k", "strides": "s", "pads": "p", "dilations": "d", "group": "g", "axis": "a"}
#: Attributes without a schema default whose implicit value is all ones / all zeros.
_IMPLICIT_DEFAULTS = {"strides": "1", "dilations": "1", "pads": "0"}
#: Weights that need no token: required inputs whose shape follows from attributes and shapes.
_OMITTED_WEIGHTS = {
    "Conv": {1},
    "ConvTranspose": {1},
    "BatchNormalization": {1, 2, 3, 4},
    "InstanceNormalization": {1, 2},
    "LayerNormalization": {1},
    "GroupNormalization": {1, 2},
    "Gemm": {1},
    "MatMul": {0, 1},
}
#: Optional weights (biases) written as a bare ``w``: present or not, their shape is implied.
_BIASES = {"Conv": {2}, "ConvTranspose": {2}, "LayerNormalization": {2}, "Gemm": {2}}
#: Constants printed with their values: integer/bool tensors up to this many elements (shape
#: targets, axes, pads) and scalars of any type. Anything larger is printed like a weight.
_MAX_LITERAL = 16
_CALL = "\x01"  # brackets a function body's hash in a line until blocks are numbered
_CALL_RE = re.compile(f"{_CALL}([0-9a-f]+){_CALL}")


def onnx_to_text(model: "onnx.ModelProto | bytes | str | os.PathLike") -> str:
    """Canonical text of an ONNX model (a ``ModelProto``, its serialized bytes, or a file path).

    See the module docstring for the format. Raises ``ValueError`` when the input is not a
    readable ONNX model and ``TypeError`` when it is none of the accepted types.
    """
    return _Renderer(_load(model)).render()


# --- loading ---------------------------------------------------------------------------------
def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, (bytes, bytearray, memoryview)):
        proto = _parse(bytes(model), "the given bytes")
    elif isinstance(model, (str, os.PathLike)):
        try:
            with open(model, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ValueError(f"cannot read ONNX file {os.fspath(model)!r}: {e.strerror or e}") from None
        proto = _parse(data, f"file {os.fspath(model)!r}")
    else:
        raise TypeError(f"model must be an onnx.ModelProto, bytes or a file path; got {type(model).__name__}")
    if not proto.HasField("graph") or not proto.graph.node:
        raise ValueError("not an ONNX model: it has no graph nodes")
    return proto


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    try:
        return onnx.ModelProto.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ValueError(f"not an ONNX model: cannot parse {what} as onnx.ModelProto ({e})") from None


# --- small formatters ------------------------------------------------------------------------
def _hash(text: str) -> str:
    # Python's hash() is salted per process; the text must be the same in every process.
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@functools.lru_cache(maxsize=65536)
def _type_of_bytes(data: bytes) -> _Type:
    # The same few types recur in every network; their bytes are a cheap cache key.
    return _type_of(onnx.TypeProto.FromString(data))


def _type_of(tp: onnx.TypeProto) -> _Type:
    if not tp.HasField("tensor_type"):
        return (0, None)
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return (tt.elem_type, None)
    return (tt.elem_type, tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim))


@functools.lru_cache(maxsize=65536)
def _fmt_type(t: _Type | None, drop_batch: bool = True) -> str:
    elem, dims = t if t is not None else (0, None)
    if dims is None:
        text = "?"
    else:
        if drop_batch and len(dims) >= 2:
            dims = dims[1:]
        text = "x".join("?" if d is None else str(d) for d in dims) or "()"
    if elem not in (0, onnx.TensorProto.FLOAT):
        dt = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
        text += f":{dt.kind}{dt.itemsize * 8}"
    return text


_INT64_MAX, _INT64_MIN = 2**63 - 1, -(2**63)


def _fmt_number(v) -> str:
    if isinstance(v, (float, np.floating)):
        return format(float(v), ".6g")
    v = int(v)
    # Slice ends "to the end" are INT64_MAX in exported graphs: 19 digits that say "max".
    return "max" if v == _INT64_MAX else "min" if v == _INT64_MIN else str(v)


def _fmt_values(values: Sequence) -> str:
    """A list written compactly: once if all entries are equal, else comma-separated."""
    values = list(values)
    if values and all(v == values[0] for v in values):
        values = values[:1]
    return ",".join(_fmt_number(v) if not isinstance(v, (str, bytes)) else _fmt_str(v) for v in values)


def _fmt_str(s) -> str:
    return s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s)


def _literal(arr: np.ndarray | None) -> str | None:
    """``c...`` for a constant worth printing by value, else None."""
    if arr is None:
        return None
    if arr.ndim == 0:
        return "c" + _fmt_number(arr.item())
    if arr.size == 1 or (arr.size <= _MAX_LITERAL and arr.dtype.kind in "iub"):
        return "c[" + ",".join(_fmt_number(v) for v in arr.ravel().tolist()) + "]"
    return None


def _fmt_attr_value(a: AttributeProto) -> str:
    if a.ref_attr_name:  # inside a function: bound to an attribute of the call
        return "@" + a.ref_attr_name
    v = helper.get_attribute_value(a)
    if a.type == AttributeProto.TENSOR:
        arr = numpy_helper.to_array(v)
        return _literal(arr) or "t" + "x".join(map(str, arr.shape))
    if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        # Control flow is rare in vision networks: the subgraph's operators stand for it.
        graphs = [v] if a.type == AttributeProto.GRAPH else v
        return "|".join("{" + ",".join(n.op_type for n in g.node) + "}" for g in graphs)
    if isinstance(v, list):
        return _fmt_values(v)
    if isinstance(v, (str, bytes)):
        return _fmt_str(v)
    if isinstance(v, (int, float)):
        return _fmt_number(v)
    return str(a.type)  # type protos, sparse tensors: rare, keep the kind only


@functools.cache
def _schema(op: str, domain: str, opset: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op, opset, domain)
    except Exception:  # noqa: BLE001 - unknown or custom op
        return None


@functools.cache
def _schema_defaults(op: str, domain: str, opset: int) -> dict[str, str]:
    schema = _schema(op, domain, opset)
    if schema is None:
        return {}
    return {
        name: _fmt_attr_value(a.default_value)
        for name, a in schema.attributes.items()
        if a.default_value.type != AttributeProto.UNDEFINED
    }


_ATTRS_SEEN: dict[tuple, list[str]] = {}


def _fmt_attrs(node: onnx.NodeProto, opset: int) -> list[str]:
    """Attribute tokens of a node; memoized, as the same few attribute sets recur everywhere."""
    if not node.attribute:
        return []
    key = (node.op_type, node.domain, opset, *(a.SerializeToString() for a in node.attribute))
    out = _ATTRS_SEEN.get(key)
    if out is None:
        if len(_ATTRS_SEEN) > 100_000:  # bound the memory of a long-running process
            _ATTRS_SEEN.clear()
        out = _ATTRS_SEEN[key] = _fmt_attrs_uncached(node, opset)
    return out


def _fmt_attrs_uncached(node: onnx.NodeProto, opset: int) -> list[str]:
    defaults = _schema_defaults(node.op_type, node.domain, opset) if opset else {}
    short, rest = [], []
    for a in node.attribute:
        value = _fmt_attr_value(a)
        if defaults.get(a.name, _IMPLICIT_DEFAULTS.get(a.name)) == value:
            continue  # the default costs characters and says nothing
        if a.name in _ATTR_ABBREV:
            short.append((list(_ATTR_ABBREV).index(a.name), _ATTR_ABBREV[a.name] + value))
        else:
            rest.append(f"{a.name}={value}")
    return [s for _, s in sorted(short)] + sorted(rest)


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """Value of a Constant node (None when it is not a plain tensor/number/list)."""
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if a.name == "value":
            return numpy_helper.to_array(v)
        if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.asarray(v, dtype=np.float32 if "float" in a.name else np.int64)
    return None


class _Types:
    """Value types of one scope, converted from protos only when read (most never are)."""

    def __init__(self) -> None:
        self.protos: dict[str, onnx.TypeProto] = {}
        self.tensors: dict[str, onnx.TensorProto] = {}  # initializers
        self._seen: dict[str, _Type | None] = {}

    def add(self, infos) -> None:
        for vi in infos:
            self.protos[vi.name] = vi.type

    def get(self, name: str) -> _Type | None:
        try:
            return self._seen[name]
        except KeyError:
            pass
        if name in self.tensors:
            t = self.tensors[name]
            out = (t.data_type, tuple(t.dims))
        else:
            tp = self.protos.get(name)
            out = None if tp is None else _type_of_bytes(tp.SerializeToString())
        self._seen[name] = out
        return out

    def proto(self, name: str) -> onnx.TypeProto:
        if name in self.protos:
            return self.protos[name]
        t = self.get(name)
        return helper.make_tensor_type_proto(t[0], t[1]) if t else onnx.TypeProto()

    def key(self, name: str) -> bytes | _Type | None:
        """A cheap hashable stand-in for the type (serialized bytes are faster than converting)."""
        return self.protos[name].SerializeToString() if name in self.protos else self.get(name)


@dataclass
class _Scope:
    """A graph or function body to render."""

    data: list[str]  # data input names, in order
    nodes: list[onnx.NodeProto]
    outputs: list[str]
    types: _Types
    consts: dict[str, np.ndarray | None]  # weights and constants; None = values unknown
    opsets: dict[str, int] = field(default_factory=dict)


@dataclass
class _Spec:
    """A function called with given input kinds and types: its body's shapes and text."""

    fn: onnx.FunctionProto
    is_data: list[bool]  # per formal input: data (printed at the call) or weight
    types: _Types
    opsets: dict[str, int]
    body_hash: str | None = None  # set once rendered
    #: per output, the indices of the body's data inputs it depends on (set once rendered)
    out_deps: list[frozenset[int]] = field(default_factory=list)
    macs: float = 0.0  # the body's multiply-accumulates, calls included (set once rendered)


class _Renderer:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self.opsets = {o.domain or "": o.version for o in model.opset_import}
        self.bodies: dict[str, str] = {}  # body hash -> block text without its name
        self._specs: dict[tuple, _Spec] = {}
        self._call_specs: dict[tuple, _Spec] = {}  # (scope's types, call outputs) -> spec
        self._slot0: dict[tuple[str, str], set[str]] = {}

    # --- entry point ---------------------------------------------------------------------------
    def render(self) -> str:
        g = self.model.graph
        if not self.functions:
            try:
                g = shape_inference.infer_shapes(self.model, data_prop=True).graph
            except Exception:  # noqa: BLE001 - onnx raises several types; shapes then print as "?"
                pass
        types = _Types()
        types.add(g.input)
        types.add(g.value_info)
        types.add(g.output)
        init = {t.name: t for t in g.initializer}
        types.tensors = init
        consts: dict[str, np.ndarray | None] = {}
        for t in g.initializer:
            # Only tiny tensors can be printed by value; skip decoding big weights.
            small = int(np.prod(t.dims)) <= _MAX_LITERAL and t.data_location != onnx.TensorProto.EXTERNAL
            consts[t.name] = numpy_helper.to_array(t) if small else None
        inputs = [i.name for i in g.input if i.name not in init]
        if init:  # ONNX semantics: inputs without an initializer are runtime inputs
            data = inputs
        else:
            # Models built without weight values (our spaces' to_onnx) pass weights as inputs;
            # a weight is never the first (data) operand of an operator.
            slot0 = self._slot0_names(g.node)
            data = [n for n in inputs if n in slot0] or inputs[:1]
        data_set = set(data)
        consts.update({n: None for n in inputs if n not in data_set})
        if self.functions:
            self._infer_nodes(g, types, consts)
        scope = _Scope(data, list(g.node), [o.name for o in g.output], types, consts, self.opsets)
        return self._number_blocks(self._header(scope) + self._render_scope(scope)[0])

    @staticmethod
    def _header(scope: _Scope) -> str:
        """Rest of a block's header line: shapes of its data inputs."""
        return "".join(" " + _fmt_type(scope.types.get(n)) for n in scope.data) + "\n"

    def _slot0_names(self, nodes) -> set[str]:
        """Names used as the first input of an operator, directly or through function calls."""
        names = set()
        for node in nodes:
            fn = self.functions.get((node.domain, node.op_type))
            if fn is None:
                names.update(node.input[:1])
            else:
                formals = self._slot0_formals(fn)
                names.update(a for a, f in zip(node.input, fn.input) if f in formals)
        return names

    def _slot0_formals(self, fn: onnx.FunctionProto) -> set[str]:
        key = (fn.domain, fn.name)
        if key not in self._slot0:
            self._slot0[key] = set()  # provisional: guards against (invalid) recursive functions
            self._slot0[key] = self._slot0_names(fn.node) & set(fn.input)
        return self._slot0[key]

    def _number_blocks(self, main: str) -> str:
        """Replace body hashes by F0, F1, ... in order of first use; put the bodies first."""
        order: dict[str, int] = {}
        pending = [main]
        while pending:
            text = pending.pop(0)
            for h in _CALL_RE.findall(text):
                if h not in order:
                    order[h] = len(order)
                    pending.append(self.bodies[h])
        blocks = [f"F{i}:{self.bodies[h]}" for h, i in order.items()] + [f"main:{main}"]
        return _CALL_RE.sub(lambda m: f"F{order[m.group(1)]}", "\n".join(blocks)) + "\n"

    # --- shapes ----------------------------------------------------------------------------------
    def _infer_nodes(self, g: onnx.GraphProto, types: _Types, consts: dict) -> None:
        """Shapes of the main graph of a model with functions, node by node.

        ``onnx.shape_inference.infer_shapes`` re-infers a function body at every call (a 20-cell
        network costs ~10 ms); here each distinct call is inferred once, as a :class:`_Spec`,
        and the operators between calls one at a time.
        """
        opset_list = [helper.make_opsetid(d, v) for d, v in self.opsets.items()]
        values = {t.name: t for t in g.initializer if consts.get(t.name) is not None}  # for Reshape & co
        for node in g.node:
            fn = self.functions.get((node.domain, node.op_type))
            if fn is not None:
                spec = self._spec(fn, node, types, consts)
                for actual, formal in zip(node.output, fn.output):
                    if formal in spec.types.protos:
                        types.protos[actual] = spec.types.protos[formal]
                continue
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                arr = _constant_value(node)
                if arr is not None and node.output:
                    values[node.output[0]] = numpy_helper.from_array(arr)
            schema = _schema(node.op_type, node.domain, self.opsets.get(node.domain or "", 0))
            if schema is None:
                continue
            try:
                out = shape_inference.infer_node_outputs(
                    schema,
                    node,
                    {a: types.proto(a) for a in node.input if a},
                    {a: values[a] for a in node.input if a in values},
                    opset_imports=opset_list,
                )
            except Exception:  # noqa: BLE001 - an op onnx cannot infer: its shapes print as "?"
                continue
            types.protos.update(out)

    def _spec(self, fn: onnx.FunctionProto, node: onnx.NodeProto, types: _Types, consts: dict) -> _Spec:
        """The (cached) specialization of ``fn`` for this call's input kinds and types."""
        call = (id(types), *node.output)  # output names are unique within a scope
        spec = self._call_specs.get(call)
        if spec is None:
            spec = self._call_specs[call] = self._spec_uncached(fn, node, types, consts)
        return spec

    def _spec_uncached(self, fn: onnx.FunctionProto, node: onnx.NodeProto, types: _Types, consts: dict) -> _Spec:
        is_data = [bool(a) and a not in consts for a in node.input]
        key = (fn.domain, fn.name, tuple(is_data), tuple(types.key(a) for a in node.input))
        spec = self._specs.get(key)
        if spec is None:
            is_data += [False] * (len(fn.input) - len(is_data))
            opsets = {**self.opsets, **{o.domain or "": o.version for o in fn.opset_import}}
            body_types = self._infer_body(fn, [types.proto(a) for a in node.input], opsets)
            spec = self._specs[key] = _Spec(fn, is_data, body_types, opsets)
        return spec

    def _infer_body(self, fn: onnx.FunctionProto, input_types: list[onnx.TypeProto], opsets: dict) -> _Types:
        """Shapes inside a function body, from a one-off model of the body with these inputs."""
        tmp = onnx.ModelProto(ir_version=self.model.ir_version or onnx.IR_VERSION)
        tmp.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets.items())
        graph = tmp.graph
        graph.name = fn.name
        graph.node.extend(fn.node)
        for f, tp in zip(fn.input, input_types):
            graph.input.add(name=f).type.CopyFrom(tp)
        for o in fn.output:
            graph.output.add(name=o)
        if any((n.domain, n.op_type) in self.functions for n in fn.node):
            tmp.functions.extend(self.model.functions)  # only then: copying them all costs time
        types = _Types()
        types.add(graph.input)
        try:
            inferred = shape_inference.infer_shapes(tmp, data_prop=True).graph
        except Exception:  # noqa: BLE001 - unknown ops etc.: shapes print as "?"
            return types
        types.add(inferred.value_info)
        types.add(inferred.output)
        return types

    def _call_op(self, fn: onnx.FunctionProto, node: onnx.NodeProto, types: _Types, consts: dict) -> _Spec:
        """The call's specialization, its body rendered: ``body_hash`` names the block, ``is_data``
        says which actual inputs are printed, ``out_deps`` what each output depends on."""
        spec = self._spec(fn, node, types, consts)
        if spec.body_hash is None:
            data = [f for f, d in zip(fn.input, spec.is_data) if d]
            consts = {f: None for f, d in zip(fn.input, spec.is_data) if not d}
            body = _Scope(data, list(fn.node), list(fn.output), spec.types, consts, spec.opsets)
            text, spec.out_deps, spec.macs = self._render_scope(body)
            text = self._header(body) + text
            spec.body_hash = _hash(text)
            self.bodies.setdefault(spec.body_hash, text)
        return spec

    # --- one graph or body -----------------------------------------------------------------------
    def _render_scope(self, scope: _Scope) -> tuple[str, list[frozenset[int]], float]:
        """The scope's lines, per output the indices of the data inputs it depends on, and the
        scope's multiply-accumulates (its Conv and Gemm nodes' and its calls' bodies')."""
        types, consts = scope.types, scope.consts
        nodes: list[onnx.NodeProto] = []
        for node in scope.nodes:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
                if consts is scope.consts:
                    consts = dict(consts)
                consts[node.output[0]] = _constant_value(node)  # printed where it is used
            else:
                nodes.append(node)
        n = len(nodes)
        # Values are (producer, output index); the data inputs are producers n, n+1, ...
        producer = {name: (n + j, 0) for j, name in enumerate(scope.data)}
        for i, node in enumerate(nodes):
            for k, out in enumerate(o for o in node.output if o):
                producer[out] = (i, k)

        heads, ins, outs, shapes, deps = [], [], [], [], []
        total = 0.0
        calls: dict[int, _Spec] = {}
        zeroed = set()  # nodes that multiply by a constant zero
        for i, node in enumerate(nodes):
            std = node.domain in ("", "ai.onnx")
            fn = None if std else self.functions.get((node.domain, node.op_type))
            keep = None
            if fn is not None:
                spec = calls[i] = self._call_op(fn, node, types, consts)
                op, keep = f"{_CALL}{spec.body_hash}{_CALL}", spec.is_data
                total += spec.macs
            elif std:
                op = _OP_ABBREV.get(node.op_type, node.op_type)
            else:
                op = f"{node.domain}.{node.op_type}"
            omitted = _OMITTED_WEIGHTS.get(node.op_type, ()) if std else ()
            biases = _BIASES.get(node.op_type, ()) if std else ()
            toks: list[str | tuple[int, int]] = []  # a reference (producer, output) or a token
            first_ref = None
            for slot, name in enumerate(node.input):
                if keep is not None and not keep[slot]:
                    continue
                ref = producer.get(name)
                if ref is not None:
                    toks.append(ref)
                    first_ref = first_ref or name
                elif not name:
                    toks.append("_")
                elif name in consts:
                    if std and node.op_type == "Mul" and consts[name] is not None and not np.any(consts[name]):
                        zeroed.add(i)
                    lit = _literal(consts[name])
                    if lit is None:
                        if slot in omitted:
                            continue
                        lit = "w" if slot in biases else "w" + _fmt_type(types.get(name), drop_batch=False)
                    toks.append(lit)
                else:
                    raise ValueError(
                        f"not a valid ONNX graph: input {name!r} of node {node.name or node.op_type!r} "
                        "is produced by no node and is no graph input"
                    )
            out = [o for o in node.output if o]
            shape = " ".join(_fmt_type(types.get(o)) for o in out)
            attrs = _fmt_attrs(node, scope.opsets.get(node.domain or "", 0))
            macs = _macs(node, types) if std else None
            total += macs or 0.0
            heads.append(" ".join([op, *attrs, *([f"m{_fmt_macs(macs, 2)}"] if macs else [])]))
            ins.append(toks)
            outs.append(len(out))
            # The output shape is left out when it repeats the first input's (Relu, BN, ...).
            same = len(out) == 1 and first_ref is not None and types.get(first_ref) == types.get(out[0])
            shapes.append("" if same else " > " + shape)
            deps.append({t[0] for t in toks if type(t) is tuple and t[0] < n})

        # A topological order: ONNX stores one, but do not rely on it.
        topo = range(n)
        if any(p >= i for i, d in enumerate(deps) for p in d):
            try:
                topo = list(TopologicalSorter(dict(enumerate(deps))).static_order())
            except CycleError:
                raise ValueError("not a valid ONNX graph: its nodes form a cycle") from None

        # What each value depends on: the indices of the scope's data inputs. A product with a
        # constant zero (NB201's `none` op) depends on nothing, and neither does whatever is
        # computed only from such values: those nodes are marked `const` (see the format).
        def dep(t: tuple[int, int]) -> frozenset[int]:
            return frozenset([t[0] - n]) if t[0] >= n else value_deps[t]

        # A call's outputs, each as the indices of the call's data inputs its body reads for it.
        call_deps = {i: [d for o, d in zip(nodes[i].output, spec.out_deps) if o] for i, spec in calls.items()}
        value_deps: dict[tuple[int, int], frozenset[int]] = {}
        const = set()
        for i in topo:
            in_deps = [dep(t) for t in ins[i] if type(t) is tuple]
            if i in calls:  # per output: the body's dependencies, mapped to this call's inputs
                per_out = [frozenset().union(*(in_deps[j] for j in d)) for d in call_deps[i]]
            else:
                per_out = [frozenset() if i in zeroed else frozenset().union(*in_deps)] * outs[i]
            value_deps.update(((i, k), d) for k, d in enumerate(per_out))
            if in_deps and not any(per_out):
                const.add(i)
                heads[i] = "const " + heads[i]

        # Liveness, backward from the scope's outputs: a value is used when some path from it
        # to an output passes no product with a constant zero. Nodes none of whose outputs is
        # used are marked `dead` (see the format): compilers that prune them (TFLite) skip their
        # cost, and nothing else in the text says so without following every reference.
        used = [[False] * outs[i] for i in range(n)]
        for name in scope.outputs:
            if name in producer and producer[name][0] < n:
                used[producer[name][0]][producer[name][1]] = True
        for i in reversed(topo):
            if not any(used[i]) or i in zeroed:
                continue
            refs = [t for t in ins[i] if type(t) is tuple]
            if i in calls:  # an input is used when a used output of the body depends on it
                needed = set().union(*(d for d, u in zip(call_deps[i], used[i]) if u))
                refs = [t for j, t in enumerate(refs) if j in needed]
            for t in refs:
                if t[0] < n:
                    used[t[0]][t[1]] = True
        for i in range(n):
            if outs[i] and not any(used[i]) and i not in const:
                heads[i] = "dead " + heads[i]

        # Structural keys: what feeds each node (anc) and what each node feeds (desc). Names never
        # enter them, so the tie-breaks between ready nodes below do not depend on names either.
        anc = [""] * n + [f"i{j}" for j in range(len(scope.data))]
        consumers: list[list[str]] = [[] for _ in range(n)]
        for i in topo:
            parts = [heads[i], shapes[i]]
            for slot, t in enumerate(ins[i]):
                if type(t) is tuple:
                    parts.append(f"{anc[t[0]]}.{t[1]}")
                    if t[0] < n:
                        consumers[t[0]].append(f"{slot}.{t[1]}.{i}")  # i: patched to desc below
                else:
                    parts.append(t)
            anc[i] = _hash("|".join(parts))
        for j, name in enumerate(scope.outputs):
            if name in producer and producer[name][0] < n:
                consumers[producer[name][0]].append(f"o{j}.{producer[name][1]}")
        desc = [""] * n
        for i in reversed(topo):
            items = []
            for c in consumers[i]:
                if c[0] != "o":
                    slot_k, _, j = c.rpartition(".")
                    c = f"{slot_k}.{desc[int(j)]}"
                items.append(c)
            items.sort()
            items.append(anc[i])
            desc[i] = _hash("|".join(items))

        # Canonical order: Kahn's algorithm preferring the node that uses the most recently
        # produced value (keeps chains together, so most references are "1"), then the key.
        start = [0] * n + list(range(len(scope.data)))  # position of each producer's first output
        count = len(scope.data)
        waiting = [len(d) for d in deps]
        dependents: list[list[int]] = [[] for _ in range(n)]
        for i, d in enumerate(deps):
            for p in d:
                dependents[p].append(i)

        def entry(i: int) -> tuple:
            used = [start[t[0]] + t[1] for t in ins[i] if type(t) is tuple]
            # Last resort, the positions of the inputs: between symmetric nodes, an arbitrary
            # first pick then orders the rest consistently (the stored index never decides
            # unless two nodes have the same inputs and the same structure around them).
            return (-max(used, default=-1), desc[i], used, i)

        ready = [entry(i) for i in range(n) if not waiting[i]]
        heapq.heapify(ready)
        lines = []
        while ready:
            i = heapq.heappop(ready)[-1]
            start[i] = count
            refs = _refs([t if type(t) is str else count - start[t[0]] - t[1] for t in ins[i]])
            lines.append(f"{heads[i]} {refs}{shapes[i]}" if refs else heads[i] + shapes[i])
            count += outs[i]
            for j in dependents[i]:
                waiting[j] -= 1
                if not waiting[j]:
                    heapq.heappush(ready, entry(j))
        out_tokens = []
        for name in scope.outputs:
            ref = producer.get(name)
            out_tokens.append(count - start[ref[0]] - ref[1] if ref else _literal(consts.get(name)) or "w")
        refs = _refs(out_tokens)
        lines.append(" ".join(["out", *([refs] if refs else []), *([f"m{_fmt_macs(total, 3)}"] if total else [])]))
        out_deps = [dep(producer[name]) if name in producer else frozenset() for name in scope.outputs]
        return "\n".join(lines), out_deps, total


def _macs(node: onnx.NodeProto, types: _Types) -> float | None:
    """Multiply-accumulates of a Conv or Gemm at batch 1 (None for other nodes or unknown shapes)."""
    if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or not node.output:
        return None
    w, out = types.get(node.input[1]), types.get(node.output[0])
    if not w or not out or w[1] is None or out[1] is None or None in w[1] or None in out[1]:
        return None
    # Conv: every output element sums over one filter (C_in / group x kernel); Gemm: the weight.
    return float(np.prod(out[1][1:]) * np.prod(w[1][1:]) if node.op_type == "Conv" else np.prod(w[1]))


def _fmt_macs(macs: float, digits: int) -> str:
    """``macs`` to ``digits`` significant digits with a unit: ``1.8M``, ``790k``."""
    macs = float(f"{macs:.{digits}g}")
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if macs >= scale:
            return f"{macs / scale:g}{unit}"
    return f"{macs:g}"


def _refs(tokens: list[str | int]) -> str:
    """Input tokens of a line; ints are references (distances back to the value)."""
    refs = [t for t in tokens if type(t) is int]
    if not refs:
        return " ".join(["-", *tokens])  # "-": no data input, so nothing is implied
    if len(refs) == 1 and tokens[0] == 1:
        tokens = tokens[1:]  # the usual case, a chain: the only data input is the previous value
    return " ".join(map(str, tokens))
