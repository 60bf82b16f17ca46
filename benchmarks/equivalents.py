"""How many equivalent genotypes should a prediction read? Measured on the default's VALIDATION archs.

    python benchmarks/equivalents.py --checkpoint default

In the cell spaces a node sums its two inputs, so swapping them gives another genotype of the same
network whose ONNX text lists the nodes in another order (``Space.equivalents``). The model is not
exactly invariant to that order; ``RLM.predict(equivalents=k)`` averages the quantiles of up to
``k`` such genotypes. This script chooses ``k`` (:data:`rlm_nas.core.EQUIVALENTS`) on the
architectures the default held out for validation, never on ``benchmarks/test_split.json``: they are
rebuilt as the default's run drew them (the arguments of ``benchmarks/sample_count.py``), and every
(cell space, metric) pair with labels there is scored: NB301 accuracy and this machine's latency
(``latency:epyc-1c``) of the NDS spaces. ``params``/``flops`` are left out (about 10 validation
architectures per space). Each cell: Kendall-tau / Spearman of the model's median (one quantile
draw per genotype) with the label. Writes a markdown report (``--out``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
sys.path.insert(0, str(ROOT / "benchmarks"))

from sample_count import add_validation_args, validation_examples, write_report  # noqa: E402  (the default's validation split)

CELL_SPACES = ("nb301", "darts", "nasnet", "amoeba", "pnas", "enas")


def main(argv=None) -> int:
    from scipy.stats import kendalltau, spearmanr

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_validation_args(p, "equivalents")
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="equivalent genotypes compared")
    args = p.parse_args(argv)
    if min(args.counts) < 1:
        p.error(f"--counts must be >= 1, got {args.counts}")

    import torch

    from rlm_nas.model import RLM

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    labels: dict = defaultdict(dict)
    for e in validation_examples(args):
        if e.space in CELL_SPACES and e.metric not in ("params", "flops"):
            labels[(e.space, e.metric)][e.arch] = e.value
    labels = dict(sorted(labels.items()))
    rlm = RLM.from_pretrained(args.checkpoint)
    rows = []
    for (space, metric), lab in labels.items():
        archs = sorted(lab)
        y = [lab[a] for a in archs]
        row = {"space": space, "metric": metric, "n": len(archs)}
        for k in args.counts:
            t = time.monotonic()
            med = rlm.predict(archs, [metric], space=space, num_samples=1, equivalents=k, progress=True).median[:, 0]
            row[k] = {"kendall": float(kendalltau(y, med).statistic), "spearman": float(spearmanr(y, med).statistic),
                      "seconds": round(time.monotonic() - t, 1)}
        rows.append(row)
        print(row, flush=True)

    command = "python benchmarks/equivalents.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = ["# Equivalent genotypes per prediction, on the checkpoint's validation architectures\n",
          f"Command: `{command.strip()}`  ",
          f"Checkpoint {args.checkpoint}; wall {time.monotonic() - t0:.0f} s. Cells: Kendall-tau / Spearman of the "
          "median (one quantile draw per genotype) with the label, then the seconds of that prediction.\n",
          "| task | n | " + " | ".join(f"k = {k}" for k in args.counts) + " |", "|---|---:|" + "---:|" * len(args.counts)]
    md += [f"| {r['space']} {r['metric']} | {r['n']} | "
           + " | ".join(f"{r[k]['kendall']:.3f} / {r[k]['spearman']:.3f} ({r[k]['seconds']:.0f} s)" for k in args.counts) + " |"
           for r in rows]
    base = args.counts[0]
    md.append("")
    for k in args.counts[1:]:
        gain = [r[k]["kendall"] - r[base]["kendall"] for r in rows]
        md.append(f"- k = {k} vs k = {base}: Kendall-tau higher on {sum(g > 0 for g in gain)}/{len(rows)} tasks, "
                  f"mean change {np.mean(gain):+.3f}.")
    write_report(args.out, md, command, args.checkpoint, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
