"""``python -m rlm_nas.predict``: CSV round trip, extrapolated flag, invalid lines, unknown
metric/space. Runs in-process on the tiny untrained fixture checkpoint (plumbing, not quality)."""

from __future__ import annotations

import csv

import pytest
import torch

from rlm_nas.model import RLM
from rlm_nas.predict import main
from search_spaces import get_space
from tests.rlm_fixtures import tiny_checkpoint  # noqa: F401  (pytest fixture)

ARCHS = [get_space("nb201").format(g) for g in get_space("nb201").sample(3, seed=1)]
BAD = "|nor_conv_3x3~0|+|conv_9x9~0|none~1|+|none~0|none~1|none~2|"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()  # --threads changes the session's setting: restore it
    yield
    torch.set_num_threads(n)


def run(tmp_path, checkpoint, lines, *flags, metric="latency:pixel3"):
    src, out = tmp_path / "archs.txt", tmp_path / "pred.csv"
    src.write_text("\n".join(lines) + "\n")
    rc = main(["--space", "nb201", "--metric", metric, "--checkpoint", str(checkpoint), "--input", str(src),
               "--output", str(out), "--samples", "3", "--threads", "1", "--no-progress", *flags])
    rows = list(csv.DictReader(out.open())) if out.exists() else None
    return rc, rows


def test_round_trip_rows_order_columns_and_extrapolated_flag(tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    # A copy of the fixture that knows (nb201, latency:pixel3) but not (nb201, params).
    rlm = RLM.from_pretrained(tiny_checkpoint)
    rlm.register_pairs([("nb201", "latency:pixel3")])
    ckpt = rlm.save_pretrained(tmp_path / "ckpt")

    rc, rows = run(tmp_path, ckpt, [ARCHS[0], "", "  " + ARCHS[1] + "  ", ARCHS[2]])  # a blank line is ignored
    assert rc == 0
    assert list(rows[0]) == ["arch", "median", "mean", "p10", "p90", "extrapolated"]
    assert [r["arch"] for r in rows] == ARCHS
    for r in rows:
        assert float(r["p10"]) <= float(r["median"]) <= float(r["p90"])
        assert r["extrapolated"] == "false"
    assert run(tmp_path, ckpt, ARCHS, "--seed", "5")[1] == rows  # quantile draws: the seed plays no part
    random_draws = run(tmp_path, ckpt, ARCHS, "--draws", "random", "--seed", "5")[1]
    assert random_draws == run(tmp_path, ckpt, ARCHS, "--draws", "random", "--seed", "5")[1]  # same seed, same numbers
    assert random_draws != rows

    rc, rows = run(tmp_path, ckpt, ARCHS, metric="latency:pixel3,params")
    assert rc == 0
    assert list(rows[0]) == ["arch", "metric", "median", "mean", "p10", "p90", "extrapolated"]
    assert [(r["arch"], r["metric"]) for r in rows] == [(a, m) for a in ARCHS for m in ("latency:pixel3", "params")]
    assert [r["extrapolated"] for r in rows] == ["false", "true"] * 3
    assert "no nb201 training data for params" in capsys.readouterr().err


def test_invalid_line_fails_with_line_number(tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    rc, rows = run(tmp_path, tiny_checkpoint, [ARCHS[0], "", BAD])
    assert rc == 2 and rows is None  # nothing written
    err = capsys.readouterr().err
    assert "line 3" in err and "conv_9x9" in err and "allowed" in err and "Traceback" not in err


def test_skip_invalid_writes_empty_row_and_warns(tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    rc, rows = run(tmp_path, tiny_checkpoint, [ARCHS[0], BAD, ARCHS[1]], "--skip-invalid")
    assert rc == 0
    assert [r["arch"] for r in rows] == [ARCHS[0], BAD, ARCHS[1]]
    assert all(rows[1][c] == "" for c in ("median", "mean", "p10", "p90", "extrapolated"))
    assert rows[0]["median"] and rows[2]["median"]
    err = capsys.readouterr().err
    assert "warning:" in err and "line 2:" in err and "conv_9x9" in err


def test_unknown_metric_lists_known_ones(tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    rc, rows = run(tmp_path, tiny_checkpoint, ARCHS, metric="latency:toaster")
    assert rc == 2 and rows is None
    err = capsys.readouterr().err
    assert "latency:toaster" in err and "accuracy:cifar10" in err and "latency:pixel3" in err


def test_unknown_space_lists_spaces(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--space", "nb202", "--metric", "params", "--input", "x", "--output", str(tmp_path / "o.csv")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "nb202" in err and "nb201" in err and "fbnet" in err


@pytest.mark.filterwarnings("ignore:.*truncated.*")  # the tiny checkpoint reads 256 tokens
def test_cell_spaces_average_equivalent_genotypes(tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    darts = get_space("darts")
    archs = [darts.format(g) for g in darts.sample(2, seed=0)]
    src = tmp_path / "darts.txt"
    src.write_text("\n".join(archs) + "\n")

    def median(*flags):
        out = tmp_path / "pred.csv"
        assert main(["--space", "darts", "--metric", "params", "--checkpoint", tiny_checkpoint, "--input", str(src),
                     "--output", str(out), "--samples", "1", "--no-progress", *flags]) == 0
        return [float(r["median"]) for r in csv.DictReader(out.open())]

    rlm = RLM.from_pretrained(tiny_checkpoint)
    expected = [rlm.predict(darts.equivalents(darts.parse(a), 8), ["params"], space="darts", num_samples=1).median.mean()
                for a in archs]
    assert median() == pytest.approx(expected, rel=1e-5)  # default: 8 genotypes of each network
    assert median("--equivalents", "1") == pytest.approx(
        rlm.predict(archs, ["params"], space="darts", num_samples=1).median[:, 0], rel=1e-5)
    with pytest.raises(SystemExit):
        median("--equivalents", "0")
    assert "--equivalents must be >= 1, got 0" in capsys.readouterr().err
