"""``python -m rlm_nas.search``: outputs, evaluation commands, flag errors, resume after a kill,
Ctrl-C. Runs on the tiny untrained fixture checkpoint and the small NB201 space."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import onnx
import optuna
import pytest
import torch

from rlm_nas.search import main
from search_spaces import get_space
from tests.rlm_fixtures import tiny_checkpoint  # noqa: F401  (pytest fixture)

ROOT = Path(__file__).resolve().parents[1]
NB201 = get_space("nb201")
pytestmark = [pytest.mark.filterwarnings("ignore:.*no training data.*"), pytest.mark.filterwarnings("ignore:.*truncated.*")]

# An evaluation command: logs the arch it got, fails on its 2nd call, hangs on its 3rd, and
# otherwise prints a log line then "<accuracy> <latency>" (the latency is optional for the CLI).
EVAL = """
import pathlib, sys, time
arch, state = sys.argv[1], pathlib.Path(sys.argv[2])
n = len(state.read_text().splitlines()) if state.exists() else 0
with state.open("a") as f:
    f.write(arch + "\\n")
if n == 1:
    print("loss is nan: diverged", file=sys.stderr)
    sys.exit(3)
if n == 2 and "--hang" in sys.argv:
    time.sleep(60)
time.sleep(float(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "--hang" else 0)
print("epoch 1/1 done")
print(90 + len(arch) % 7, 5 + n % 4)
"""


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    n = torch.get_num_threads()  # main() sets --threads: leave the test session as it was
    yield
    torch.set_num_threads(n)


def run(argv: list[str]) -> int:
    return main(argv)


def test_surrogate_search_writes_every_output(tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    rc = run(["--space", "nb201", "--trials", "6", "--device", "pixel3", "--latency-budget", "10",
              "--checkpoint", tiny_checkpoint, "--out", str(out), "--seed", "1"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "no network is trained or timed" in err and "top" in err  # honest banner and the table
    res = json.loads((out / "results.json").read_text())
    assert res["evaluate"] == "surrogate" and "not a measurement" in res["note"]
    assert [t["number"] for t in res["trials"]] == list(range(6))
    for t in res["trials"]:
        assert t["state"] == "COMPLETE" and isinstance(t["value"], float)
        NB201.parse(t["arch"])
        for metric in ("accuracy:cifar10", "latency:pixel3"):
            p = t["predicted"][metric]
            assert p["p10"] <= p["median"] <= p["p90"]
        assert t["feasible"] == (t["measured"]["latency:pixel3"] <= 10)
    assert len({t["arch"] for t in res["trials"]}) == 6
    feasible = [t for t in res["trials"] if t["feasible"]]
    if feasible:  # the untrained model may predict every latency over budget
        assert res["best"]["value"] == max(t["value"] for t in feasible)
        assert (out / "best.txt").read_text().strip() == res["best"]["arch"]
        onnx.checker.check_model(onnx.load(out / "best.onnx"))
    assert (out / "pareto.png").stat().st_size > 1000


def test_multi_objective_reports_the_pareto_front(tiny_checkpoint, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    assert run(["--space", "nb201", "--trials", "5", "--device", "pixel3", "--checkpoint", tiny_checkpoint, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["objectives"] == ["accuracy:cifar10", "latency:pixel3"]
    front = {t["number"] for t in res["best"]}
    for t in res["trials"]:  # front members are exactly the non-dominated trials
        acc, lat = t["values"]
        dominated = any(o["values"][0] >= acc and o["values"][1] <= lat and o["values"] != t["values"] for o in res["trials"])
        assert (t["number"] in front) == (not dominated)
    assert (out / "best.txt").read_text().strip() == res["best"][0]["arch"]
    assert (out / "pareto.png").is_file()


def test_evaluate_cmd_values_failures_and_timeouts(tiny_checkpoint, tmp_path):  # noqa: F811
    script, state, out = tmp_path / "ev.py", tmp_path / "calls.txt", tmp_path / "out"
    script.write_text(EVAL)
    cmd = f"{sys.executable} {script} {{arch}} {state} --hang"
    rc = run(["--space", "nb201", "--trials", "5", "--device", "pixel3", "--latency-budget", "7", "--evaluate", "cmd",
              "--evaluate-cmd", cmd, "--timeout", "3", "--checkpoint", tiny_checkpoint, "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    received = state.read_text().splitlines()
    assert received == [t["arch"] for t in res["trials"]]  # {arch}: exactly the native string, quoted
    assert [t["state"] for t in res["trials"]] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    assert "exited with 3: loss is nan: diverged" in res["trials"][1]["error"]
    assert "timed out after 3 s" in res["trials"][2]["error"]
    for n in (0, 3, 4):
        t = res["trials"][n]
        assert t["value"] == 90 + len(t["arch"]) % 7  # the last stdout line, not the log line
        assert t["measured"] == {"latency:pixel3": 5 + n % 4}
        assert t["feasible"] == (5 + n % 4 <= 7)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--space", "resnet"], "invalid choice: 'resnet'|nasnet|fbnet"),
        (["--space", "nb201", "--latency-budget", "5"], "--latency-budget needs --device"),
        (["--space", "nb201", "--device", "pixel3", "--latency-budget", "-1"], "--latency-budget must be a positive number"),
        (["--space", "nb201", "--evaluate", "cmd"], '--evaluate cmd needs --evaluate-cmd "CMD {arch}"'),
        (["--space", "nb201", "--evaluate", "cmd", "--evaluate-cmd", "train.sh"], "--evaluate-cmd must contain {arch}"),
        (["--space", "nb201", "--evaluate-cmd", "t {arch}"], "--evaluate-cmd is only used with --evaluate cmd"),
        (["--space", "nb201", "--trials", "0"], "--trials must be >= 1, got 0"),
        (["--space", "nb201", "--objective", "accuracy:mnist"], "--objective 'accuracy:mnist' is not predicted by checkpoint"),
        (["--space", "nb201", "--device", "tpu"], "--device 'tpu' is unknown to checkpoint|known devices: 1080ti_1, pixel3"),
        (["--space", "nb201", "--checkpoint", "/nonexistent"], "--checkpoint '/nonexistent' could not be loaded"),
    ],
)
def test_bad_flags_are_named(argv, message, tiny_checkpoint, capsys):  # noqa: F811
    if "--checkpoint" not in argv:
        argv = [*argv, "--checkpoint", tiny_checkpoint]
    with pytest.raises(SystemExit) as e:
        run(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert all(part in err for part in message.split("|")), err


def test_resumed_study_must_match_its_setup(tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    storage = f"sqlite:///{tmp_path / 's.db'}"
    base = ["--space", "nb201", "--trials", "1", "--storage", storage, "--checkpoint", tiny_checkpoint, "--out", str(tmp_path / "o")]
    assert run(base) == 0
    with pytest.raises(SystemExit):
        run([*base, "--device", "pixel3"])
    assert "use another --study-name" in capsys.readouterr().err


def test_extrapolated_objective_is_named_with_the_space_that_has_data(tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    from rlm_nas.model import RLM

    # The shipped checkpoint's case: DARTS accuracy only through NB301 (DARTS cells at one size).
    rlm = RLM.from_pretrained(tiny_checkpoint)
    rlm.register_pairs([("nb301", "accuracy:cifar10")])
    checkpoint = str(rlm.save_pretrained(tmp_path / "ckpt"))
    out = tmp_path / "out"
    assert run(["--space", "darts", "--trials", "2", "--pool-size", "2", "--checkpoint", checkpoint, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "no darts training data for accuracy:cifar10 (trained on nb301)" in err and "use --space nb301" in err
    assert "(extrapolated)" in err  # the table's column says so too
    assert json.loads((out / "results.json").read_text())["extrapolated"] == ["accuracy:cifar10"]
    assert run(["--space", "nb301", "--trials", "1", "--pool-size", "2", "--checkpoint", checkpoint, "--out", str(out)]) == 0
    assert "(extrapolated)" not in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["extrapolated"] == []


def _cli(tmp_path, storage, trials, checkpoint, delay) -> subprocess.Popen:
    script = tmp_path / "ev.py"
    # No failures here, and one number per line: without a budget the latency is not read.
    script.write_text(EVAL.replace("if n == 1:", "if False:").replace(", 5 + n % 4)", ")"))
    cmd = f"{sys.executable} {script} {{arch}} {tmp_path / 'calls.txt'} {delay}"
    return subprocess.Popen(
        [sys.executable, "-m", "rlm_nas.search", "--space", "nb201", "--trials", str(trials), "--storage", storage,
         "--study-name", "s", "--evaluate", "cmd", "--evaluate-cmd", cmd, "--checkpoint", checkpoint,
         "--out", str(tmp_path / "out")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _completed(db: Path) -> int:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def _wait_for(db: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while _completed(db) < n:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() - t0 < timeout, "the CLI made no progress"
        time.sleep(0.2)


@pytest.mark.slow
def test_killed_run_resumes_without_losing_trials(tiny_checkpoint, tmp_path):  # noqa: F811
    db = tmp_path / "study.db"
    storage = f"sqlite:///{db}"
    proc = _cli(tmp_path, storage, 8, tiny_checkpoint, delay=0.5)
    _wait_for(db, 3, proc)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait()
    before = {t.number: (t.params, t.values) for t in optuna.load_study(study_name="s", storage=storage).trials
              if t.state == optuna.trial.TrialState.COMPLETE}
    assert len(before) >= 3

    proc = _cli(tmp_path, storage, 8, tiny_checkpoint, delay=0)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.number for t in trials] == list(range(len(trials)))  # continuous numbering
    assert {t.number: (t.params, t.values) for t in trials if t.number in before} == before  # nothing lost
    finished = [t for t in trials if t.state.is_finished()]
    assert len(finished) == 8  # --trials is the study's total
    # The trial that was running at the kill is left RUNNING (until the heartbeat grace period
    # marks it failed); every other trial completed.
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in finished)
    assert len(trials) - len(finished) <= 1
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [t["number"] for t in res["trials"]] == [t.number for t in trials]
    assert len({t["arch"] for t in res["trials"]}) == len(trials)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.5, 0.0], ids=["during-evaluation", "mostly-during-bookkeeping"])
def test_ctrl_c_leaves_the_study_consistent_and_writes_results(tiny_checkpoint, tmp_path, delay):  # noqa: F811
    db = tmp_path / "study.db"
    proc = _cli(tmp_path, f"sqlite:///{db}", 50, tiny_checkpoint, delay=delay)
    _wait_for(db, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: the study is saved" in err
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials
    assert not [t for t in trials if not t.state.is_finished()]  # no trial left RUNNING
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(res["trials"]) == len(trials) and sum(t["state"] == "COMPLETE" for t in res["trials"]) >= 2
