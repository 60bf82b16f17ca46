"""benchmarks/model_card.py: the record beside the card describes the weights that were shipped."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "model_card.py"


def _module():
    spec = importlib.util.spec_from_file_location("model_card", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _metrics(folder: Path, val: list[dict], best_step: int) -> Path:
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({
        "best": {"step": best_step, "mean_spearman": 0.9}, "val": val, "steps": 10, "history": [{"step": 1}],
        "split": {"seed": 0, "val_fraction": 0.1, "val_archs": [["nb201", "a"]]}}))
    return folder


def test_training_record_takes_the_shipped_weights_rows_from_scores(tmp_path):
    card = _module()
    run_rows = [{"space": "nb201", "metric": "flops", "n": 9, "spearman": 0.5, "kendall": 0.4}]
    shipped_rows = [{"space": "nb201", "metric": "flops", "n": 9, "spearman": 0.7, "kendall": 0.6}]
    run = _metrics(tmp_path / "run", run_rows, best_step=4)
    scores = _metrics(tmp_path / "scores", shipped_rows, best_step=0)

    plain = card.training_record([run])
    assert plain["val"] == run_rows and "history" not in plain and "val_archs" not in plain["split"]
    shipped = card.training_record([run], scores)
    assert shipped["val"] == shipped_rows
    assert shipped["best"]["step"] == 4  # the run's own pick is still on record
    assert "re-scored" in shipped["val_weights"]


def test_an_ensembles_card_and_record_show_the_ensemble_and_each_member(tmp_path):
    card = _module()
    rows = [{"space": "nb201", "metric": "flops", "n": 9, "spearman": 0.8, "kendall": 0.7}]
    runs = [_metrics(tmp_path / f"m{i}", [], best_step=i) for i in (1, 2)]
    scores = _metrics(tmp_path / "scores", rows, best_step=0)
    record = card.training_record(runs, scores)
    assert record["val"] == rows and [m["best"]["step"] for m in record["members"]] == [1, 2]
    text = card.card(runs, "two runs", "1 h", "1 GiB", "modernbert", ("g", "a"), scores)
    assert text.startswith("# rlm-nas default checkpoint\n\nAn ensemble of 2 ") and "| nb201 | flops | 9 | 0.800 | 0.700 |" in text


def test_decoding_remarks_quote_only_reports_of_these_weights(tmp_path):
    card = _module()
    ckpt, results = tmp_path / "ckpt", tmp_path / "results"
    ckpt.mkdir()
    results.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weights")
    rows = [{"greedy": 0.8, "quantiles@1": 0.9}, {"greedy": 0.95, "quantiles@1": 0.9}]
    eq_rows = [{"1": {"kendall": 0.5}, "8": {"kendall": 0.6}}]
    for name, r in (("sample_count", rows), ("equivalents", eq_rows)):
        (results / f"{name}.json").write_text(json.dumps({"weights": card.weights_digest(ckpt), "rows": r}))
    text = " ".join(card.decoding_remarks(ckpt, results))
    assert "worse on 1 of the 2 benchmarked tasks" in text and "better than one genotype on 1 of the 1 tasks" in text

    (ckpt / "model.safetensors").write_bytes(b"retrained weights")  # the reports now describe another model
    text = " ".join(card.decoding_remarks(ckpt, results))
    assert text.count("not yet run on these weights") == 2 and "worse on" not in text and "better than" not in text
