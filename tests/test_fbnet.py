"""Tests of the FBNet space: string and index forms, parameters, sampling, the network and its ONNX export."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from search_spaces import InvalidGenotype, get_space
from search_spaces.fbnet import BLOCKS, LAYERS, PARAMS, FBNetGenotype
from tests.spaces_helpers import assert_onnx_matches_torch, costs_by_part

pytestmark = pytest.mark.usefixtures("one_torch_thread")

space = get_space("fbnet")
genotypes = st.tuples(*[st.sampled_from(BLOCKS)] * 22).map(FBNetGenotype)

# HELP's first FBNet architecture (metainfo.pt arch[0]).
HELP_0_INDICES = [7, 8, 1, 8, 4, 8, 8, 8, 7, 4, 1, 4, 7, 3, 2, 7, 3, 2, 4, 2, 4, 5]
HELP_0 = FBNetGenotype(tuple(BLOCKS[i] for i in HELP_0_INDICES))


# --- string and index forms -------------------------------------------------------------------------
def test_parse_names_and_help_indices():
    names = ",".join(HELP_0.blocks)
    assert names.startswith("k5_e6,skip,k3_e1_g2,skip,k5_e1,") and names.endswith(",k5_e1_g2")
    assert space.parse(names) == HELP_0 == space.parse(json.dumps(HELP_0_INDICES))
    assert space.parse(" " + names.replace(",", ", ") + "\n") == HELP_0  # spaces after commas are fine
    assert space.format(HELP_0) == names
    assert space.op_indices(HELP_0) == HELP_0_INDICES


@given(genotypes)
def test_round_trips(g):
    assert space.parse(space.format(g)) == g
    assert space.parse(json.dumps(space.op_indices(g))) == g
    assert space.from_params(space.to_params(g)) == g


@given(genotypes, st.data())
def test_corrupted_strings_are_rejected_or_valid(g, data):
    """An edit of a valid string raises InvalidGenotype, or parses to a member whose format parses back."""
    text = data.draw(st.sampled_from([space.format(g), json.dumps(space.op_indices(g))]))
    pos = data.draw(st.integers(0, len(text) - 1))
    junk = data.draw(st.sampled_from(list(",[]_kegs0123456789 .-\"") + ["", "k7_e2", "null", "true", "1e3"]))
    corrupted = text[:pos] + junk + text[pos + data.draw(st.integers(0, 3)) :]
    try:
        parsed = space.parse(corrupted)
    except InvalidGenotype as err:
        assert str(err).startswith("fbnet: ")
    else:
        assert space.parse(space.format(parsed)) == space.validate(parsed)


@given(genotypes, st.integers(0, 21), st.sampled_from(["k7_e6", "", "K3_E1", "skip_connect", "3"]))
def test_unknown_block_name_is_rejected_with_its_layer(g, layer, bad):
    blocks = list(g.blocks)
    blocks[layer] = bad
    with pytest.raises(InvalidGenotype) as info:
        space.parse(",".join(blocks))
    assert info.value.field == f"layer {layer} block" and info.value.value == bad
    assert str(info.value).startswith(f"fbnet: layer {layer} block {bad!r} is not allowed; allowed: k3_e1, ")


@pytest.mark.parametrize(
    "text, field",
    [
        (",".join(["k3_e1"] * 21), "number of blocks"),
        (",".join(["k3_e1"] * 23), "number of blocks"),
        ("", "number of blocks"),
        (json.dumps([0] * 21), "op_idx_list"),
        ("[0, 1, 2", "op_idx_list"),
        ('{"op_idx_list": [0]}', "number of blocks"),  # not a list: read as names
        (json.dumps([0] * 21 + [9]), "op_idx_list[21]"),
        (json.dumps([-1] + [0] * 21), "op_idx_list[0]"),
        (json.dumps([0] * 10 + [1.0] + [0] * 11), "op_idx_list[10]"),
        (json.dumps([True] + [0] * 21), "op_idx_list[0]"),
        (json.dumps(["k3_e1"] * 22), "op_idx_list[0]"),
    ],
)
def test_malformed_strings_name_space_field_value_and_allowed(text, field):
    with pytest.raises(InvalidGenotype) as info:
        space.parse(text)
    assert (info.value.space, info.value.field) == ("fbnet", field)
    assert str(info.value).startswith(f"fbnet: {field} ") and "allowed: " in str(info.value)


@pytest.mark.parametrize(
    "bad", [FBNetGenotype(HELP_0.blocks[:21]), FBNetGenotype(list(HELP_0.blocks)), FBNetGenotype(("k3_e9",) * 22), None]
)
def test_validate_rejects(bad):
    with pytest.raises(InvalidGenotype, match="^fbnet: "):
        space.validate(bad)


# --- parameters, sampling, mutation ----------------------------------------------------------------
def test_size_and_distributions():
    dists = space.distributions()
    assert space.size() == 9**22 == int(np.prod([len(d.choices) for d in dists.values()], dtype=object))
    assert tuple(dists) == PARAMS and PARAMS[0] == "layer_00" and PARAMS[-1] == "layer_21"
    assert all(d.choices == BLOCKS for d in dists.values())
    assert space.one_hot(HELP_0).reshape(22, 9).argmax(1).tolist() == HELP_0_INDICES


def test_from_params_rejects_missing_and_unknown():
    params = space.to_params(HELP_0)
    with pytest.raises(InvalidGenotype, match="params keys"):
        space.from_params({**params, "layer_22": "skip"})
    with pytest.raises(InvalidGenotype, match="layer 3 block 'k9_e1'"):
        space.from_params({**params, "layer_03": "k9_e1"})


def test_sample_and_mutate_are_valid_and_deterministic():
    a, b, c = space.sample(30, seed=1), space.sample(30, seed=1), space.sample(30, seed=2)
    assert a == b and a != c and len(set(a)) == 30
    assert all(space.validate(g) is g for g in a)
    for i, g in enumerate(a[:20]):
        m = space.mutate(g, seed=i)
        assert m == space.mutate(g, seed=i)
        assert sum(x != y for x, y in zip(g.blocks, m.blocks)) == 1


def test_registry():
    assert get_space("fbnet") is space and space.num_classes == 100 and space.input_shape == (3, 32, 32)
    assert space.build(HELP_0, num_classes=7).classifier.out_features == 7


# --- network and ONNX ------------------------------------------------------------------------------
EQUIVALENCE_CASES = [
    HELP_0,  # skips with and without a shape change, g2 blocks, residual and strided blocks
    FBNetGenotype(("skip",) * 22),  # identities and the 1x1 projections of the stage changes
    FBNetGenotype(("k3_e1_g2", "k5_e1_g2") * 11),  # channel shuffles everywhere
    FBNetGenotype(("k5_e6", "k3_e3", "k3_e1", "k5_e3") * 5 + ("k3_e6", "k5_e1")),
]


@pytest.mark.parametrize("g", EQUIVALENCE_CASES, ids=lambda g: ",".join(g.blocks[:3]))
def test_onnx_is_valid_and_matches_torch(g):
    torch.manual_seed(0)
    got = assert_onnx_matches_torch(space, g)  # to 1e-4
    assert got.shape == (2, 100)


def test_onnx_writes_each_distinct_block_once_and_names_weights_by_state_dict():
    model = space.to_onnx(HELP_0)
    calls = [n for n in model.graph.node if n.domain == "local"]
    assert len(calls) == 22 - 3  # layers 3, 6 and 7 are identity skips: no node at all
    # Blocks with the same (name, C_in, C_out, stride) share one body: 12 distinct layer shapes.
    same = space.to_onnx(FBNetGenotype(("k3_e3",) * 22))
    assert len(same.functions) == len(set(LAYERS)) == 12
    assert sum(n.domain == "local" for n in same.graph.node) == 22
    weights = {i.name for i in model.graph.input} - {"input"}
    assert weights == {k for k in space.build(HELP_0).state_dict() if not k.endswith("num_batches_tracked")}


def test_text_keeps_static_shapes_after_a_channel_shuffle():
    # The shuffle reshapes back to Shape(x); without propagating that value every layer after the
    # first _g2 block printed "?x?" for its spatial size, hiding the resolution latency depends on.
    text = space.to_text(FBNetGenotype(("k3_e1_g2",) + ("k3_e3",) * 21))
    assert "?" not in text
    assert "Reshape 2 1 > 16x32x32" in text  # the shuffle's output shape
    assert text.count("x4x4") > 0  # the last stage's 4x4 resolution is still written


# --- FLOPs and params against NASFLAT's table ----------------------------------------------------------
# The published numbers count, for one 32x32 image (found by fitting all 5,000 rows, see below):
#   Conv2d / Linear: multiply-accumulates (no biases: the convs have none, the classifier's 100 are
#     left out);  BatchNorm2d: 2 per output element;  ReLU: 1 per element, EXCEPT the ReLU after an
#     inverted-residual block's 1x1 expansion, which is not counted;  AdaptiveAvgPool2d: 1 per
#     input element;  channel shuffles and residual additions: 0.
# Params are all parameters, BatchNorm's affine ones included. Every row then matches exactly.
# (spaces_helpers.leaf_flops; the network has no AvgPool2d.)
def costs_by_layer(net: nn.Module) -> tuple[Counter, Counter]:
    """FLOPs and params of ``net`` on one image, per searchable layer (``blocks.<i>``) and ``fixed``."""
    # An inverted-residual block has two ReLUs (after the expansion and after the depthwise conv);
    # a skip has one or none.
    uncounted = set()
    for block in net.blocks:
        relus = [m for m in block.modules() if isinstance(m, nn.ReLU)]
        if len(relus) == 2:
            uncounted.add(relus[0])

    def part_of(name: str) -> str:
        match = re.match(r"blocks\.\d+", name)
        return match.group(0) if match else "fixed"

    return costs_by_part(net, part_of, uncounted)


def test_flops_and_params_match_nasflat(shared_data):
    archs = torch.load(shared_data / "help" / "fbnet" / "metainfo.pt", weights_only=False)["arch"]
    rows = list(csv.DictReader(open(shared_data / "help" / "fbnet" / "flops_params.csv")))
    assert len(archs) == len(rows) == 5000 and [int(r["fbnet_index"]) for r in rows] == list(range(5000))
    # Every layer's input shape is fixed, so a layer's cost depends only on its block and place:
    # nine networks (every layer one block) price every (layer, block); additivity is checked on
    # full networks below, then all 5,000 rows are priced.
    flops, params = {}, {}
    for block in BLOCKS:
        f, p = costs_by_layer(space.build(FBNetGenotype((block,) * 22)))
        for part in [f"blocks.{i}" for i in range(22)] + ["fixed"]:
            flops[part, block], params[part, block] = f[part], p[part]
    assert len({flops["fixed", b] for b in BLOCKS}) == 1  # stem and head never change

    def price(table: dict, g: FBNetGenotype) -> int:
        return table["fixed", "skip"] + sum(table[f"blocks.{i}", b] for i, b in enumerate(g.blocks))

    for g in space.sample(2, seed=0):
        f, p = costs_by_layer(space.build(g))
        assert (sum(f.values()), sum(p.values())) == (price(flops, g), price(params, g))

    worst_flops = worst_params = 0.0
    for arch, row in zip(archs, rows):
        g = space.parse(json.dumps(arch["op_idx_list"]))
        assert g.blocks == tuple(arch["arch_str"])
        worst_flops = max(worst_flops, abs(price(flops, g) / float(row["flops"]) - 1))
        worst_params = max(worst_params, abs(price(params, g) / float(row["params"]) - 1))
    assert worst_flops < 1e-12 and worst_params < 1e-12  # exact (the brief allows 2%)
