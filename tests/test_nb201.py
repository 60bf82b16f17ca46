"""Tests of the NAS-Bench-201 space: string form, parameters, sampling, the network and its ONNX export."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from search_spaces import InvalidGenotype, get_space
from search_spaces.nb201 import OPS, PARAMS, NB201Genotype
from tests.spaces_helpers import assert_onnx_matches_torch, costs_by_part

pytestmark = pytest.mark.usefixtures("one_torch_thread")

space = get_space("nb201")
genotypes = st.tuples(*[st.sampled_from(OPS)] * 6).map(NB201Genotype)

# The best-known cell of NB201 (a ResNet-like cell) and its ops in string order.
RESNETISH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
RESNETISH_OPS = ("nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_3x3", "skip_connect")


# --- string form ----------------------------------------------------------------------------------
def test_parse_known_string_in_edge_order():
    g = space.parse(RESNETISH)
    assert g == NB201Genotype(RESNETISH_OPS)
    assert space.format(g) == RESNETISH
    assert space.parse(f"  {RESNETISH}\n") == g  # outer whitespace, e.g. a line read from a file


@given(genotypes)
def test_format_parse_round_trip(g):
    text = space.format(g)
    assert space.parse(text) == g
    assert text.count("~") == 6 and text.count("+") == 2


@given(genotypes, st.data())
def test_corrupted_strings_are_rejected_or_still_canonical(g, data):
    """An edit of a valid string raises InvalidGenotype, or is itself a valid canonical string."""
    text = space.format(g)
    pos = data.draw(st.integers(0, len(text) - 1))
    junk = data.draw(st.sampled_from(list("|+~0123_xnoe ") + ["", "||", "~9", "none"]))
    corrupted = text[:pos] + junk + text[pos + data.draw(st.integers(0, 3)) :]
    try:
        parsed = space.parse(corrupted)
    except InvalidGenotype as err:
        assert str(err).startswith("nb201: ")
    else:
        assert space.format(parsed) == corrupted.strip()


@pytest.mark.parametrize(
    "text, field, value",
    [
        ("|none~0|+|none~0|none~1|", "string", None),  # two nodes
        ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|+|none~0|", "string", None),  # four nodes
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 input count", 1),
        ("|none~0|+|none~0|none~1|+|none~0|none~2|none~1|", "node 3 input 1", "none~2"),
        ("|none~0|+|none~0|none~1|+|none~0|none~1|none|", "node 3 input 2", "none"),
        ("|none~0|+|none~0|conv_7x7~1|+|none~0|none~1|none~2|", "edge 1->2 op", "conv_7x7"),
        ("none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "node 1 inputs", "none~0|"),
        ("", "string", None),
    ],
)
def test_malformed_strings_name_space_field_value_and_allowed(text, field, value):
    with pytest.raises(InvalidGenotype) as info:
        space.parse(text)
    err = info.value
    assert (err.space, err.field) == ("nb201", field)
    if value is not None:
        assert err.value == value
    assert str(err).startswith(f"nb201: {field} ") and "allowed: " in str(err)
    if field.endswith(" op"):
        assert "avg_pool_3x3" in str(err.allowed)


def test_non_string_is_rejected():
    with pytest.raises(InvalidGenotype, match="nb201: string"):
        space.parse(None)


@pytest.mark.parametrize(
    "bad",
    [NB201Genotype(RESNETISH_OPS[:5]), NB201Genotype(list(RESNETISH_OPS)), NB201Genotype(("max_pool",) * 6), "x"],
)
def test_validate_rejects(bad):
    with pytest.raises(InvalidGenotype, match="^nb201: "):
        space.validate(bad)


# --- parameters, sampling, mutation ----------------------------------------------------------------
def test_size_and_distributions():
    dists = space.distributions()
    assert space.size() == 15625 == int(np.prod([len(d.choices) for d in dists.values()]))
    assert tuple(dists) == PARAMS == ("edge_1_0", "edge_2_0", "edge_2_1", "edge_3_0", "edge_3_1", "edge_3_2")
    assert all(d.choices == OPS for d in dists.values())


@given(genotypes)
def test_params_and_one_hot(g):
    params = space.to_params(g)
    assert space.from_params(params) == g
    assert params["edge_2_1"] == g.ops[2]  # the edge 1 -> 2
    one_hot = space.one_hot(g)
    assert one_hot.shape == (30,) and one_hot.sum() == 6


def test_from_params_rejects_missing_and_unknown():
    params = space.to_params(NB201Genotype(RESNETISH_OPS))
    with pytest.raises(InvalidGenotype, match="params keys"):
        space.from_params({k: v for k, v in params.items() if k != "edge_3_2"})
    with pytest.raises(InvalidGenotype, match="edge 2->3 op 'sep_conv'"):
        space.from_params({**params, "edge_3_2": "sep_conv"})


def test_sample_and_mutate_are_valid_and_deterministic():
    a, b, c = space.sample(50, seed=1), space.sample(50, seed=1), space.sample(50, seed=2)
    assert a == b and a != c
    assert all(space.validate(g) is g for g in a)
    assert len(set(a)) > 40  # uniform over 15625: collisions are rare
    for i, g in enumerate(a[:20]):
        m = space.mutate(g, seed=i)
        assert m == space.mutate(g, seed=i)
        assert sum(x != y for x, y in zip(g.ops, m.ops)) == 1


def test_registry():
    assert get_space("nb201") is space and space.num_classes == 10 and space.input_shape == (3, 32, 32)
    assert space.build(NB201Genotype(RESNETISH_OPS), num_classes=7).classifier.out_features == 7


# --- network and ONNX ------------------------------------------------------------------------------
EQUIVALENCE_CASES = [
    RESNETISH,
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",  # every edge none: cells output zeros
    "|nor_conv_1x1~0|+|none~0|none~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_3x3~2|",  # node 2 all none
    "|avg_pool_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|none~1|none~2|",  # output node all none
    # No weights in the cells. (A chain: cells that sum several skip/pool paths grow activations
    # ~3x per cell, to ~1e6 at the output, where float32 rounding alone exceeds the 1e-4 bound.)
    "|avg_pool_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|avg_pool_3x3~2|",
]


@pytest.mark.parametrize("text", EQUIVALENCE_CASES)
def test_onnx_is_valid_and_matches_torch(text):
    torch.manual_seed(0)
    got = assert_onnx_matches_torch(space, space.parse(text))  # to 1e-4
    assert got.shape == (2, 10)


def test_onnx_writes_each_distinct_cell_once_and_names_weights_by_state_dict():
    g = space.parse(RESNETISH)
    model = space.to_onnx(g)
    # Cells differ between stages only by channel count: 3 cell bodies + 2 reduction blocks, and
    # 15 + 2 calls of them in the main graph.
    assert sorted(re.sub(r"_\d+$", "", f.name) for f in model.functions) == ["cell"] * 3 + ["residual"] * 2
    assert sum(n.domain == "local" for n in model.graph.node) == 17
    weights = {i.name for i in model.graph.input} - {"input"}
    expected = {k for k in space.build(g).state_dict() if not k.endswith("num_batches_tracked")}
    assert weights == expected
    # Without convolutions the cell body does not depend on the width: one cell body for all stages.
    pool_only = space.to_onnx(space.parse(EQUIVALENCE_CASES[-1]))
    assert sorted(re.sub(r"_\d+$", "", f.name) for f in pool_only.functions) == ["cell", "residual", "residual"]


# --- FLOPs and params against NAS-Bench-Suite-Zero ---------------------------------------------------
# The published numbers count, for one 32x32 image (found by fitting all 724 rows, see below):
#   Conv2d / Linear: multiply-accumulates, no biases (the convs have none; the classifier's 10 are
#     left out);  BatchNorm2d: 2 per output element (scale and shift);  ReLU: 1 per element;
#   AvgPool2d: kernel_h * kernel_w per output element (NB201's pool counter);
#   AdaptiveAvgPool2d: 1 per input element;  skip, none and the node sums: 0.
# Params are all parameters, BatchNorm's affine ones included. The per-op costs then match every
# row exactly; only a constant 1,088 FLOPs (0.014% of the smallest network) stays unexplained.
# (spaces_helpers.leaf_flops.)
def _edge(name: str) -> str:
    """``blocks.<b>.edges.<k>`` for a cell edge's layers, ``fixed`` for the rest of the network."""
    match = re.match(r"blocks\.\d+\.edges\.\d+", name)
    return match.group(0) if match else "fixed"


def test_flops_and_params_match_nasbench_suite_zero(shared_data):
    rows = list(csv.DictReader(open(shared_data / "nb201" / "flops_params.csv")))
    assert len(rows) == 724
    # Every edge's cost depends only on its op and place, so measuring five networks (all edges one
    # op) prices every edge; additivity is checked on full networks below, then all rows are priced.
    flops, params = {}, {}
    for op in OPS:
        f, p = costs_by_part(space.build(NB201Genotype((op,) * 6)), _edge)
        for part in f.keys() | p.keys():
            flops[part, op], params[part, op] = f[part], p[part]
    edges = sorted({part for part, _ in flops if part != "fixed"})
    assert len(edges) == 15 * 6
    assert len({flops["fixed", op] for op in OPS}) == 1  # stem, reductions and head never change

    def price(table: dict, g: NB201Genotype) -> int:
        return table["fixed", "none"] + sum(table[e, g.ops[int(e[-1])]] for e in edges)

    for g in space.sample(3, seed=0):
        f, p = costs_by_part(space.build(g), lambda name: "all")
        assert (f["all"], p["all"]) == (price(flops, g), price(params, g))

    worst_flops = worst_params = 0.0
    for row in rows:
        g = space.parse(row["arch_str"])
        want_flops, want_params = float(row["flops_m"]) * 1e6, float(row["params_m"]) * 1e6
        worst_flops = max(worst_flops, abs(price(flops, g) - want_flops) / want_flops)
        worst_params = max(worst_params, abs(price(params, g) - want_params) / want_params)
    assert worst_params < 1e-9  # exact
    assert worst_flops < 2e-4  # the brief allows 2%; the convention above is much closer
