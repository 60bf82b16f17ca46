"""Few-shot adaptation to NB201 devices the model has never seen, against baselines on the same shots.

    python -m rlm_nas.train --data ../shared/data measurements --out /tmp/fold_a \\
        --exclude benchmarks/test_split.json --exclude-metrics $(python benchmarks/device_adaptation.py --fold a) ...
    python benchmarks/device_adaptation.py --checkpoint /tmp/fold_a

Protocol (leave-devices-out): the checkpoint was trained with ``--exclude-metrics`` on a set of the
22 NB201 device settings of HELP (on NB201 *and* FBNet: the device token never occurs), so those
devices are new to it. The split of the devices into folds is :data:`FOLDS` (every other device in
name order, so each fold mixes phones, CPUs, GPUs and accelerators, and near twins such as
pixel2/pixel3 fall into different folds). For every unseen device and repeat:

* ``K`` in ``--shots`` architectures are drawn (seeded, nested: the 5 are inside the 10, ...) from
  the NB201 architectures *outside* ``benchmarks/test_split.json``, with their latency on the device;
* every method gets exactly those ``K`` rows, and is scored by Spearman on the 1,000 test-split
  architectures (never trained on by the checkpoint, never drawn as shots):

  - ``rlm``: the checkpoint adapted with :func:`rlm_nas.finetune.finetune` as the CLI does by
    default: below ``FEW_SHOT_ROWS`` (100) rows, ``steps=0`` (the new device is reported as a
    weighted geometric mean of known devices' predictions, weights fitted to the shots by
    non-negative least squares in log space: :func:`rlm_nas.finetune.fit_calibration`);
    ``--rlm-steps N`` forces N gradient steps instead. Median of ``--samples`` samples;
  - ``lightgbm``: LightGBM on ``space.one_hot`` fitted on the K rows (few-shot settings :data:`LGBM`);
  - ``nearest``: the known device (one the checkpoint was trained on) whose measured latencies
    rank the K shots best; its *measured* latencies on the test architectures are the prediction;
  - ``flops``: the FLOPs of our NB201 network (exact counts, within 0.02% of NB201's own), no training.

A method whose predictions are constant scores 0 (no ranking). Writes a markdown report and the raw
rows as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

DEVICES = ("1080ti_1", "1080ti_256", "1080ti_32", "2080ti_1", "2080ti_256", "2080ti_32", "essential_ph_1", "eyeriss",
           "fpga", "gold_6226", "pixel2", "pixel3", "raspi4", "samsung_a50", "silver_4114", "silver_4210r",
           "titanx_1", "titanx_256", "titanx_32", "titanxp_1", "titanxp_256", "titanxp_32")
FOLDS = {"a": DEVICES[0::2], "b": DEVICES[1::2]}
SHOTS = (5, 10, 20, 50)
#: Targets of the project: mean Spearman over unseen devices at these shot counts.
TARGETS = {20: 0.95, 10: 0.93}
#: LightGBM for a handful of rows: leaves of one row allowed, shallow trees.
LGBM = dict(n_estimators=200, learning_rate=0.1, num_leaves=7, min_child_samples=1, min_data_in_bin=1,
            min_data_in_leaf=1, n_jobs=1, verbose=-1)
METHODS = ("rlm", "lightgbm", "nearest", "flops")


def spearman(y, p) -> float:
    """Spearman; 0 for a constant prediction (it ranks nothing)."""
    from scipy.stats import spearmanr

    y, p = np.asarray(y, float), np.asarray(p, float)
    return 0.0 if np.ptp(p) == 0 or np.ptp(y) == 0 else float(spearmanr(y, p).statistic)


def load_latency(data: Path) -> dict[str, dict[str, float]]:
    """``{device: {nb201 arch: ms}}`` for the 22 NB201 devices (repeated measurements averaged)."""
    from benchmarks.predictor_quality import load_labels

    labels = load_labels(data, [("nb201", f"latency:{d}") for d in DEVICES])
    return {m.split(":", 1)[1]: v for (_, m), v in labels.items()}


def lightgbm(train: list[str], y: list[float], test_x: np.ndarray, seed: int) -> np.ndarray:
    import lightgbm as lgb

    from search_spaces import get_space

    sp = get_space("nb201")
    x = np.stack([sp.one_hot(sp.parse(a)) for a in train])
    return lgb.LGBMRegressor(**LGBM, random_state=seed).fit(x, np.asarray(y)).predict(test_x)


def nearest(known: dict[str, dict[str, float]], shots: list[str], y: list[float], test: list[str]) -> tuple[str, np.ndarray]:
    """The known device ranking the shots most like ``y``, and its measured test latencies."""
    rho = {d: spearman(y, [lat[a] for a in shots]) for d, lat in known.items()}
    best = max(sorted(rho), key=rho.get)
    return best, np.array([known[best][a] for a in test])


def run(args) -> tuple[list[dict], dict]:
    import torch
    from tqdm import tqdm

    from rlm_nas.convert import model_input
    from rlm_nas.core import Example
    from rlm_nas.finetune import FEW_SHOT_ROWS, STEPS, finetune
    from rlm_nas.model import RLM
    from search_spaces import get_space

    torch.set_num_threads(args.threads)
    base = RLM.from_pretrained(args.checkpoint)
    unseen = [d for d in DEVICES if f"latency:{d}" not in base.metrics]
    seen = [d for d in DEVICES if d not in unseen]
    if args.devices:
        bad = sorted(set(args.devices) - set(unseen))
        if bad:
            sys.exit(f"error: --devices {bad} are known to the checkpoint (or not NB201 devices); unseen ones: {unseen}")
        unseen = list(args.devices)
    if not unseen:
        sys.exit("error: the checkpoint has seen every NB201 device; train one with --exclude-metrics "
                 f"(e.g. fold a: {' '.join('latency:' + d for d in FOLDS['a'])})")

    from benchmarks.predictor_quality import complexities

    latency = load_latency(args.data)
    split = json.loads(Path(args.split).read_text())
    test = sorted(a for s, a in split["archs"] if s == "nb201")[: args.test_archs]
    excluded = {a for s, a in split["archs"] if s == "nb201"}
    sp = get_space("nb201")
    test_x = np.stack([sp.one_hot(sp.parse(a)) for a in test])
    test_texts = [model_input("nb201", a) for a in tqdm(test, desc="test ONNX texts", unit="arch", leave=False)]
    known = {d: latency[d] for d in seen}
    flops = {a: fp[0] for (_, a), fp in complexities([("nb201", a) for a in test], workers=1).items()}

    rows = []
    jobs = [(d, r) for d in unseen for r in range(args.repeats)]
    for d, r in tqdm(jobs, desc="devices x repeats", unit="job"):
        lat = latency[d]
        truth = [lat[a] for a in test]
        pool = sorted(a for a in lat if a not in excluded and all(a in k for k in known.values()))
        order = np.random.default_rng([args.seed, r, zlib.crc32(d.encode())]).permutation(len(pool))
        flops_rho = spearman(truth, [flops[a] for a in test])
        for k in args.shots:
            shots = [pool[i] for i in order[:k]]
            y = [lat[a] for a in shots]
            row = {"device": d, "repeat": r, "shots": k}
            t0 = time.monotonic()
            rlm, info = copy.deepcopy(base), {}
            steps = args.rlm_steps if args.rlm_steps is not None else (0 if k < FEW_SHOT_ROWS else STEPS)
            finetune(rlm, [Example("nb201", a, f"latency:{d}", v) for a, v in zip(shots, y)], steps=steps, seed=r, info=info)
            pred = rlm.predict(test_texts, f"latency:{d}", num_samples=args.samples, seed=r).median[:, 0]
            row["rlm"] = spearman(truth, pred)
            row["rlm_seconds"] = round(time.monotonic() - t0, 1)
            row["rlm_init"] = info["init"].get(f"latency:{d}")
            row["rlm_steps"] = info["steps"]
            row["lightgbm"] = spearman(truth, lightgbm(shots, y, test_x, seed=r))
            row["nearest_device"], pred = nearest(known, shots, y, test)
            row["nearest"] = spearman(truth, pred)
            row["flops"] = flops_rho
            rows.append(row)
            tqdm.write(f"{d:<14} r{r} K={k:<3} " + "  ".join(f"{m} {row[m]:.3f}" for m in METHODS)
                       + f"  (init {row['rlm_init']}, nearest {row['nearest_device']}, {row['rlm_seconds']} s)")
    meta = {"checkpoint": str(args.checkpoint), "rlm_steps": args.rlm_steps, "unseen": unseen, "known": seen, "test_archs": len(test),
            "repeats": args.repeats, "samples": args.samples, "seed": args.seed}
    return rows, meta


def report(rows: list[dict], metas: list[dict], command: str, wall_s: float) -> str:
    def mean_se(v):
        v = np.asarray(v, float)
        return v.mean(), (v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0)

    meta = metas[0]
    md = ["# Few-shot adaptation to unseen NB201 devices\n", f"Command: `{command}`  ",
          f"Wall time: {wall_s:.0f} s; RLM median of {meta['samples']} samples; "
          f"{meta['repeats']} repeat(s) of the shot draw per device; test: {meta['test_archs']} test-split NB201 architectures.\n"]
    for m in metas:
        md += [f"- Checkpoint `{m['checkpoint']}`: unseen devices ({len(m['unseen'])}, never in its training data, on any space): "
               f"{', '.join(m['unseen'])}; known (its training devices, and the `nearest` baseline's candidates): {', '.join(m['known'])}"]
    md += ["",
          "Mean Spearman over unseen devices and repeats (± standard error):\n",
          "| shots | " + " | ".join(METHODS) + " | target | RLM vs best baseline |", "|---:|" + "---:|" * (len(METHODS) + 2)]
    for k in sorted({r["shots"] for r in rows}):
        sel = [r for r in rows if r["shots"] == k]
        means = {m: mean_se([r[m] for r in sel]) for m in METHODS}
        best_base = max(METHODS[1:], key=lambda m: means[m][0])
        target = TARGETS.get(k)
        verdict = "" if target is None else f"≥ {target}: {'PASS' if means['rlm'][0] >= target else 'FAIL'}"
        gap = means["rlm"][0] - means[best_base][0]
        md.append(f"| {k} | " + " | ".join(f"{means[m][0]:.3f} ± {means[m][1]:.3f}" for m in METHODS)
                  + f" | {verdict} | {gap:+.3f} vs {best_base} ({'PASS' if gap > 0 else 'FAIL'}) |")
    md += ["", "Per device (mean over repeats):\n", "| device | shots | " + " | ".join(METHODS) + " | RLM init from | nearest device |",
           "|---|---:|" + "---:|" * len(METHODS) + "---|---|"]
    for d in [d for m in metas for d in m["unseen"]]:
        for k in sorted({r["shots"] for r in rows}):
            sel = [r for r in rows if r["device"] == d and r["shots"] == k]
            if sel:
                md.append(f"| {d} | {k} | " + " | ".join(f"{np.mean([r[m] for r in sel]):.3f}" for m in METHODS)
                          + f" | {sel[0]['rlm_init']} | {sel[0]['nearest_device']} |")
    return "\n".join(md) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", help="a checkpoint trained with --exclude-metrics on some NB201 devices")
    p.add_argument("--fold", choices=sorted(FOLDS), help="print the --exclude-metrics patterns of this fold and exit")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--split", default=str(ROOT / "benchmarks" / "test_split.json"))
    p.add_argument("--shots", type=int, nargs="+", default=list(SHOTS))
    p.add_argument("--repeats", type=int, default=2, help="shot draws per device")
    p.add_argument("--devices", nargs="+", help="only these unseen devices (default: every one the checkpoint lacks)")
    p.add_argument("--test-archs", type=int, default=1000)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--rlm-steps", type=int, default=None, help="gradient steps of the adaptation (default: the CLI's choice)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "device_adaptation.md")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                   help="write one report from earlier runs' JSON files (e.g. one per fold) and exit")
    args = p.parse_args()
    if args.merge:
        runs = [json.loads(f.read_text()) for f in args.merge]
        rows = [r for run_ in runs for r in run_["rows"]]
        metas = [run_["meta"] for run_ in runs]
        command = "python benchmarks/device_adaptation.py " + " ".join(sys.argv[1:])
        md = report(rows, metas, "; ".join([*(m.get("command", "?") for m in metas), command]), sum(m.get("wall_s", 0) for m in metas))
        args.out.write_text(md)
        args.out.with_suffix(".json").write_text(json.dumps({"metas": metas, "rows": rows}, indent=1))
        print(md)
        return
    if args.fold:
        print(" ".join(f"latency:{d}" for d in FOLDS[args.fold]))
        return
    if not args.checkpoint:
        p.error("--checkpoint is required (or --fold to print a fold's devices)")
    t0 = time.monotonic()
    rows, meta = run(args)
    command = "python benchmarks/device_adaptation.py " + " ".join(sys.argv[1:])
    meta.update(command=command, wall_s=round(time.monotonic() - t0))
    md = report(rows, [meta], command, meta["wall_s"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(md)


if __name__ == "__main__":
    main()
