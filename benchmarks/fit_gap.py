"""Does a checkpoint under-fit? Its ranking of architectures it trained on, beside new ones and LightGBM.

    python benchmarks/fit_gap.py --checkpoint default

Where the RLM trails LightGBM on held-out architectures, this tells the two ways apart: an RLM
that ranks its own training architectures much better than new ones over-fits (it needs
regularization or more data); one that ranks them about as well as new ones under-fits (it
needs more capacity or more training per minute). The architectures are the checkpoint's run's
own (``--data``, ``--exclude``, ... as in ``benchmarks/sample_count.py``; the test split is left
out): up to ``--train-archs`` of its training architectures per space (a seeded draw) and all of
its validation ones, which it never trained on. LightGBM (``predictor_quality``'s settings) is
fitted on all of the run's training architectures of the task and scored on the same two sets.

Cells: Spearman with the label. The RLM's prediction is its median (one quantile draw, within
0.0002 of the benchmark's 64 on 19 of 20 tasks, section "Samples per prediction" of RESULTS.md),
on each genotype as given. Writes a markdown report (``--out``) and JSON beside it.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
sys.path.insert(0, str(ROOT / "benchmarks"))

from predictor_quality import TASKS, lightgbm, load_labels, one_hot  # noqa: E402
from sample_count import add_validation_args, archs_by_space, run_split, write_report  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_validation_args(p, "fit_gap")
    p.add_argument("--train-archs", type=int, default=1000, help="training architectures scored per space (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the draw of training architectures")
    args = p.parse_args(argv)
    if args.train_archs < 3:
        p.error(f"--train-archs must be >= 3 (a Spearman needs 3 points), got {args.train_archs}")

    import torch
    from scipy.stats import spearmanr

    from rlm_nas.model import RLM

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    train, val = map(archs_by_space, run_split(args))
    labels = load_labels(Path(args.data[0]), TASKS)
    rlm = RLM.from_pretrained(args.checkpoint)
    rows = []
    for space in dict.fromkeys(s for s, _ in TASKS):
        metrics = [m for s, m in TASKS if s == space]
        labelled = [a for a in train[space] if any(a in labels[(space, m)] for m in metrics)]  # not the synthetic ones
        seen = random.Random(args.seed).sample(labelled, min(args.train_archs, len(labelled)))
        archs = seen + val[space]
        median = rlm.predict(archs, metrics, space=space, num_samples=1, progress=True).median
        x_train, x_scored = one_hot(space, train[space]), one_hot(space, archs)  # once per space, not per metric
        for j, metric in enumerate(metrics):
            lab = labels[(space, metric)]  # NaN (held-out) labels are absent
            fit = [i for i, a in enumerate(train[space]) if a in lab]
            gbm = lightgbm(x_train[fit], [lab[train[space][i]] for i in fit], x_scored, 0)
            row = {"space": space, "metric": metric, "lightgbm rows": len(fit)}
            for name, part in (("train", range(len(seen))), ("validation", range(len(seen), len(archs)))):
                idx = [i for i in part if archs[i] in lab]
                y = [lab[archs[i]] for i in idx]
                row.update({f"n {name}": len(idx), f"rlm {name}": float(spearmanr(y, median[idx, j])[0]),
                            f"lightgbm {name}": float(spearmanr(y, gbm[idx])[0])})
            rows.append(row)

    cols = ["rlm train", "rlm validation", "lightgbm train", "lightgbm validation"]
    command = "python benchmarks/fit_gap.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = ["# Fit on training architectures against held-out ones\n",
          f"Command: `{command.strip()}`  ",
          f"Checkpoint {args.checkpoint}; wall {time.monotonic() - t0:.0f} s. Cells: Spearman with the label; `train`: "
          "architectures the checkpoint trained on (LightGBM too), `validation`: ones neither saw.\n",
          "| task | n train | n validation | " + " | ".join(cols) + " | rlm: train − validation |",
          "|---|---:|---:|" + "---:|" * (len(cols) + 1)]
    md += [f"| {r['space']} {r['metric']} | {r['n train']} | {r['n validation']} | " + " | ".join(f"{r[c]:.3f}" for c in cols)
           + f" | {r['rlm train'] - r['rlm validation']:+.3f} |" for r in rows]
    write_report(args.out, md, command, args.checkpoint, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
