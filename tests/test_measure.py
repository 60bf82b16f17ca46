"""Tests of rlm_nas.measure: timing with ONNX Runtime, CSV + sidecar, resume, failures, CLI errors.

Models are tiny hand-made conv nets built with the spaces' own GraphBuilder (weights as shape-only
graph inputs, exactly what ``space.to_onnx`` returns), so the tests need no search space and take
a few seconds on a shared 2-core machine; one test uses a real space once it is importable.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from rlm_nas import measure as M
from search_spaces.onnx_graph import GraphBuilder

FAST = M.Settings(warmup=1, repeats=5, timeout=30.0)


def conv_net(width: int, depth: int = 2) -> onnx.ModelProto:
    """Conv(3->width) -> BN -> ReLU, then (depth-1) Conv(width->width) -> BN -> ReLU, global pool, Linear."""
    gb = GraphBuilder()
    x = gb.input("input", (1, 3, 16, 16))
    c_in = 3
    for i in range(depth):
        w = gb.weight(f"conv{i}.weight", (width, c_in, 3, 3))
        x = gb.node("Conv", [x, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        bn = [gb.weight(f"bn{i}.{k}", (width,)) for k in ("weight", "bias", "running_mean", "running_var")]
        x = gb.node("Relu", [gb.node("BatchNormalization", [x, *bn])])
        c_in = width
    x = gb.node("Flatten", [gb.node("GlobalAveragePool", [x])])
    y = gb.node("Gemm", [x, gb.weight("fc.weight", (10, width)), gb.weight("fc.bias", (10,))], transB=1)
    return gb.build({y: (1, 10)})


def slow_net() -> onnx.ModelProto:
    """64 chained 1024x1024 MatMuls: ~140 GFLOP per run, seconds on one thread (for the timeout).

    One shared weight keeps the model at 4 MB, so building it costs nothing next to running it.
    """
    gb = GraphBuilder()
    x = gb.input("input", (1024, 1024))
    for _ in range(64):
        x = gb.node("MatMul", [x, gb.weight("w", (1024, 1024))])
    return gb.build({x: (1024, 1024)})


def cands(*widths):
    return [(f"w{w}", lambda w=w: conv_net(w)) for w in widths]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_random_weights_become_initializers_and_run():
    m = M.with_random_weights(conv_net(8))
    assert [i.name for i in m.graph.input] == ["input"]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    assert inits["conv1.weight"].shape == (8, 8, 3, 3) and np.abs(inits["conv1.weight"]).max() <= 1 / np.sqrt(72)
    assert (inits["bn0.running_var"] > 0).all()  # else the BatchNorm fold would produce NaNs
    out = ort.InferenceSession(m.SerializeToString()).run(None, {"input": np.ones((1, 3, 16, 16), np.float32)})[0]
    assert out.shape == (1, 10) and np.isfinite(out).all()


def test_three_candidates_give_a_valid_csv_and_sidecar(tmp_path):
    out = tmp_path / "lat.csv"
    meta = {"metric": "latency:test-1c", "space": "hand", "seed": 0, "batch": 1, "provider": "cpu", "threads": 1}
    results = M.measure_to_csv(cands(4, 8, 16), out, FAST, meta)
    rows = read_csv(out)
    assert rows[0] == ["arch", "value", "space", "metric", "cv"]
    assert [r[0] for r in rows[1:]] == ["w4", "w8", "w16"]
    assert all(float(r[1]) > 0 and r[2:4] == ["hand", "latency:test-1c"] and 0 <= float(r[4]) < 5 for r in rows[1:])
    side = json.loads((tmp_path / "lat.meta").read_text())
    assert side["metric"] == "latency:test-1c" and side["threads"] == 1 and side["failed"] == {}
    assert all(len(r.times_ms) == FAST.repeats for r in results)
    assert "3 measured, 0 failed; CV median" in M.summarize(results)


def test_a_group_is_timed_together_and_a_bad_model_fails_alone():
    bad = conv_net(8)
    bad.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 5  # conv expects 3 channels
    models = [M.with_random_weights(m).SerializeToString() for m in (conv_net(4), bad, conv_net(16))]
    (s4, t4), (s_bad, err), (s16, t16) = M._time_group(models, M.Settings(warmup=1, repeats=4))
    assert s4 == s16 == "ok" and len(t4) == len(t16) == 4 and all(t > 0 for t in t4 + t16)
    assert s_bad == "error" and "Input channels C is not equal to kernel channels" in err


def test_resume_appends_without_duplicates_and_refuses_other_settings(tmp_path):
    out = tmp_path / "lat.csv"
    meta = {"metric": "latency:test-1c", "space": "hand", "seed": 0, "batch": 1, "provider": "cpu", "threads": 1}
    M.measure_to_csv(cands(4, 8), out, FAST, meta)
    first = read_csv(out)
    # Same sequence, longer (as space.sample(n, seed) is a prefix of sample(n+k, seed)), with a repeat.
    results = M.measure_to_csv(cands(4, 8, 16, 8), out, FAST, meta)
    rows = read_csv(out)
    assert [r.arch for r in results] == ["w16"]  # only the new arch was timed
    assert rows[: len(first)] == first and [r[0] for r in rows[1:]] == ["w4", "w8", "w16"]
    with pytest.raises(ValueError, match="threads: file has 1, now 2"):
        M.measure_to_csv(cands(4), out, FAST, {**meta, "threads": 2})


def test_failures_and_timeouts_are_logged_and_skipped(tmp_path, caplog):
    def broken_build():
        raise KeyError("no such op")

    bad_shapes = conv_net(8)
    bad_shapes.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 5  # conv expects 3 channels
    items = [("slow", slow_net), ("crash", broken_build), ("bad", lambda: bad_shapes)] + cands(4)
    out = tmp_path / "lat.csv"
    meta = {"metric": "latency:test-1c", "space": "hand", "seed": 0, "batch": 1, "provider": "cpu", "threads": 1}
    with caplog.at_level(logging.WARNING, logger="rlm_nas.measure"):
        results = M.measure_to_csv(items, out, M.Settings(warmup=0, repeats=3, timeout=1.0), meta)
    errors = {r.arch: r.error for r in results}
    assert errors["slow"] == "timed out after 1 s"
    assert errors["crash"].startswith("KeyError") and errors["bad"] and errors["w4"] is None
    assert [r[0] for r in read_csv(out)[1:]] == ["w4"]  # the worker was replaced after the timeout
    assert set(json.loads((tmp_path / "lat.meta").read_text())["failed"]) == {"slow", "crash", "bad"}
    assert "skipped slow: timed out" in caplog.text


def test_check_gives_spearman_of_two_passes(capsys):
    # ~0.02, ~0.2 and ~2 ms: 10x apart, so even a busy machine cannot flip the order.
    rho = M.check(cands(4, 32, 128), FAST)
    assert rho == pytest.approx(1.0)
    assert "pass 2: 3 measured, 0 failed" in capsys.readouterr().out


def test_short_cpu_names():
    assert M.short_cpu_name("Intel(R) Xeon(R) Gold 6226 CPU @ 2.70GHz") == "xeon-gold-6226"
    assert M.short_cpu_name("AMD EPYC 7763 64-Core Processor") == "epyc-7763"
    assert M.short_cpu_name("AMD Ryzen 9 5950X 16-Core Processor") == "ryzen-9-5950x"
    assert M.cpu_device_name(2).endswith("-2c")
    from rlm_nas.core import check_metric

    check_metric(f"latency:{M.cpu_device_name(1)}")  # the default name is a valid metric


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime-gpu present")
def test_cuda_without_onnxruntime_gpu_fails_clearly(capsys):
    with pytest.raises(SystemExit) as e:
        M.main(["--space", "nb201", "-n", "1", "--provider", "cuda", "--device-name", "gpu", "--out", "x.csv"])
    assert e.value.code == 2
    assert "needs onnxruntime-gpu" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["-n", "0"], "must be > 0"),
        (["-n", "1", "--repeats", "0"], "must be > 0"),
        (["-n", "1", "--warmup", "-1"], "must be >= 0"),
        (["-n", "1", "--timeout", "0"], "must be > 0"),
        (["-n", "1", "--provider", "tpu"], "invalid choice"),
        (["-n", "1", "--device-name", "My CPU"], "not a valid metric name"),
        (["-n", "1", "--cpus", "9999"], "--cpus '9999'"),
        (["-n", "1", "--check"], "--check (which writes nothing) without --out"),
        (["-n", "1", "--space", "nope"], "unknown space 'nope'"),
    ],
)
def test_bad_flags_exit_2_with_a_message(args, message, capsys):
    base = ["--space", "nb201", "--out", "x.csv"]
    with pytest.raises(SystemExit) as e:
        M.main(base + args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("search_spaces.nb201") is None, reason="search_spaces.nb201 not landed yet")
def test_cli_measures_real_nb201_candidates(tmp_path, capsys):
    out = tmp_path / "nb201.csv"
    args = ["--space", "nb201", "-n", "3", "--warmup", "1", "--repeats", "3", "--device-name", "test-1c", "--out", str(out)]
    assert M.main(args) == 0
    rows = read_csv(out)
    assert len(rows) == 4 and all(r[0].startswith("|") and float(r[1]) > 0 for r in rows[1:])
    side = json.loads((tmp_path / "nb201.meta").read_text())
    assert side["metric"] == "latency:test-1c" and side["threads"] == 1 and side["onnxruntime"] == ort.__version__
    assert M.main(args) == 0 and len(read_csv(out)) == 4  # resume: nothing new, no duplicates
    # The same file is a fine-tune CSV and a generic CSV, and its sidecar does not trip load_dir.
    from rlm_nas import data

    archs = [r[0] for r in rows[1:]]
    assert [e.value for e in data.load_arch_values(out, "nb201", "latency:test-1c").examples] == [float(r[1]) for r in rows[1:]]
    generic = data.load_generic(out).examples
    assert [(e.space, e.metric) for e in generic] == [("nb201", "latency:test-1c")] * 3 and len({e.arch for e in generic}) == len(archs)
    examples, _ = data.load_dir(tmp_path, progress=False)
    assert len(examples) == 3
