"""Loaders: every source format (generated small files, and the shared data when present), the
errors a user sees for bad files, and the architecture-level splits."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlm_nas.core import Example
from rlm_nas.data import (
    DataError,
    NotACellSpace,
    group_by_arch,
    hold_out,
    load_arch_values,
    load_dir,
    load_generic,
    load_help_latency,
    load_nb201_accuracy,
    load_nb301,
    load_nds,
    split_by_arch,
    synthetic_complexity,
)
from search_spaces import get_space

NB201_A = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
NB201_B = "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"


# --- NDS sweeps -----------------------------------------------------------------------------------
def nds_record(space: str, seed: int, err: float = 6.0, params=512346, flops=81234567, width=None) -> dict:
    """One record in the NDS sweep format (docs/nds-format.md) for a sampled genotype."""
    g = get_space(space).sample(1, seed=seed)[0]
    genotype = {"normal": [list(e) for e in g.normal], "normal_concat": list(g.normal_concat),
                "reduce": [list(e) for e in g.reduce], "reduce_concat": list(g.reduce_concat)}
    return {"net": {"genotype": genotype, "width": width or g.width, "depth": g.depth, "aux": False, "drop_prob": 0.0},
            "optim": {"base_lr": 0.1, "wd": 5e-4, "max_ep": 100}, "params": params, "flops": flops,
            "test_ep_top1": [50.0, 20.0, err], "min_test_top1": err - 0.1, "train_ep_top1": [1.0], "rng_seed": 1}


def write_json(path, doc):
    path.write_text(json.dumps(doc))  # json writes float NaN as NaN, as Python-made NDS files do
    return path


def test_nds_plain_list(tmp_path):
    recs = [nds_record("darts", i, err=5.0 + i) for i in range(4)]
    loaded = load_nds(write_json(tmp_path / "DARTS.json", recs))
    assert (len(loaded.examples), loaded.missing, loaded.skipped) == (12, 0, 0)
    acc = [e for e in loaded.examples if e.metric == "accuracy:cifar10"]
    assert [e.value for e in acc] == [95.0, 94.0, 93.0, 92.0]  # 100 - final test error, in record order
    space = get_space("darts")
    g0 = space.sample(1, seed=0)[0]
    assert acc[0].space == "darts" and space.parse(acc[0].arch) == g0 and acc[0].arch == space.format(g0)
    assert {(e.metric, e.value) for e in loaded.examples if e.arch == acc[0].arch} >= {("params", 512346.0), ("flops", 81234567.0)}


def test_nds_wrapper_in_fix_w_d_lr_wd_and_missing(tmp_path):
    top = [nds_record("pnas", 1), nds_record("pnas", 2)]
    bad = nds_record("pnas", 3, params=None)
    bad["test_ep_top1"][-1] = float("nan")
    loaded = load_nds(write_json(tmp_path / "PNAS_fix-w-d.json", {"top": top, "mid": [bad]}))
    assert {e.space for e in loaded.examples} == {"pnas"}
    assert (len(loaded.examples), loaded.missing) == (7, 2)  # 2x3 + flops of the bad one; its acc and params missing

    imagenet = load_nds(write_json(tmp_path / "ENAS_in.json", [nds_record("enas", 4)]))
    assert {e.metric for e in imagenet.examples} == {"accuracy:imagenet", "params", "flops"}
    lrwd = load_nds(write_json(tmp_path / "DARTS_lr-wd.json", [nds_record("darts", 5)] * 2))
    assert len(lrwd.examples) == 6 and {e.space for e in lrwd.examples} == {"darts"}
    # repeated measurements of one network (seeds, lr/wd) become one training item, averaged
    items = group_by_arch(lrwd.examples + [Example("darts", lrwd.examples[0].arch, "accuracy:cifar10", 90.0)])
    assert len(items) == 1 and math.isclose(dict(zip(items[0].metrics, items[0].values))["accuracy:cifar10"], (94 + 94 + 90) / 3)


def test_nds_rejects_non_cell_and_skips_outside_space(tmp_path):
    for name in ("ResNet.json", "ResNeXt-A_in.json", "Vanilla.json"):
        with pytest.raises(NotACellSpace, match=rf"{name}.*not cell spaces"):
            load_nds(write_json(tmp_path / name, [{"net": {}}]))
    with pytest.raises(DataError, match="cannot tell the NDS space"):
        load_nds(write_json(tmp_path / "sweep.json", []))
    loaded = load_nds(write_json(tmp_path / "NASNet.json", [nds_record("nasnet", 0), nds_record("nasnet", 1, width=48)]))
    assert (len(loaded.examples), loaded.skipped) == (3, 1) and "width 48" in loaded.note
    with pytest.raises(DataError, match=r"record 0: field net"):
        load_nds(write_json(tmp_path / "Amoeba.json", [{"net": {"width": 16}}]))


# --- generic CSV / JSONL and the fine-tune CSV ----------------------------------------------------
def test_generic_csv_and_jsonl(tmp_path):
    csv_file = tmp_path / "mine.csv"
    csv_file.write_text(f"space,arch,metric,value\nnb201,{NB201_A},latency:mydev,1.5\nnb201,{NB201_B},latency:mydev,nan\n"
                        f"nb201,{NB201_B},accuracy:cifar10,\n")
    loaded = load_generic(csv_file)
    assert loaded.examples == [Example("nb201", NB201_A, "latency:mydev", 1.5)] and loaded.missing == 2
    jl = tmp_path / "mine.jsonl"
    jl.write_text(json.dumps({"space": "nb201", "arch": NB201_B, "metric": "flops", "value": 7.9e6}) + "\n\n"
                  + json.dumps({"space": "nb201", "arch": NB201_A, "metric": "flops", "value": None}) + "\n")
    loaded = load_generic(jl)
    assert loaded.examples == [Example("nb201", NB201_B, "flops", 7.9e6)] and loaded.missing == 1
    ft = tmp_path / "ft.csv"
    ft.write_text(f'arch,value\n"{NB201_A}",2.5\n')
    assert load_arch_values(ft, "nb201", "latency:new").examples == [Example("nb201", NB201_A, "latency:new", 2.5)]
    ft.write_text(f'arch,value,space,metric,cv\n"{NB201_A}",2.5,nb201,latency:new,0.01\n')  # rlm_nas.measure's CSV
    assert load_arch_values(ft, "nb201", "latency:new").examples == [Example("nb201", NB201_A, "latency:new", 2.5)]
    with pytest.raises(DataError, match=r"line 2: column metric: 'latency:new' differs from --metric 'latency:other'"):
        load_arch_values(ft, "nb201", "latency:other")


@pytest.mark.parametrize(
    "content, pattern",
    [
        ("", r"empty"),
        ("space,arch,value\nnb201,x,1\n", r"line 1: missing column\(s\) metric"),
        (f"space,arch,metric,value\nnb201,{NB201_A},flops,1\nnb201,{NB201_A},flops,12ms\n", r"line 3: column value: value '12ms' is not a number"),
        (f"space,arch,metric,value\nnb999,{NB201_A},flops,1\n", r"line 2: column space.*unknown space 'nb999'; known spaces: nasnet"),
        (f"space,arch,metric,value\nnb201,{NB201_A},latency,1\n", r"line 2: column metric: metric 'latency' is not a valid.*latency:<device>"),
        (f"space,arch,metric,value\nnb201,{NB201_A},speed,1\n", r"line 2: column metric: metric 'speed'"),
        ("space,arch,metric,value\nnb201,|bogus~0|,flops,1\n", r"line 2: column arch: invalid nb201 architecture"),
        (f"space,arch,metric,value\nnb201,{NB201_A},flops,inf\n", r"line 2: column value: value inf is infinite"),
    ],
)
def test_generic_csv_errors_name_file_row_and_column(tmp_path, content, pattern):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(DataError, match=pattern) as err:
        load_generic(f)
    assert str(f) in str(err.value)


def test_bad_jsonl_and_finetune_csv(tmp_path):
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"space": "nb201", "arch": "x", "metric": "flops"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 1: missing key\(s\) value"):
        load_generic(jl)
    ft = tmp_path / "ft.csv"
    ft.write_text("arch,value\n")
    with pytest.raises(DataError, match="header but no rows"):
        load_arch_values(ft, "nb201", "latency:x")
    with pytest.raises(DataError, match=r"--metric: metric 'lat'"):
        load_arch_values(ft, "nb201", "lat")


# --- HELP .pt, NB201 CSV, NASLib JSON in their upstream formats (tiny generated copies) -------------
def test_help_nb201_accuracy_nb301_formats(tmp_path):
    d = tmp_path / "help" / "nasbench201"
    (d / "latency").mkdir(parents=True)
    torch.save({NB201_B: 0, NB201_A: 1}, d / "str_arch2idx.pt")
    torch.save([3.5, float("nan")], d / "latency" / "1080ti_1.pt")
    loaded = load_help_latency(d / "latency" / "1080ti_1.pt")
    assert loaded.examples == [Example("nb201", NB201_B, "latency:1080ti_1", 3.5)] and loaded.missing == 1

    f = d / "fbnet" / "latency"
    f.mkdir(parents=True)
    fb = get_space("fbnet")
    arch = fb.format(fb.sample(1, seed=0)[0])
    torch.save({"dataset": "cifar100", "num_classes": 100, "arch": [{"arch_str": arch.split(","), "op_idx_list": []}]},
               d / "fbnet" / "metainfo.pt")
    torch.save([12.0], f / "pixel3.pt")
    assert load_help_latency(f / "pixel3.pt").examples == [Example("fbnet", arch, "latency:pixel3", 12.0)]

    acc = tmp_path / "nb201" / "accuracy.csv"
    acc.parent.mkdir()
    acc.write_text(f"nb201_index,arch_str,cifar10_valid,cifar100,imagenet16_120\n1,{NB201_A},90.5,70.1,NaN\n")
    loaded = load_nb201_accuracy(acc)
    assert {(e.metric, e.value) for e in loaded.examples} == {("accuracy:cifar10", 90.5), ("accuracy:cifar100", 70.1)}
    assert loaded.missing == 1 + 3 * (15625 - 1)  # the NaN cell, and every architecture without a row

    key = "[[(0, 0), (1, 5), (1, 1), (0, 1), (1, 3), (0, 3), (1, 3), (3, 2)], [(1, 0), (0, 2), (1, 3), (0, 3), (3, 0), (0, 1), (2, 0), (3, 6)]]"
    nb301 = write_json(tmp_path / "zc_nasbench301.json", {"cifar10": {key: {"val_accuracy": 93.3, "flops": {"score": 1.0}},
                                                                       "[[(0, 0)], []]": {"val_accuracy": 90.0}}})
    with pytest.raises(DataError, match=r"zc_nasbench301.json: arch '\[\[\(0, 0\)\], \[\]\]'"):
        load_nb301(nb301)


def test_load_dir_reports_each_source(tmp_path):
    (tmp_path / "nds").mkdir()
    darts = write_json(tmp_path / "nds" / "DARTS.json", [nds_record("darts", 0)])
    write_json(tmp_path / "nds" / "ResNet.json", [])
    (tmp_path / "mine.csv").write_text(f"space,arch,metric,value\nnb201,{NB201_A},latency:dev,2\nnb201,{NB201_B},latency:dev,NaN\n")
    examples, report = load_dir(tmp_path, progress=False)
    by = {r["source"]: r for r in report}
    assert len(examples) == 4
    assert (by["nds/DARTS.json"]["examples"], by["mine.csv"]["examples"], by["mine.csv"]["missing"]) == (3, 1, 1)
    assert by["nds/ResNet.json"]["examples"] == 0 and "not cell spaces" in by["nds/ResNet.json"]["note"]
    darts.unlink()
    with pytest.raises(DataError, match="found no labelled examples"):
        load_dir(tmp_path / "nds", progress=False)


# --- splits ---------------------------------------------------------------------------------------
def test_split_by_arch_keeps_architectures_whole():
    examples = [Example(s, f"a{i}", m, float(i)) for s in ("nb201", "fbnet") for i in range(50) for m in ("params", "flops")]
    train, val = split_by_arch(examples, 0.2, seed=3)
    tk, vk = {(e.space, e.arch) for e in train}, {(e.space, e.arch) for e in val}
    assert not tk & vk and len(train) + len(val) == len(examples)
    assert sorted(sum(1 for s, _ in vk if s == sp) for sp in ("nb201", "fbnet")) == [10, 10]  # each space split alone
    assert split_by_arch(examples, 0.2, seed=3) == (train, val) and split_by_arch(examples, 0.2, seed=4)[1] != val
    kept, held = hold_out(examples, [("fbnet", "a1"), ("nb201", "a7")])
    assert {(e.space, e.arch) for e in held} == {("fbnet", "a1"), ("nb201", "a7")} and len(held) == 4 and len(kept) == 196


def test_synthetic_complexity_is_exact():
    from search_spaces.profile import count_flops, count_params

    loaded = synthetic_complexity(["nb201", "darts"], per_space=2, seed=0, progress=False)
    assert len(loaded.examples) == 8
    space = get_space("darts")
    g = space.sample(2, seed=0)[1]
    net = space.build(g)
    got = {e.metric: e.value for e in loaded.examples if e.arch == space.format(g)}
    assert got == {"params": count_params(net), "flops": count_flops(net, space.input_shape)}


# --- the shared data ------------------------------------------------------------------------------
def test_shared_help_latency_counts(shared_data):
    nb = load_help_latency(shared_data / "help/nasbench201/latency/pixel3.pt")
    assert (len(nb.examples), nb.missing) == (14125, 1500)  # 1,500 architectures are reserved (NaN)
    assert nb.examples[0].metric == "latency:pixel3" and len({e.arch for e in nb.examples}) == 14125
    fb = load_help_latency(shared_data / "help/fbnet/latency/1080ti_1.pt")
    assert (len(fb.examples), fb.missing) == (4500, 500)
    assert all(get_space("fbnet").format(get_space("fbnet").parse(e.arch)) == e.arch for e in fb.examples[:50])
    acc = load_nb201_accuracy(shared_data / "nb201/accuracy.csv")
    assert (len(acc.examples), acc.missing) == (3 * 14125, 3 * 1500)
    nb301 = load_nb301(shared_data / "nb301/zc_nasbench301.json")
    assert (len(nb301.examples), nb301.missing) == (600, 0)


def test_shared_load_dir(shared_data):
    examples, report = load_dir(shared_data, progress=False)
    by = {r["source"]: r for r in report}
    assert sum(1 for s in by if s.startswith("help/nasbench201/latency/")) == 22
    assert sum(1 for s in by if s.startswith("help/fbnet/latency/")) == 22
    assert by["nb201/flops_params.csv"]["examples"] == 0 and "skipped" in by["nb201/flops_params.csv"]["note"]
    assert len(examples) == 22 * 14125 + 22 * 4500 + 3 * 14125 + 600
    assert len({(e.space, e.arch) for e in examples}) == 14125 + 4500 + 600  # reserved archs have no label at all
