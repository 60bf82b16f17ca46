"""The trainer end to end on a tiny generated data folder: outputs, determinism, exact resume after
a kill, the time budget, DDP over 2 gloo processes, and a clear error for bad data."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rlm_nas.train import main
from search_spaces import get_space

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config", "tiny", "--batch-size", "8", "--max-steps", "8", "--eval-every", "4", "--eval-archs", "8",
        "--checkpoint-every", "2", "--no-progress"]


def toy_folder(path: Path, n: int = 40) -> Path:
    """A user's CSV of ``n`` NB201 archs with two labels that depend on the ops (learnable)."""
    space = get_space("nb201")
    rows = ["space,arch,metric,value"]
    for g in space.sample(n, seed=0):
        a = space.format(g)
        c3, c1, none = a.count("nor_conv_3x3"), a.count("nor_conv_1x1"), a.count("none")
        rows += [f'nb201,"{a}",latency:toy,{1 + 2 * c3 + c1 + 0.1 * none:.3f}', f'nb201,"{a}",accuracy:toy,{70 + 3 * c3 + 2 * c1 - 4 * none}']
    path.mkdir(parents=True, exist_ok=True)
    (path / "toy.csv").write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return toy_folder(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """One uninterrupted in-process run that other tests compare against."""
    out = tmp_path_factory.mktemp("ref")
    assert main(["--data", str(data), "--out", str(out), *ARGS]) == 0
    return out


def weights(directory: Path) -> dict:
    return load_file(str(directory / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def test_outputs_and_determinism(reference, data, tmp_path):
    from rlm_nas.model import RLM

    rlm = RLM.from_pretrained(reference)  # the best model is what OUT/ holds
    assert set(rlm.metrics) == {"accuracy:toy", "latency:toy"}
    assert rlm.known_pairs == {("nb201", "accuracy:toy"), ("nb201", "latency:toy")}
    m = json.loads((reference / "metrics.json").read_text())
    assert m["steps"] == 8 and [h["step"] for h in m["history"]] == [4, 8]
    assert {(r["space"], r["metric"]) for r in m["val"]} == {("nb201", "accuracy:toy"), ("nb201", "latency:toy")}
    assert all(set(r) == {"space", "metric", "n", "spearman", "kendall"} and r["n"] == 4 for r in m["val"])
    held = {tuple(a) for a in m["split"]["val_archs"]}
    assert len(held) == 4 and all(s == "nb201" for s, _ in held)  # 10% of 40 architectures, whole
    assert m["sources"][0]["examples"] == 80
    # a second run with the same seed is bit-identical, in weights and in the logged losses
    out = tmp_path / "again"
    assert main(["--data", str(data), "--out", str(out), *ARGS]) == 0
    assert same_weights(reference / "last", out / "last")
    assert json.loads((out / "metrics.json").read_text())["history"] == m["history"]


def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rlm_nas.train", "--data", str(data), "--out", str(out), *ARGS, *extra]


def test_resume_after_kill_continues_exactly(reference, data, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(_train_cmd(data, out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (out / "last" / "state.pt").exists():  # the first checkpoint (step 2)
            assert proc.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    import torch

    saved = torch.load(out / "last" / "state.pt", weights_only=False)["step"]
    assert 2 <= saved < 8
    res = subprocess.run(_train_cmd(data, out, "--resume"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"at step {saved}" in res.stdout
    assert json.loads((out / "metrics.json").read_text())["steps"] == 8
    assert same_weights(reference / "last", out / "last")  # as if it had never been interrupted


def test_time_budget_and_exclude(data, tmp_path, capsys):
    from rlm_nas.model import RLM

    out = tmp_path / "short"
    test_split = [["nb201", get_space("nb201").format(g)] for g in get_space("nb201").sample(40, seed=0)[:5]]
    (tmp_path / "split.json").write_text(json.dumps({"archs": test_split}))  # as benchmarks/test_split.json
    argv = ["--data", str(data), "--out", str(out), *ARGS, "--max-minutes", "0.0001", "--exclude", str(tmp_path / "split.json"),
            "--encoder", "t5"]
    assert main(argv) == 0
    assert "5 architectures (10 labels) left out" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert not {tuple(a) for a in test_split} & {tuple(a) for a in m["split"]["val_archs"]}
    assert m["steps"] == 1 and "--max-minutes" in m["stopped"]
    assert (out / "last" / "state.pt").is_file()
    rlm = RLM.from_pretrained(out)
    assert rlm.config.encoder == "t5"
    assert rlm.predict([m["split"]["val_archs"][0][1]], ["latency:toy"], space="nb201", num_samples=2).median.shape == (1, 1)


def measured_folder(tmp_path: Path) -> Path:
    """A second data folder: 20 NB201 rows of a metric the toy data lacks (``latency:mine``)."""
    extra = tmp_path / "measured"
    extra.mkdir()
    space = get_space("nb201")
    rows = [f'nb201,"{space.format(g)}",latency:mine,{1 + i % 5}' for i, g in enumerate(space.sample(20, seed=3))]
    (extra / "mine.csv").write_text("space,arch,metric,value\n" + "\n".join(rows) + "\n")
    return extra


def test_several_data_folders_and_excluded_metrics(data, tmp_path, capsys):
    """``--data`` takes several folders; ``--exclude-metrics`` makes a metric unknown to the model."""
    from rlm_nas.model import RLM

    extra = measured_folder(tmp_path)
    out = tmp_path / "out"
    assert main(["--data", str(data), str(extra), "--out", str(out), *ARGS, "--max-steps", "2",
                 "--exclude-metrics", "accuracy:*"]) == 0
    assert "--exclude-metrics: ['accuracy:toy']" in capsys.readouterr().out
    assert set(RLM.from_pretrained(out).metrics) == {"latency:toy", "latency:mine"}
    assert json.loads((out / "metrics.json").read_text())["split"]["exclude_metrics"] == ["accuracy:*"]


def test_second_stage_from_a_checkpoint_keeps_its_tokenizer_and_validation(reference, data, tmp_path, capsys):
    """``--init`` continues from a trained model with a fresh schedule; a new metric in the data is added."""
    from rlm_nas.model import RLM

    extra = measured_folder(tmp_path)
    out = tmp_path / "stage2"
    assert main(["--data", str(data), str(extra), "--out", str(out), *ARGS, "--max-steps", "2",
                 "--init", str(reference), "--holdout", str(reference / "metrics.json")]) == 0
    assert f"model from {reference}" in capsys.readouterr().out
    assert (out / "tokenizer.json").read_text() == (reference / "tokenizer.json").read_text()
    assert set(RLM.from_pretrained(out).metrics) == {"latency:toy", "accuracy:toy", "latency:mine"}
    val = lambda d: json.loads((d / "metrics.json").read_text())["split"]["val_archs"]  # noqa: E731
    assert {tuple(a) for a in val(out)} == {tuple(a) for a in val(reference)}
    assert not same_weights(reference, out)


def test_a_run_with_another_runs_tokenizer_joins_it_in_an_ensemble(reference, data, tmp_path):
    """``--tokenizer`` starts from fresh weights (another seed) but reads text like ``reference``."""
    from rlm_nas.model import RLM

    out = tmp_path / "second"
    assert main(["--data", str(data), "--out", str(out), *ARGS, "--max-steps", "2", "--seed", "1",
                 "--tokenizer", str(reference), "--holdout", str(reference / "metrics.json")]) == 0
    assert (out / "tokenizer.json").read_text() == (reference / "tokenizer.json").read_text()
    assert len(RLM.ensemble([RLM.from_pretrained(reference), RLM.from_pretrained(out)]).member_modules) == 2
    assert main(["--data", str(data), "--out", str(tmp_path / "bad"), *ARGS, "--tokenizer", str(tmp_path / "nowhere")]) == 2
    assert main(["--data", str(data), "--out", str(tmp_path / "bad"), *ARGS, "--tokenizer", str(reference), "--init", str(reference)]) == 2


def test_zero_steps_scores_the_init_weights_unchanged(reference, data, tmp_path):
    """``--max-steps 0 --init CKPT`` trains nothing and writes the validation scores of CKPT's weights."""
    out = tmp_path / "score"
    assert main(["--data", str(data), "--out", str(out), *ARGS, "--max-steps", "0",
                 "--init", str(reference), "--holdout", str(reference / "metrics.json")]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 0 and m["best"]["step"] == 0 and m["val"]
    assert same_weights(reference, out)
    with pytest.raises(SystemExit):
        main(["--data", str(data), "--out", str(tmp_path / "bad"), *ARGS, "--max-steps", "-1"])


def test_ddp_two_gloo_processes(data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rlm_nas.train",
           "--data", str(data), "--out", str(out), *ARGS, "--max-steps", "3", "--eval-every", "3", "--synthetic-per-space", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 process(es)" in res.stdout and "steps of 16 architectures" in res.stdout
    # The processes share the texts they convert: rank 0 holds all 43 training architectures' texts
    # (the tokenizer's corpus is all of them) but converted only part of them.
    distinct, converted = map(int, re.search(r"texts: (\d+) distinct, (\d+) converted", res.stdout).groups())
    assert distinct == 43 and converted < distinct
    ddp = json.loads((out / "metrics.json").read_text())
    assert ddp["steps"] == 3
    assert (out / "model.safetensors").is_file()
    # The two processes split the exact counts and the validation predictions between them; one
    # process scoring the same weights on the same split gets the same counts and the same scores.
    solo = tmp_path / "solo"
    assert main(["--data", str(data), "--out", str(solo), *ARGS, "--synthetic-per-space", "2", "--init", str(out),
                 "--max-steps", "0", "--holdout", str(out / "metrics.json")]) == 0
    one = json.loads((solo / "metrics.json").read_text())
    assert one["sources"] == ddp["sources"]
    assert len(ddp["val"]) > 2 and one["val"] == ddp["val"]


def test_bad_data_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("space,arch,metric,value\nnb201,|x~0|,latency:a,1\n")
    assert main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--config", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "bad.csv: line 2: column arch: invalid nb201 architecture" in err and "Traceback" not in err


def test_batch_order_keeps_batches_within_a_space():
    from rlm_nas.train import batch_order

    spaces = ["nb201"] * 37 + ["fbnet"] * 20 + ["darts"] * 5
    order = batch_order(spaces, 8, seed=0, epoch=0)
    assert sorted(order.tolist()) == list(range(len(spaces)))  # every item once
    batches = [{spaces[i] for i in order[j:j + 8]} for j in range(0, len(order), 8)]
    # 4 + 2 single-space batches; the 5 + 4 + 5 leftovers fill the other two (the last one short).
    assert sum(len(b) == 1 for b in batches) == 6 and len(batches) == 8
    assert (batch_order(spaces, 8, seed=0, epoch=0) == order).all()
    assert (batch_order(spaces, 8, seed=0, epoch=1) != order).any()


def test_space_repeats_show_a_space_more_often(data, tmp_path, capsys):
    import torch

    out = tmp_path / "rep"
    # 36 training architectures shown 3 times: 108 slots, 14 steps of 8 per epoch instead of 5.
    assert main(["--data", str(data), "--out", str(out), *ARGS, "--max-minutes", "0.0001", "--space-repeats", "nb201=3"]) == 0
    assert "(14/epoch)" in capsys.readouterr().out
    state = torch.load(out / "last" / "state.pt", weights_only=False)
    assert state["args"]["space_repeats"] == ["nb201=3"]  # --resume keeps them
    assert sorted(state["data_order"]["permutation"]) == list(range(108))
    assert main(["--data", str(data), "--out", str(tmp_path / "bad"), *ARGS, "--space-repeats", "darts=2"]) == 2
    assert "--space-repeats: 'darts=2' is not SPACE=N with N a whole number >= 1 and SPACE one of the training spaces: nb201" \
        in capsys.readouterr().err


def test_model_fields_change_the_preset(data, tmp_path, capsys):
    import torch

    from rlm_nas.model import RLM

    out = tmp_path / "wide"
    assert main(["--data", str(data), "--out", str(out), *ARGS, "--max-minutes", "0.0001", "--model", "d_model=96", "d_ff=192"]) == 0
    config = RLM.from_pretrained(out / "last").config
    assert (config.d_model, config.d_ff, config.heads) == (96, 192, 4)  # the rest is the tiny preset's
    assert torch.load(out / "last" / "state.pt", weights_only=False)["args"]["model"] == ["d_model=96", "d_ff=192"]  # --resume keeps them
    bad = lambda *model: main(["--data", str(data), "--out", str(tmp_path / "bad"), *ARGS, "--model", *model])  # noqa: E731
    assert bad("width=96") == 2
    assert "--model: 'width=96' is not FIELD=VALUE with FIELD one of encoder, d_model," in capsys.readouterr().err
    assert bad("d_model=wide") == 2
    assert "--model: d_model must be an int, got 'wide'" in capsys.readouterr().err
    assert bad("d_model=90") == 2  # not divisible by the preset's 4 heads
    assert "ModelConfig.d_model (90) must be divisible by heads (4)" in capsys.readouterr().err


def test_metric_weights_favour_a_metric_in_the_draw(tmp_path, capsys):
    from rlm_nas.data import ArchItem
    from rlm_nas.train import metric_subset, metric_weights

    metrics = tuple(sorted([f"accuracy:{d}" for d in ("c10", "c100", "img")] + [f"latency:d{i}" for i in range(24)]))
    item = ArchItem("nb201", "x", metrics, tuple(float(i) for i in range(27)))

    def accuracy_per_draw(weight) -> float:
        draws = [metric_subset(item, 8, f"0:{step}:1", weight) for step in range(2000)]
        assert all(len(m) == 8 == len(set(m)) and list(m) == sorted(m) for m, _ in draws)
        assert all(item.values[item.metrics.index(m)] == v for ms, vs in draws for m, v in zip(ms, vs))
        return sum(m.startswith("accuracy:") for ms, _ in draws for m in ms) / len(draws)

    weight = metric_weights(["accuracy:*=4"])
    assert weight("accuracy:c10") == 4.0 and weight("latency:d0") == 1.0
    assert 0.8 < accuracy_per_draw(None) < 0.95  # 8 * 3/27 = 0.89
    assert 1.9 < accuracy_per_draw(weight) < 2.2
    assert metric_subset(item, 8, "key", weight) == metric_subset(item, 8, "key", weight)  # depends on the key only
    assert metric_subset(item, 0, "key", weight)[0] == list(metrics)  # 0: every label, weights or not
    assert metric_weights([]) is None
    assert main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--metric-weights", "accuracy:*"]) == 2
    assert "--metric-weights: 'accuracy:*' is not PATTERN=WEIGHT with a finite WEIGHT > 0" in capsys.readouterr().err


def test_texts_with_equivalents_show_genotypes_of_the_same_network():
    from rlm_nas.convert import equivalent_inputs, model_input
    from rlm_nas.data import ArchItem
    from rlm_nas.train import Texts

    darts, nb201 = get_space("darts"), get_space("nb201")
    cell = ArchItem("darts", darts.format(darts.sample(1, seed=0)[0]), ("params",), (1.0,))
    plain = ArchItem("nb201", nb201.format(nb201.sample(1, seed=0)[0]), ("params",), (1.0,))
    texts = Texts(equivalents=4)
    seen = {texts(cell, f"0:{step}:0") for step in range(40)}
    assert seen == set(equivalent_inputs("darts", cell.arch, 4)) and len(seen) == 4
    assert texts(cell, "0:7:1") == Texts(equivalents=4)(cell, "0:7:1")  # a function of the draw: resumes exactly
    assert {texts(plain, str(d)) for d in range(5)} == {model_input("nb201", plain.arch)}  # no symmetry: as given
    assert {Texts()(cell, str(d)) for d in range(3)} == {model_input("darts", cell.arch)}  # default: no augmentation


@pytest.mark.filterwarnings("ignore:.*truncated.*")
def test_equivalents_augment_cell_spaces_deterministically(tmp_path):
    darts = get_space("darts")
    rows = ["space,arch,metric,value"]
    for g in darts.sample(20, seed=0):
        a = darts.format(g)
        rows.append(f'darts,"{a.replace(chr(34), chr(34) * 2)}",latency:toy,{1 + a.count("sep_conv")}')
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "toy.csv").write_text("\n".join(rows) + "\n")
    run = lambda out, *extra: main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / out), *ARGS, *extra])  # noqa: E731
    assert run("a", "--equivalents", "4") == 0 and run("b", "--equivalents", "4") == 0 and run("plain") == 0
    assert same_weights(tmp_path / "a" / "last", tmp_path / "b" / "last")  # the draws are a function of seed and step
    assert not same_weights(tmp_path / "a" / "last", tmp_path / "plain" / "last")  # and they are other genotypes' texts
    with pytest.raises(SystemExit) as e:
        run("bad", "--equivalents", "0")
    assert e.value.code == 2


def test_cpu_precision_follows_a_measured_bf16_speedup():
    """auto precision on a CPU: bf16 with AMX tiles, else only where the bf16 matmul was measured
    BF16_MIN_SPEEDUP times faster (cached, so one process never changes its mind)."""
    import math

    import torch

    from rlm_nas.train import BF16_MIN_SPEEDUP, bf16_fast, cpu_bf16_speedup, cpu_has_amx

    speedup = cpu_bf16_speedup()
    assert math.isfinite(speedup) and speedup > 0
    assert cpu_bf16_speedup() == speedup
    assert bf16_fast(torch.device("cpu")) == (cpu_has_amx() or speedup >= BF16_MIN_SPEEDUP)
