"""Tests of the NDS cell spaces and NB301: string forms, parameters, NNI, networks, ONNX export."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from search_spaces import NDS_SPACES, InvalidGenotype, get_space
from search_spaces.cell import DARTS_OPS, CellGenotype, CellSpace, macro_plan
from search_spaces.profile import count_flops, count_params
from tests.spaces_helpers import assert_onnx_matches_torch, randomize_bn

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ALL = (*NDS_SPACES, "nb301")

# DARTS's searched cell "DARTS_V2" (genotypes.py of quark0/darts), as NDS writes genotypes.
DARTS_V2 = {
    "normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["sep_conv_3x3", 1],
               ["sep_conv_3x3", 1], ["skip_connect", 0], ["skip_connect", 0], ["dil_conv_3x3", 2]],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1],
               ["max_pool_3x3", 0], ["skip_connect", 2], ["skip_connect", 2], ["max_pool_3x3", 1]],
    "reduce_concat": [2, 3, 4, 5],
}  # fmt: skip


def genotypes(space) -> st.SearchStrategy[CellGenotype]:
    """Genotypes built from parameters drawn over the space's distributions."""
    params = st.fixed_dictionaries({k: st.sampled_from(d.choices) for k, d in space.distributions().items()})
    return params.map(space.from_params)


def with_reduce_skip(space, g: CellGenotype) -> CellGenotype:
    """``g`` with the reduction cell's first op a skip_connect on cell input 0 (a FactorizedReduce)."""
    params = space.to_params(g)
    params["reduce/op_2_0"], params["reduce/input_2_0"] = "skip_connect", 0
    return space.from_params(params)


# --- the spaces --------------------------------------------------------------------------------
def test_registry_and_size():
    # DARTS: node i + 2 picks 2 of 7 * (i + 2) (op, input) pairs; two cells; 3 widths x 5 depths
    assert get_space("darts").size() == (14 * 21 * 28 * 35) ** 4 * 15
    assert get_space("nb301").size() == (14 * 21 * 28 * 35) ** 4
    for name in ALL:
        space = get_space(name)
        assert space.name == name
        # every parameter combination is a distinct valid genotype, so size is their product
        assert space.size() == int(np.prod([len(d.choices) for d in space.distributions().values()], dtype=object))


def test_nb301_has_no_width_depth_params():
    keys = get_space("nb301").distributions().keys()
    assert "width" not in keys and "depth" not in keys
    assert {"width", "depth"} <= get_space("darts").distributions().keys()


@pytest.mark.parametrize("name", ALL)
def test_sample_is_deterministic_per_seed(name):
    space = get_space(name)
    assert space.sample(20, seed=7) == space.sample(20, seed=7)
    assert space.sample(20, seed=7) != space.sample(20, seed=8)


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_sample_and_mutate_are_valid_and_mutate_edits_one_param(name, seed):
    space = get_space(name)
    g = space.sample(1, seed=seed)[0]
    assert space.validate(g) is g
    m = space.mutate(g, seed=seed)
    assert space.validate(m) is m
    before, after = space.to_params(g), space.to_params(m)
    assert sum(before[k] != after[k] for k in before) == 1


@pytest.mark.parametrize("name", ALL)
def test_params_use_nni_names_and_round_trip(name):
    space = get_space(name)
    dists = space.distributions()
    assert dists["normal/input_2_0"].choices == (0, 1)
    assert dists[f"reduce/input_{space.nodes + 1}_1"].choices == tuple(range(space.nodes + 1))
    assert dists["normal/op_2_1"].choices == space.ops
    for g in space.sample(20, seed=0):
        params = space.to_params(g)
        assert params.keys() == dists.keys()
        assert all(params[k] in d.choices for k, d in dists.items())
        # entry 2i + k of a cell is key (i + 2, k)
        assert g.normal[5] == (params["normal/op_4_1"], params["normal/input_4_1"])
        assert space.from_params(params) == g


# --- string forms --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_format_parse_round_trip(name, data):
    space = get_space(name)
    g = data.draw(genotypes(space))
    text = space.format(g)
    assert "\n" not in text
    assert space.parse(text) == g


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_corrupted_text_is_rejected_or_still_valid(name, data):
    """An edit of a valid string raises InvalidGenotype (naming the space) or parses to a member."""
    space = get_space(name)
    text = space.format(data.draw(genotypes(space)))
    pos = data.draw(st.integers(0, len(text) - 1))
    junk = data.draw(st.sampled_from(['"', ",", "[", "]", "(", ")", "9", "-1", "0", "x", "", "{}", "null"]))
    corrupted = text[:pos] + junk + text[pos + data.draw(st.integers(0, 4)) :]
    try:
        g = space.parse(corrupted)
    except InvalidGenotype as err:
        assert str(err).startswith(f"{name}: ") and err.space == name
    else:
        assert space.parse(space.format(g)) == g


def test_parse_nds_genotype_json():
    space = get_space("darts")
    g = space.parse(json.dumps({**DARTS_V2, "width": 16, "depth": 20}))
    assert g.normal[7] == ("dil_conv_3x3", 2) and g.reduce_concat == (2, 3, 4, 5)
    assert (g.width, g.depth) == (16, 20)
    assert json.loads(space.format(g)) == {**DARTS_V2, "width": 16, "depth": 20}
    # nb301 reads the same JSON (its width and depth are fixed, so they may be left out)
    nb301 = get_space("nb301")
    assert nb301.parse(json.dumps(DARTS_V2)).normal == g.normal


def test_nb301_string_form():
    space = get_space("nb301")
    g = space.parse(json.dumps(DARTS_V2))
    text = space.format(g)
    # (input, op index) pairs, op indices into DARTS's op order
    assert text.startswith("[[(0, 3), (1, 3), (0, 3), (1, 3), (1, 3), (0, 2), (0, 2), (2, 5)], [(0, 0), (1, 0), (2, 2)")
    assert space.parse(text) == g
    assert space.parse(" " + text + "\n") == g


def test_nb301_strings_of_the_benchmark_round_trip(shared_data):
    archs = json.loads((shared_data / "nb301" / "zc_nasbench301.json").read_text())["cifar10"]
    space = get_space("nb301")
    for arch in archs:
        assert space.format(space.parse(arch)) == arch


def _darts_json(**changes) -> str:
    return json.dumps({**DARTS_V2, "width": 16, "depth": 8, **changes})


_BAD_NORMAL = [list(e) for e in DARTS_V2["normal"]]


@pytest.mark.parametrize(
    "name, text, field, value",
    [
        ("darts", _darts_json(normal=[["conv_9x9", 0]] + _BAD_NORMAL[1:]), "normal[0] op", "conv_9x9"),
        # node 3 (entries 2, 3) may read 0..2, not 3
        ("darts", _darts_json(normal=_BAD_NORMAL[:3] + [["skip_connect", 3]] + _BAD_NORMAL[4:]), "normal[3] input", 3),
        ("darts", _darts_json(normal=_BAD_NORMAL[:6]), "normal entry count", 6),
        ("darts", _darts_json(width=36), "width", 36),
        ("darts", _darts_json(depth=14), "depth", 14),
        ("darts", _darts_json(depth="8"), "depth", "8"),
        ("darts", _darts_json(normal_concat=[2, 3, 4]), "normal_concat", (2, 3, 4)),
        ("darts", _darts_json(reduce_concat=[5, 4, 3, 2]), "reduce_concat", (5, 4, 3, 2)),
        ("darts", _darts_json(extra=1), "unknown JSON key", "extra"),
        ("darts", json.dumps(DARTS_V2), "missing JSON key", "width"),
        ("darts", _darts_json()[:-3], "JSON", _darts_json()[:77] + "..."),
        ("darts", "[1, 2]", "JSON", "[1, 2]"),
        # ENAS concatenates the loose ends: node 3 reads node 2, so 2 is not one
        ("enas", json.dumps({"normal": [["skip_connect", 0]] * 2 + [["skip_connect", 2]] * 2
                                       + [["skip_connect", 0]] * 6,
                             "normal_concat": [2, 3, 4, 5, 6],
                             "reduce": [["skip_connect", 0]] * 10, "reduce_concat": [2, 3, 4, 5, 6],
                             "width": 16, "depth": 4}), "normal_concat", (2, 3, 4, 5, 6)),
        ("nb301", "[[(0, 0)] * 8, [(0, 0)] * 8]", "arch string", "[[(0, 0)] * 8, [(0, 0)] * 8]"),
        ("nb301", str([[(0, 7)] + [(0, 0)] * 7, [(0, 0)] * 8]), "normal[0] op index", 7),
        ("nb301", str([[(0, 0)] * 8, [(0, 0)] * 7]), "reduce entry count", 7),
        ("nb301", str([[(0, 0)] * 8]), "arch string", str([[(0, 0)] * 8])),
        ("nb301", "[[(0, 0)", "arch string", "[[(0, 0)"),
        ("nb301", _darts_json(width=16), "width", 16),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(name, text, field, value):
    with pytest.raises(InvalidGenotype) as info:
        get_space(name).parse(text)
    err = info.value
    assert (err.space, err.field, err.value) == (name, field, value)
    assert str(err).startswith(f"{name}: {field} {value!r} is not allowed; allowed: ")


def test_loose_end_concat_is_derived():
    space = get_space("nasnet")
    g = space.sample(1, seed=3)[0]
    for cell, concat in ((g.normal, g.normal_concat), (g.reduce, g.reduce_concat)):
        used = {j for _, j in cell}
        assert concat == tuple(n for n in range(2, 7) if n not in used)
        assert 6 in concat  # the last node never feeds another one


def test_from_params_rejects_missing_and_unknown_keys():
    space = get_space("nb301")
    params = space.to_params(space.sample(1, seed=0)[0])
    with pytest.raises(InvalidGenotype, match="nb301: unknown param 'width'"):
        space.from_params({**params, "width": 32})
    del params["reduce/op_5_1"]
    with pytest.raises(InvalidGenotype, match="nb301: missing param 'reduce/op_5_1'"):
        space.from_params(params)


# --- NNI 3.0 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_nni_freeze_builds_the_same_network(name, nni_home):
    """Our NNI sample, frozen by NNI, is our network: same modules, names and outputs.

    Loading NNI's state_dict into build() with strict=True checks every op, channel count and
    module path; equal outputs then check the wiring (which inputs each op reads, the concat, the
    reduction positions, i.e. that depth means the same in both).
    """
    pytest.importorskip("nni")
    space = get_space(name)
    nni_space = space.nni_model_space()
    assert tuple(nni_space.op_candidates) == space.ops
    assert (nni_space.num_nodes_per_cell, nni_space.merge_op) == (space.nodes, space.concat_rule)

    sampled = space.sample(2, seed=1)
    if name != "nb301":  # small networks: depth 4 has a reduction right after a reduction
        sampled = [dataclasses.replace(sampled[0], width=16, depth=4),
                   dataclasses.replace(sampled[1], width=24, depth=8)]  # fmt: skip
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for g in [*sampled, with_reduce_skip(space, sampled[0])]:
        nni_model = randomize_bn(nni_space.freeze(space.to_nni(g)))
        ours = space.build(g).eval()
        ours.load_state_dict(nni_model.state_dict(), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), nni_model(x), rtol=0, atol=1e-6)

    # NNI's own random samples convert both ways
    rng, mutables = np.random.RandomState(0), nni_space.simplify().values()
    for _ in range(10):
        sample = {}
        for mutable in mutables:
            mutable.random(sample, rng)
        g = space.from_nni(sample)
        assert space.to_nni(g) == dict(sample)
        assert all(isinstance(v, list) for k, v in sample.items() if "/input_" in k)


def test_from_nni_rejects_bare_inputs():
    space = get_space("darts")
    sample = space.to_nni(space.sample(1, seed=0)[0])
    sample["normal/input_3_1"] = 2
    with pytest.raises(InvalidGenotype, match="darts: normal/input_3_1 2 is not allowed"):
        space.from_nni(sample)


# --- networks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", (4, 8, 12, 16, 20))
def test_macro_structure(depth):
    g = dataclasses.replace(get_space("pnas").sample(1, seed=0)[0], width=24, depth=depth)
    plan = macro_plan(g)
    assert len(plan) == depth
    # reduction cells as in DARTS/pycls NetworkCIFAR: at depth // 3 and 2 * depth // 3
    assert [i for i, p in enumerate(plan) if p.reduce] == [depth // 3, 2 * depth // 3]
    assert [p.c for p in plan] == [24 * 2 ** (i >= depth // 3) * 2 ** (i >= 2 * depth // 3) for i in range(depth)]
    assert all(p.reduce_prev == (i > 0 and plan[i - 1].reduce) for i, p in enumerate(plan))


@pytest.mark.parametrize("name", NDS_SPACES)
@pytest.mark.parametrize("width, depth", [(16, 4), (32, 20), (24, 12)])
def test_forward_at_every_scale(name, width, depth):
    space = get_space(name)
    g = dataclasses.replace(space.sample(1, seed=depth)[0], width=width, depth=depth)
    model = space.build(g).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert space.build(g, num_classes=100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("name", [*NDS_SPACES, "nb301"])
def test_equivalents_are_the_same_network(name):
    """A node sums its two inputs: swapping them gives another genotype (and ONNX text) of the same
    network. With the swapped inputs' weights exchanged, both compute the same function."""
    space = get_space(name)
    g = space.sample(1, seed=3)[0]
    if name != "nb301":
        g = dataclasses.replace(g, width=16, depth=4)
    eqs = space.equivalents(g, 8, seed=0)
    assert eqs[0] == g and 1 < len(eqs) == len(set(eqs)) <= 8 and eqs == space.equivalents(g, 8, seed=0)
    assert space.equivalents(g, 1) == [g] and all(space.validate(e) is e for e in eqs)
    ref = randomize_bn(space.build(g))
    x = torch.randn(2, 3, 32, 32)
    for e in eqs[1:3]:
        state = {}
        for plan in macro_plan(g):
            mine, theirs = (g.reduce, e.reduce) if plan.reduce else (g.normal, e.normal)
            flipped = [i for i in range(space.nodes) if mine[2 * i] != theirs[2 * i]]
            prefix = f"stages.{plan.stage}.{plan.index}.ops."
            for i in flipped:
                state[f"{prefix}{i}.0."], state[f"{prefix}{i}.1."] = f"{prefix}{i}.1.", f"{prefix}{i}.0."
        renamed = {}
        for key, value in ref.state_dict().items():
            old = next((o for o in state if key.startswith(o)), None)
            renamed[key if old is None else state[old] + key[len(old):]] = value
        other = space.build(e)
        other.load_state_dict(renamed)
        with torch.no_grad():
            torch.testing.assert_close(other.eval()(x), ref(x))
    assert len(get_space("nb201").equivalents(get_space("nb201").sample(1, seed=0)[0], 8)) == 1  # no such symmetry


def test_darts_v2_has_the_published_parameter_count():
    """DARTS's train.py logs "param size = 3.349342MB" for DARTS_V2 at C=36, 20 layers
    (auxiliary head excluded): our network at that setting has exactly that many."""
    space = CellSpace("darts36", DARTS_OPS, 4, "all", "DARTS", widths=(36,), depths=(20,))
    with torch.device("meta"):
        model = space.build(space.parse(json.dumps(DARTS_V2)))
    assert count_params(model) == 3_349_342


@pytest.mark.slow
def test_nb301_matches_benchmark_params_and_flops(shared_data):
    """NB301's width 32, depth 8 reproduces the params of all 600 benchmark architectures.

    NASLib counted the cell ops' BatchNorms as non-affine (DARTS's search-mode ops): without their
    weight and bias the count is exact; the plain count is within 2% (about 1% above). NASLib's
    FLOPs also count element-wise work (pooling, BN, ReLU), so our MACs are somewhat below them.
    """
    archs = json.loads((shared_data / "nb301" / "zc_nasbench301.json").read_text())["cifar10"]
    space = get_space("nb301")
    flop_ratios = []
    for i, (arch, record) in enumerate(archs.items()):
        with torch.device("meta"):  # shapes only: cheap to build, nothing to initialise
            model = space.build(space.parse(arch))
        params = count_params(model)
        op_bn = sum(p.numel() for n, m in model.named_modules() if ".ops." in n and isinstance(m, nn.BatchNorm2d)
                    for p in m.parameters())  # fmt: skip
        expected = record["params"]["score"] * 1e6
        assert abs(params - op_bn - expected) <= 1, arch  # the score has 6 decimals (in millions)
        assert abs(params / expected - 1) < 0.02, arch
        if i % 20 == 0:  # FLOPs on every 20th architecture: a forward pass each
            flop_ratios.append(count_flops(model) / (record["flops"]["score"] * 1e6))
    assert 0.88 < min(flop_ratios) and max(flop_ratios) < 1.0, flop_ratios


# --- ONNX ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_onnx_matches_torch(name):
    space = get_space(name)
    sampled = space.sample(3, seed=11)
    if name != "nb301":
        sampled = [dataclasses.replace(g, width=w, depth=d) for g, w, d in zip(sampled, (16, 24, 32), (4, 8, 4))]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for g in [*sampled, with_reduce_skip(space, sampled[0])]:
        assert_onnx_matches_torch(space, g, x)  # to 1e-4


@pytest.mark.parametrize("name", ALL)
def test_onnx_weights_are_named_by_state_dict_keys(name):
    space = get_space(name)
    g = with_reduce_skip(space, space.sample(1, seed=2)[0])
    m = space.to_onnx(g)
    weights = {i.name for i in m.graph.input} - {"input"}
    state = {k for k in space.build(g).state_dict() if not k.endswith("num_batches_tracked")}
    assert weights == state


def test_onnx_depth_adds_calls_not_functions():
    space = get_space("darts")
    g = dataclasses.replace(space.sample(1, seed=5)[0], width=32)
    models = {d: space.to_onnx(dataclasses.replace(g, depth=d)) for d in (8, 20)}
    # each distinct (cell, stage) and preprocessing is defined once, whatever the depth
    assert len(models[20].functions) == len(models[8].functions) <= 16
    calls = [n for n in models[20].graph.node if n.domain == "local"]
    assert len(calls) == 3 * 20  # two preprocessings and the cell, per cell


# --- canonical text (search_spaces.text) ---------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", NDS_SPACES)
def test_distinct_genotypes_give_distinct_texts(name):
    pytest.importorskip("search_spaces.text")
    from search_spaces import onnx_to_text

    space = get_space(name)
    sampled = set(space.sample(1000, seed=random.Random(name).randrange(2**32)))
    texts = {onnx_to_text(space.to_onnx(g)) for g in sampled}
    assert len(texts) == len(sampled)


def test_text_length_grows_slowly_with_depth():
    pytest.importorskip("search_spaces.text")
    from search_spaces import onnx_to_text

    space = get_space("darts")
    for g in space.sample(5, seed=3):
        deep = onnx_to_text(space.to_onnx(dataclasses.replace(g, width=32, depth=20)))
        shallow = onnx_to_text(space.to_onnx(dataclasses.replace(g, width=32, depth=4)))
        assert len(deep) <= 3 * len(shallow)
