"""How many decoder samples should the median take? Measured on the default's VALIDATION archs.

    python benchmarks/sample_count.py --checkpoint default

The number of samples behind a prediction's median is a free choice (the paper used 8 to 64), and
choosing it on the test split would leak the test labels into the reported figures. This script
makes the choice on the architectures the shipped default held out for validation, which it never
trained on and which are disjoint from ``benchmarks/test_split.json``. The default's training
record keeps only the validation recipe, not the architectures, so they are rebuilt the way its
first stage drew them: every folder of ``--data``, ``--synthetic-per-space`` sampled architectures
with exact params/flops (seed ``--split-seed``), the test split left out, then
``split_by_arch(--val-fraction, --split-seed)``. The second stage validated on the same archs
(``--holdout`` of the first stage's metrics.json). Rebuilt this way, the set equals the 2,379
architectures the first stage's metrics.json recorded (checked on 2026-11-25).

For each benchmarked task, Spearman of the median and of the mean of k random samples, k in
``--counts`` (one prediction per k: an ensemble returns its members' averaged sorted draws, so
the first k of a larger draw would be its k lowest values); of the median of k quantile draws
(``draws="quantiles"``: the model's quantiles at levels (i + 0.5) / k, so k = 1 is the median of its distribution); and of greedy
decoding (temperature 0, the most likely digit at each step).
Writes a markdown report (``--out``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
sys.path.insert(0, str(ROOT / "benchmarks"))

from predictor_quality import TASKS, load_labels  # noqa: E402  (the quality benchmark's tasks and labels)


def add_validation_args(p: argparse.ArgumentParser, report: str) -> None:
    """``--checkpoint``; the arguments of the checkpoint's training run that rebuild that run's
    validation split (defaults: the default's run); ``--threads``; ``--out`` (``results/{report}.md``)."""
    p.add_argument("--checkpoint", default="default", help="RLM checkpoint folder, or 'default'")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"{report}.md"), help="markdown report; JSON beside it")
    p.add_argument("--data", nargs="+", default=[str(ROOT.parent / "shared" / "data"), str(ROOT / "measurements")],
                   help="the run's training folders (default: %(default)s)")
    p.add_argument("--exclude", default=str(ROOT / "benchmarks" / "test_split.json"), help="the run's --exclude")
    p.add_argument("--synthetic-per-space", type=int, default=100, help="the run's --synthetic-per-space")
    p.add_argument("--val-fraction", type=float, default=0.1, help="the run's --val-fraction")
    p.add_argument("--split-seed", type=int, default=0, help="the run's --seed")


def weights_digest(checkpoint: str | Path) -> str:
    """A short SHA-256 of a checkpoint's weights, so a report says which model it measured."""
    import hashlib

    from rlm_nas.model import WEIGHTS_FILE, checkpoint_dir

    return hashlib.sha256((checkpoint_dir(checkpoint) / WEIGHTS_FILE).read_bytes()).hexdigest()[:16]


def run_split(args: argparse.Namespace) -> tuple[list, list]:
    """(training, validation) examples of the run that :func:`add_validation_args` describes."""
    from rlm_nas.data import split_by_arch
    from rlm_nas.train import load_examples

    # The trainer's own loading: synthetic archs change each space's architecture set, hence the split.
    examples = load_examples(args.data, args.synthetic_per_space, args.split_seed, args.exclude, progress=True)[0]
    return split_by_arch(examples, args.val_fraction, args.split_seed)


def archs_by_space(examples) -> dict[str, list[str]]:
    """``{space: sorted architectures}`` of ``examples``."""
    archs: dict[str, set[str]] = defaultdict(set)
    for e in examples:
        archs[e.space].add(e.arch)
    return {s: sorted(a) for s, a in archs.items()}


def write_report(out: str | Path, md: list[str], command: str, checkpoint: str | Path, rows: list[dict]) -> None:
    """The markdown report ``out`` and its JSON beside it (the command, the weights' digest, the rows); print it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(md) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command.strip(), "weights": weights_digest(checkpoint), "rows": rows}, indent=1))
    print("\n".join(md))


def validation_examples(args: argparse.Namespace) -> list:
    """The validation examples of the run that :func:`add_validation_args` describes."""
    return run_split(args)[1]


def main(argv=None) -> int:
    from scipy.stats import spearmanr

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_validation_args(p, "sample_count")
    p.add_argument("--counts", type=int, nargs="+", default=[8, 16, 32, 64], help="sample counts compared")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = p.parse_args(argv)
    if min(args.counts) < 1:
        p.error(f"--counts must be >= 1, got {args.counts}")

    import torch

    from rlm_nas.convert import model_input
    from rlm_nas.model import RLM

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    val = archs_by_space(validation_examples(args))
    labels = load_labels(Path(args.data[0]), TASKS)
    rlm = RLM.from_pretrained(args.checkpoint)
    k_max = max(args.counts)
    q_counts = sorted({1, *args.counts})
    rows = []
    for space in dict.fromkeys(s for s, _ in TASKS):
        metrics = [m for s, m in TASKS if s == space]
        archs = val.get(space, [])
        texts = [model_input(space, a) for a in archs]
        randoms = {k: rlm.predict(texts, metrics, num_samples=k, seed=args.seed, draws="random", progress=k == k_max).samples
                   for k in args.counts}
        quantiles = {k: rlm.predict(texts, metrics, num_samples=k).median for k in q_counts}
        greedy = rlm.predict(texts, metrics, num_samples=1, temperature=0.0).samples[..., 0]  # digit by digit argmax
        for j, metric in enumerate(metrics):
            lab = labels[(space, metric)]
            idx = [i for i, a in enumerate(archs) if a in lab]  # NaN (held-out) labels are absent
            y = [lab[archs[i]] for i in idx]
            row = {"space": space, "metric": metric, "n": len(idx), "greedy": float(spearmanr(y, greedy[idx, j])[0])}
            for k in args.counts:
                s = randoms[k][idx, j]
                row[f"median@{k}"] = float(spearmanr(y, np.median(s, axis=-1))[0])
                row[f"mean@{k}"] = float(spearmanr(y, s.mean(axis=-1))[0])
            for k in q_counts:
                row[f"quantiles@{k}"] = float(spearmanr(y, quantiles[k][idx, j])[0])
            rows.append(row)

    cols = [f"{agg}@{k}" for agg in ("median", "mean") for k in args.counts] + [f"quantiles@{k}" for k in q_counts] + ["greedy"]
    command = "python benchmarks/sample_count.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = ["# Samples per prediction, on the checkpoint's validation architectures\n",
          f"Command: `{command.strip()}`  ",
          f"Checkpoint {args.checkpoint}; validation archs: "
          + ", ".join(f"{s} {len(a)}" for s, a in sorted(val.items()) if s in {t[0] for t in TASKS})
          + f"; wall {time.monotonic() - t0:.0f} s. Cells: Spearman with the label; "
          "`median@k`, `mean@k`: of k random samples; `quantiles@k`: the median of k quantile draws.\n",
          "| task | n | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    md += [f"| {r['space']} {r['metric']} | {r['n']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |" for r in rows]
    base = f"median@{min(args.counts)}"
    md.append("")
    for k in args.counts[1:]:
        better = sum(r[f"median@{k}"] > r[base] for r in rows)
        gain = np.mean([r[f"median@{k}"] - r[base] for r in rows])
        md.append(f"- median@{k} vs {base}: higher on {better}/{len(rows)} tasks, mean change {gain:+.3f}.")
    for col in ("greedy", f"mean@{k_max}", *(f"quantiles@{k}" for k in q_counts)):
        better = sum(r[col] > r[f"median@{k_max}"] for r in rows)
        worse = sum(r[col] < r[f"median@{k_max}"] for r in rows)
        md.append(f"- {col} vs median@{k_max}: higher on {better}/{len(rows)} tasks, lower on {worse}, "
                  f"mean change {np.mean([r[col] - r[f'median@{k_max}'] for r in rows]):+.3f}.")
    write_report(args.out, md, command, args.checkpoint, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
