"""Tests of search_spaces.text.onnx_to_text: format, canonical form, repetition, errors."""

from __future__ import annotations

import dataclasses
import io
import random

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from search_spaces.onnx_graph import GraphBuilder
from search_spaces.text import onnx_to_text


# --- models ----------------------------------------------------------------------------------
def cell_net(n_cells: int = 2, channels: int = 8, kernel: int = 3, weights: dict | None = None) -> onnx.ModelProto:
    """Stem conv, ``n_cells`` calls of one local function (two branches joined by Sub), head."""
    gb = GraphBuilder(weights)
    x = gb.input("input", (1, 3, 8, 8))
    x = gb.node("Conv", [x, gb.weight("stem.weight", (channels, 3, 3, 3))], kernel_shape=[3, 3], pads=[1] * 4)

    def cell(gb, a, b):
        left = gb.node("Relu", [a])
        left = gb.node(
            "Conv", [left, gb.weight("dw.weight", (channels, 1, kernel, kernel))],
            kernel_shape=[kernel] * 2, pads=[kernel // 2] * 4, group=channels,
        )
        right = gb.node("MaxPool", [b], kernel_shape=[3, 3], pads=[1] * 4)
        return gb.node("Sub", [left, right])  # not commutative: input order must show

    prev, cur = x, x
    for i in range(n_cells):
        prev, cur = cur, gb.call(("cell", channels, kernel), "cell", cell, [cur, prev], f"cells.{i}.")
    y = gb.node("GlobalAveragePool", [cur])
    y = gb.node("Reshape", [y, gb.constant([1, channels])])
    y = gb.node("Gemm", [y, gb.weight("fc.weight", (10, channels)), gb.weight("fc.bias", (10,))], transB=1)
    return gb.build({y: (1, 10)})


def branchy_model() -> onnx.ModelProto:
    """Plain graph (no functions) with three independent branches of the same input."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["a2"]),
        helper.make_node("Conv", ["x", "w2"], ["b1"], kernel_shape=[1, 1]),
        helper.make_node("Sigmoid", ["b1"], ["b2"]),
        helper.make_node("AveragePool", ["x"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["a2", "b2"], ["m"]),
        helper.make_node("Sub", ["m", "c1"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        initializer=[
            numpy_helper.from_array(np.zeros((4, 4, 3, 3), np.float32), "w1"),
            numpy_helper.from_array(np.zeros((4, 4, 1, 1), np.float32), "w2"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def renamed(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """The same network with every tensor, node and function renamed at random."""
    rng = random.Random(seed)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    tag = lambda: f"n{rng.randrange(10**9)}"  # noqa: E731

    def rename_values(nodes, value_lists, mapping):
        for node in nodes:
            node.name = tag()
            for lst in (node.input, node.output):
                for i, name in enumerate(lst):
                    if name:
                        lst[i] = mapping.setdefault(name, tag())
        for values in value_lists:
            for v in values:
                if isinstance(v, str):
                    continue
                v.name = mapping.setdefault(v.name, tag())

    fnames = {f.name: tag() for f in m.functions}
    for f in m.functions:
        mapping: dict[str, str] = {}
        rename_values(f.node, [], mapping)
        for lst in (f.input, f.output):
            for i, name in enumerate(lst):
                lst[i] = mapping.setdefault(name, tag())
        f.name = fnames[f.name]
        for node in f.node:
            node.op_type = fnames.get(node.op_type, node.op_type) if node.domain == f.domain else node.op_type
    g = m.graph
    rename_values(g.node, [g.input, g.output, g.value_info, g.initializer], {})
    for node in g.node:
        if node.op_type in fnames and node.domain != "":
            node.op_type = fnames[node.op_type]
    return m


def shuffled(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """The same model with its nodes (main graph and function bodies) in another topological order."""
    rng = random.Random(seed)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for container in [m.graph, *m.functions]:
        nodes = list(container.node)
        produced = {o: i for i, n in enumerate(nodes) for o in n.output}
        deps = [{produced[x] for x in n.input if x in produced} for n in nodes]
        order, done = [], set()
        while len(order) < len(nodes):
            ready = [i for i in range(len(nodes)) if i not in done and deps[i] <= done]
            pick = rng.choice(ready)
            order.append(pick)
            done.add(pick)
        del container.node[:]
        container.node.extend(nodes[i] for i in order)
    onnx.checker.check_model(m)
    return m


# --- format ----------------------------------------------------------------------------------
def test_hand_made_model_exact_text():
    text = onnx_to_text(cell_net(n_cells=2))
    assert text == (
        "F0: 8x8x8 8x8x8\n"
        "MaxPool k3 p1\n"  # input: the second data input (b), the previous value; same shape
        "Relu 3\n"  # first data input (a): 3 values back from here
        "Conv k3 p1 g8 m4.6k\n"  # weight implied by k3, g8 and the shapes; m: 8x8x8 outputs x 3x3 MACs
        "Sub 1 3\n"  # Sub(left, right): input order kept
        "out m4.61k\n"  # the body's MACs, three digits
        "main: 3x8x8\n"
        "Conv k3 p1 m14k > 8x8x8\n"  # 8x8x8 x 3x3x3 = 13,824 MACs, two digits
        "F0 1 1\n"
        "F0 1 2\n"
        "GAP > 8x1x1\n"
        "Reshape c[1,8] > 8\n"  # small int constant printed by value; batch dim dropped
        "Gemm transB=1 m80 w > 10\n"  # the bias is optional, so it is written
        "out m23.1k\n"  # the network's MACs, calls included: 13,824 + 2 x 4,608 + 80
    )


def test_torch_exported_model():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), buf, dynamo=False)
    text = onnx_to_text(buf.getvalue())
    lines = text.splitlines()
    assert lines[0] == "main: 3x32x32" and lines[-1] == "out m258k"  # 221,184 + 36,864 + 160 MACs
    # The exporter folds BN into the conv (eval mode): the conv gets a bias.
    assert "Conv k3 p1 m220k w > 8x32x32" in lines
    assert "Conv k3 s2 p1 g8 m37k w > 16x16x16" in lines
    assert lines[-2].startswith("Gemm") and lines[-2].endswith("> 10")
    assert "onnx::" not in text and "weight" not in text  # no tensor names leak in


def test_path_bytes_and_proto_agree(tmp_path):
    model = cell_net()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert onnx_to_text(path) == onnx_to_text(str(path)) == onnx_to_text(model.SerializeToString()) == onnx_to_text(model)


def test_weights_as_initializers_or_inputs_give_the_same_text():
    rng = np.random.default_rng(0)
    shapes = {"stem.weight": (8, 3, 3, 3), "fc.weight": (10, 8), "fc.bias": (10,)}
    shapes.update({f"cells.{i}.dw.weight": (8, 1, 3, 3) for i in range(2)})
    values = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    with_values = cell_net(weights=values)
    assert len(with_values.graph.initializer) == len(shapes)
    assert onnx_to_text(with_values) == onnx_to_text(cell_net())


def test_non_default_types_and_attributes_are_written():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Softmax", ["x"], ["y"], axis=1),
        helper.make_node("LeakyRelu", ["y"], ["z"], alpha=0.2),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
        [helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None) for n in ("s", "h", "z")],
    )
    text = onnx_to_text(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    # Softmax axis=1 is not the opset-17 default (-1), so it is written; Shape's output is
    # rank 1 (no batch dim to drop) and int64; Cast's float16; the three outputs are listed.
    assert text == "main: 5\nSoftmax a1\nLeakyRelu alpha=0.2\nShape 3 > 2:i64\nCast to=10 4 > 5:f16\nout 2 1 3\n"


def test_constants_are_folded_into_their_users():
    # Slice(x, starts=[1], ends=[INT64_MAX], axes=[2]) with Constant-node operands: the constants
    # get no line of their own, and the int64 limit is written "max".
    gb = GraphBuilder()
    x = gb.input("input", (1, 4, 8, 8))
    y = gb.node("Slice", [x, gb.constant([1]), gb.constant([2**63 - 1]), gb.constant([2])])
    text = onnx_to_text(gb.build({y: (1, 4, 7, 8)}))
    assert text == "main: 4x8x8\nSlice c[1] c[max] c[2] > 4x7x8\nout\n"


def test_values_that_ignore_the_input_are_marked_const():
    # A cell that multiplies its input by zero (NB201's `none` op): its output, and whatever is
    # computed only from it, is the same for every input. The sum with the input is not.
    gb = GraphBuilder()
    x = gb.input("input", (1, 4, 8, 8))

    def cell(gb, a):
        return gb.node("Relu", [gb.node("Mul", [a, gb.constant(0.0, dtype=np.float32)])])

    y = gb.node("Add", [x, gb.node("Sigmoid", [gb.call(("zero",), "zero", cell, [x], "cell.")])])
    text = onnx_to_text(gb.build({y: (1, 4, 8, 8)}))
    assert text == "F0: 4x8x8\nconst Mul c0\nconst Relu\nout\nmain: 4x8x8\nconst F0\nconst Sigmoid\nAdd 3 1\nout\n"


def test_values_that_reach_no_output_are_marked_dead():
    # x -> Relu -> (x 0) and x -> Sigmoid (never used) are computed but reach no output; the
    # product with zero is const, not dead; the sum with the input is neither.
    gb = GraphBuilder()
    x = gb.input("input", (1, 4, 8, 8))
    gb.node("Sigmoid", [x])
    zero = gb.node("Mul", [gb.node("Relu", [x]), gb.constant(0.0, dtype=np.float32)])
    text = onnx_to_text(gb.build({gb.node("Add", [x, zero]): (1, 4, 8, 8)}))
    assert text == "main: 4x8x8\ndead Relu\nconst Mul c0\nAdd 3 1\ndead Sigmoid 4\nout 2\n"


def test_nb201_nodes_that_feed_only_none_edges_are_dead():
    from rlm_nas.convert import model_input

    # Node 3 takes only the input (skip); nodes 1 and 2 feed nothing but `none` edges, so the
    # convolutions computing node 2 are dead, in every cell body (F0, F2, F4).
    text = model_input("nb201", "|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|none~1|none~2|")
    cell = text.split("F0:")[1].split("F1:")[0].splitlines()[1:-1]
    assert [line.split()[1] for line in cell if line.startswith("dead ")] == ["Relu", "Conv", "BN"] * 2 + ["Add"]
    assert text.count("dead ") == 3 * 7
    # Every node reaches the output: nothing is dead.
    alive = model_input("nb201", "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|")
    assert "dead" not in alive


def test_nb201_cells_without_a_path_from_the_input_are_const():
    from rlm_nas.convert import model_input

    # Every edge into node 3 is `none`: the cell's output is constant, and so is the network after it.
    dead = model_input("nb201", "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|none~1|none~2|")
    main = dead.split("main:")[1].splitlines()[1:-1]
    # The stem before it reaches no output: dead.
    assert main[:2] == ["dead Conv k3 p1 m440k > 16x32x32", "dead BN"] and all(line.startswith("const ") for line in main[2:])
    # Node 1 is zero, so the convolutions on edges 1->2 and 1->3 see a constant; the pool does not.
    partial = model_input("nb201", "|none~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|avg_pool_3x3~0|nor_conv_3x3~1|none~2|")
    cell = partial.split("F1:")[0].splitlines()
    assert {"const Conv k1 m260k", "const Conv k3 p1 m2.4M"} <= set(cell) and "const" not in partial.split("main:")[1]
    assert any(line.startswith("AveragePool k3 p1 ") for line in cell)
    # `none` edges into nodes that other edges keep alive: only the products by zero are const.
    alive = model_input("nb201", "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|nor_conv_3x3~2|")
    assert {line for line in alive.splitlines() if "const" in line} == {"const Mul c0", "const Mul 9 c0"}


# --- canonical form --------------------------------------------------------------------------
@pytest.mark.parametrize("make", [cell_net, branchy_model], ids=["functions", "branches"])
def test_invariant_to_names_and_node_order(make):
    model = make()
    text = onnx_to_text(model)
    for seed in range(5):
        assert onnx_to_text(renamed(model, seed)) == text
        assert onnx_to_text(shuffled(model, seed)) == text
        assert onnx_to_text(shuffled(renamed(model, seed), seed + 1)) == text


def test_symmetric_branches_do_not_depend_on_storage_order():
    # a1, a2 are alike, and so are p = Sub(a1, a2) and q = Sub(a2, a1) (both unused, so nothing
    # downstream tells them apart): the graph has a symmetry swapping (a1, p) with (a2, q). Which
    # of a1, a2 comes first is arbitrary, but the order of p, q must follow from it, not from
    # the order the nodes are stored in.
    nodes = [
        helper.make_node("Relu", ["x"], ["a1"]),
        helper.make_node("Relu", ["x"], ["a2"]),
        helper.make_node("Sub", ["a1", "a2"], ["p"]),
        helper.make_node("Sub", ["a2", "a1"], ["q"]),
        helper.make_node("Neg", ["x"], ["y"]),
    ]

    def model(order):
        graph = helper.make_graph(
            [nodes[i] for i in order], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    texts = {onnx_to_text(model(o)) for o in ([0, 1, 2, 3, 4], [1, 0, 2, 3, 4], [0, 1, 3, 2, 4], [1, 0, 3, 2, 4])}
    assert len(texts) == 1, texts


def test_distinct_networks_give_distinct_texts():
    base = onnx_to_text(cell_net())
    assert onnx_to_text(cell_net(kernel=5)) != base
    assert onnx_to_text(cell_net(channels=16)) != base
    assert onnx_to_text(cell_net(n_cells=3)) != base
    # Swapping the operands of the non-commutative Sub is a different network.
    swapped = branchy_model()
    sub = swapped.graph.node[-1]
    sub.input[0], sub.input[1] = sub.input[1], sub.input[0]
    assert onnx_to_text(swapped) != onnx_to_text(branchy_model())


def test_repetition_costs_one_line_per_call():
    texts = [onnx_to_text(cell_net(n_cells=n)) for n in (2, 3, 10)]
    lines = [t.count("\n") for t in texts]
    assert lines[1] - lines[0] == 1 and lines[2] - lines[0] == 8
    assert all(t.count("F0:") == 1 for t in texts)


# --- errors ----------------------------------------------------------------------------------
def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="cannot read ONNX file"):
        onnx_to_text(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="not an ONNX model"):
        onnx_to_text(b"\xff\x00 definitely not protobuf \x12\x99")
    with pytest.raises(ValueError, match="no graph"):
        onnx_to_text(onnx.ModelProto())
    with pytest.raises(TypeError, match="onnx.ModelProto, bytes or a file path; got int"):
        onnx_to_text(42)
    bad = cell_net()
    bad.graph.node[0].input[0] = "nowhere"
    with pytest.raises(ValueError, match="'nowhere'.*produced by no node"):
        onnx_to_text(bad)


# --- real spaces -------------------------------------------------------------------------------
def _space(name):
    from search_spaces import get_space

    try:
        return get_space(name)
    except ImportError as e:  # a colleague's space not landed yet
        pytest.skip(f"space {name!r} not available: {e}")


def test_darts_depth_costs_little_text():
    space = _space("darts")
    g = space.sample(1, seed=3)[0]
    shallow = onnx_to_text(space.to_onnx(dataclasses.replace(g, width=32, depth=4)))
    deep = onnx_to_text(space.to_onnx(dataclasses.replace(g, width=32, depth=20)))
    assert len(deep) <= 3 * len(shallow)


def test_darts_texts_distinct_and_deterministic():
    space = _space("darts")
    gs = list(dict.fromkeys(space.sample(20, seed=0)))
    texts = [onnx_to_text(space.to_onnx(g)) for g in gs]
    assert len(set(texts)) == len(gs)
    assert texts[0] == onnx_to_text(space.to_onnx(gs[0]))
