"""Few-shot fine-tuning of a trained RLM, e.g. to a new device's latency from 10-100 measurements.

CLI::

    python -m rlm_nas.finetune --checkpoint PATH|default --space nb201 --metric latency:mydevice \\
        --train measured.csv --out DIR [--steps N] [--max-seconds S] [--seed S]

``measured.csv`` has columns ``arch,value``. A metric the checkpoint has never seen is added first.
:func:`finetune` is the same thing as a function, bounded in steps AND seconds, for online
adaptation inside a search loop.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rlm_nas.core import EQUIVALENTS, Example
from rlm_nas.data import DataError, group_by_arch, load_arch_values
from rlm_nas.train import Texts, autocast, bf16_fast

#: Defaults for 10-100 rows on a 2-core CPU. Measured: a tiny checkpoint trained 84 steps on the
#: shared data, fine-tuned on 50 NB201 pixel3 latencies as a NEW metric, scored on 200 test-split
#: archs: Spearman 0.50 before, 0.685 with lr 3e-4 x 60 steps (21 s), 0.63 with 1e-3, 0.37 with 3e-3
#: (constant rates; the decay over the budget came later, measured on bigger fine-tunes).
STEPS, MAX_SECONDS, LR, BATCH_SIZE = 60, 60.0, 3e-4, 8
#: Below this many rows of a NEW metric, the CLI only locates it (steps=0). Measured on 4 unseen
#: NB201 devices (fold-a checkpoint, 400 test archs): Spearman with 10 / 20 shots, locate-only vs 60
#: steps at 3e-4: fpga .966/.966 vs .30/.84, raspi4 .868/.868 vs .62/.79, essential_ph .905/.905
#: vs .66/.78, silver_4114 .972/.965 vs .93/.88 (lr 1e-4 or training only the new embedding: between).
FEW_SHOT_ROWS = 100


#: Known metrics a located metric may mix (the largest NNLS weights, refitted). Measured over the 22
#: unseen NB201 devices (two fold checkpoints, greedy predictions, 2 shot draws): NNLS used 2.4 / 3.0
#: / 3.0 / 3.8 sources on average at 5 / 10 / 20 / 50 shots, and a cap of 4 changed no mean.
MAX_SOURCES = 4


def _known_predictions(rlm, space: str, metric: str, archs: list[str], cache: dict | None = None) -> tuple[list[str], np.ndarray]:
    """The known metrics of ``metric``'s kind trained on ``space``, and their greedy predictions on
    ``archs`` (one column each). ``cache`` (a dict) keeps them for a later call on the same rows:
    :func:`finetune` locates a new metric with :func:`nearest_metric`, then :func:`fit_calibration`,
    and the ONNX texts and decoding need not be done twice (adding the new metric's token changes
    neither the known metrics nor their predictions)."""
    from rlm_nas.model import _kind

    key = (space, metric, tuple(archs))
    if cache is not None and key in cache:
        return cache[key]
    known = [m for m in rlm.metrics if _kind(m) == _kind(metric) and m != metric and (space, m) in rlm.known_pairs]
    pred = rlm.predict(archs, known, space=space, num_samples=1, temperature=0).median if known else np.empty((len(archs), 0))
    if cache is not None:
        cache[key] = known, pred
    return known, pred


def nearest_metric(rlm, examples: list[Example], cache: dict | None = None) -> dict[str, str]:
    """For each metric of ``examples`` that ``rlm`` does not know: the known metric of the same kind
    (``latency:*``) whose predictions on those architectures rank them most like the measured values.

    This is the few-shot "hardware embedding" of HELP in its simplest form: a handful of measured
    architectures locate the new device among the known ones, and the new device starts from that
    one's embedding instead of the average device's. Greedy predictions, Spearman; only metrics
    the model was trained on for the examples' space are candidates. Metrics with fewer than 3
    distinct values, or no candidate, are left out (they start from the average). ``cache``: see
    :func:`_known_predictions`.
    """
    from scipy.stats import spearmanr

    chosen: dict[str, str] = {}
    by_metric: dict[tuple[str, str], dict[str, float]] = {}
    for e in examples:
        if e.metric not in rlm.metrics:
            by_metric.setdefault((e.space, e.metric), {})[e.arch] = e.value
    for (space, metric), rows in sorted(by_metric.items()):
        if len(set(rows.values())) < 3:
            continue
        known, pred = _known_predictions(rlm, space, metric, list(rows), cache)
        values = list(rows.values())
        # A metric predicted constant on these rows ranks nothing: it cannot be the nearest.
        rho = np.array([spearmanr(pred[:, j], values)[0] if np.ptp(pred[:, j]) > 0 else -np.inf for j in range(len(known))])
        rho = np.nan_to_num(rho, nan=-np.inf)
        if known and np.isfinite(rho.max()):
            chosen[metric] = known[int(rho.argmax())]
    return chosen


def fit_calibration(rlm, examples: list[Example], cache: dict | None = None) -> None:
    """Locate the (new) metric of ``examples`` among the known ones: fit :meth:`RLM.calibrate` so that
    ``log(value) = a + sum_s b_s * log(prediction of known metric s)``.

    Non-negative least squares on centred logs over the known metrics of the same kind (so the
    result ranks like a weighted geometric mean of similar devices and carries the examples' units),
    keeping the :data:`MAX_SOURCES` largest weights. Why a mixture rather than the single nearest
    device: a new device rarely ranks exactly like one known device, and with a handful of rows the
    choice of one is noisy; over the 22 unseen NB201 devices (T5 fold checkpoints) the mixture
    ranked 0.945 / 0.961 / 0.965 / 0.968 at 5 / 10 / 20 / 50 shots, the single nearest 0.924 /
    0.950 / 0.960 / 0.963; ModernBERT folds rank 0.951 / 0.964 / 0.970 / 0.973 with the mixture
    (``benchmarks/RESULTS.md``).
    Falls back to the metric's own numbers (a log-log line, ``b`` clipped to [0.2, 5]) when no known
    metric gets a positive weight, and does nothing when a value or prediction is not positive.
    ``cache``: see :func:`_known_predictions`.
    """
    from scipy.optimize import nnls

    metric, space = examples[0].metric, examples[0].space
    rlm.calibrate(metric, 0.0, 1.0)
    y = np.array([e.value for e in examples], float)
    if (y <= 0).any():
        return
    archs = [e.arch for e in examples]
    known, pred = _known_predictions(rlm, space, metric, archs, cache)
    ly = np.log(y)
    if known and (pred > 0).all():
        lx = np.log(pred)
        centred = lx - lx.mean(0)
        w, _ = nnls(centred, ly - ly.mean())
        if (w > 0).sum() > MAX_SOURCES:
            keep = np.argsort(-w)[:MAX_SOURCES]
            w = np.zeros_like(w)
            w[keep], _ = nnls(centred[:, keep], ly - ly.mean())
        if w.sum() > 0:
            rlm.calibrate(metric, float(ly.mean() - lx.mean(0) @ w), {known[j]: float(w[j]) for j in np.flatnonzero(w)})
            return
    x = rlm.predict(archs, metric, space=space, num_samples=1, temperature=0).median[:, 0]
    if (x <= 0).any():
        return
    lx = np.log(x)
    b = float(np.clip(np.cov(lx, ly, bias=True)[0, 1] / lx.var(), 0.2, 5.0)) if lx.var() > 0 else 1.0
    rlm.calibrate(metric, float(ly.mean() - b * lx.mean()), b)


def finetune(rlm, examples: list[Example], steps: int = STEPS, max_seconds: float | None = MAX_SECONDS, lr: float = LR,
             seed: int = 0, batch_size: int = BATCH_SIZE, progress: bool = False, info: dict | None = None,
             init: str = "nearest", equivalents: int = 1):
    """Fine-tune ``rlm`` in place on ``examples`` and return it.

    Stops after ``steps`` optimizer steps or ``max_seconds`` of wall clock, whichever comes first
    (at least one step is taken when ``steps >= 1``); the learning rate decays linearly from ``lr``
    to a tenth of it over that budget. Unknown metrics are added (:meth:`add_metrics`) and the
    (space, metric) pairs registered, so predictions for them are no longer flagged as extrapolated.
    A new metric starts from the embedding of the known metric that ranks the examples best
    (``init="nearest"``, see :func:`nearest_metric`) or of the average metric of its kind
    (``init="mean"``).

    ``steps=0`` only *locates* new metrics: each starts from its nearest known metric's embedding
    and is reported as a weighted geometric mean of known metrics' predictions in its own units
    (:func:`fit_calibration`). With a handful of rows this ranks far better than gradient steps,
    which overfit them (few-shot benchmark in ``benchmarks/RESULTS.md``); :data:`FEW_SHOT_ROWS` is
    where the CLI switches. With ``steps > 0`` the metrics trained on lose any calibration: their
    own (trained) numbers are reported.
    ``equivalents`` > 1 shows each architecture as a random one of up to that many genotypes of
    its network (cell spaces; see :class:`rlm_nas.train.Texts`).
    Torch's global RNG is left as it was: a search calling this repeatedly stays reproducible.
    Pass a dict as ``info`` to get ``steps`` taken, ``seconds`` and ``last_loss`` back.
    """
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("finetune: no examples given; need at least one (space, arch, metric, value)")
    if not isinstance(equivalents, int) or equivalents < 1:
        raise ValueError(f"finetune: equivalents must be a positive int (1: each architecture as given), got {equivalents!r}")
    if steps < 0 or (max_seconds is not None and max_seconds <= 0):
        raise ValueError(f"finetune: steps must be >= 0 and max_seconds > 0, got steps={steps!r}, max_seconds={max_seconds!r}")
    items = group_by_arch(examples)
    texts = Texts(equivalents)
    t0 = time.monotonic()
    # fork_rng: the caller's RNG stream is untouched (add_metrics draws from it, too).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = sorted({e.metric for e in examples} - set(rlm.metrics))
        if init not in ("nearest", "mean"):
            raise ValueError(f"finetune: init must be 'nearest' or 'mean', got {init!r}")
        located: dict = {}  # the known metrics' predictions, shared by the two locating steps
        like = nearest_metric(rlm, examples, located) if new and init == "nearest" else {}
        if new:
            rlm.add_metrics(new, like=like)  # replaces the embedding parameter: the optimizer comes after
        if steps == 0:  # before register_pairs: a metric new in this call cannot be another's source
            for metric in like:
                fit_calibration(rlm, [e for e in examples if e.metric == metric], located)
        rlm.register_pairs(sorted({(e.space, e.metric) for e in examples}))
        if steps == 0:
            if info is not None:
                info.update(steps=0, seconds=round(time.monotonic() - t0, 2), last_loss=None, init=like)
            return rlm
        for metric in {e.metric for e in examples}:
            rlm.calibrate(metric, 0.0, 1.0)  # trained now: its own numbers, not a mixture of others
        module = rlm.module
        device = next(module.parameters()).device
        use_bf16 = bf16_fast(device)
        params = [p for p in module.parameters() if p.requires_grad]
        # No weight decay: with a handful of rows and steps it would only pull weights toward zero.
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        was_training = module.training
        module.train()
        rng = np.random.default_rng(seed)
        perm, pos = rng.permutation(len(items)), 0
        for step in tqdm(range(steps), desc="finetune", disable=not progress, leave=False):
            # Linear decay to 10% over the budget (steps or seconds, whichever is spent faster), as
            # in training: the last steps settle the weights instead of leaving them where one
            # noisy step put them.
            spent = max(step / steps, 0.0 if max_seconds is None else (time.monotonic() - t0) / max_seconds)
            for group in opt.param_groups:
                group["lr"] = lr * max(0.1, 1.0 - 0.9 * spent)
            if pos >= len(perm):
                perm, pos = rng.permutation(len(items)), 0
            batch = [items[i] for i in perm[pos:pos + batch_size]]
            pos += batch_size
            with autocast(device, use_bf16):  # every label of an architecture: they are few here
                loss = rlm.loss([texts(it, f"{seed}:{step}:{j}") for j, it in enumerate(batch)], [list(it.metrics) for it in batch],
                                [list(it.values) for it in batch])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                break
    module.train(was_training)
    if info is not None:
        info.update(steps=step + 1, seconds=round(time.monotonic() - t0, 2), last_loss=float(loss.item()), init=like)
    return rlm


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlm_nas.finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="trained model folder, or 'default' for the packaged one")
    p.add_argument("--space", required=True, help="space of the architectures in --train")
    p.add_argument("--metric", required=True, help="metric measured, e.g. latency:mydevice (new metrics are added)")
    p.add_argument("--train", required=True, help="CSV with columns arch,value")
    p.add_argument("--out", required=True, help="folder for the fine-tuned model")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimizer steps; default: 0 (locate + calibrate, see finetune()) for a new metric with fewer than "
                        f"{FEW_SHOT_ROWS} rows, else {STEPS}")
    p.add_argument("--max-seconds", type=float, default=MAX_SECONDS)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--equivalents", type=int, default=EQUIVALENTS,
                   help="show each architecture as a random one of up to this many genotypes of its network "
                        "(cell spaces: a node's two inputs swapped; no effect elsewhere)")
    p.add_argument("--init", choices=["nearest", "mean"], default="nearest",
                   help="a new metric starts from the known metric that ranks --train best, or from the average of its kind")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from rlm_nas.model import RLM

    try:
        loaded = load_arch_values(args.train, args.space, args.metric)
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not loaded.examples:
        print(f"error: {args.train}: every value is missing; nothing to fine-tune on", file=sys.stderr)
        return 2
    print(f"{args.train}: {len(loaded.examples)} rows ({loaded.missing} missing values skipped)")
    rlm = RLM.from_pretrained(args.checkpoint)
    seen = args.metric in rlm.metrics
    if args.steps is None:
        args.steps = 0 if not seen and len(loaded.examples) < FEW_SHOT_ROWS and args.init == "nearest" else STEPS
    info: dict = {}
    finetune(rlm, loaded.examples, steps=args.steps, max_seconds=args.max_seconds, lr=args.lr, seed=args.seed,
             progress=True, info=info, init=args.init, equivalents=args.equivalents)
    rlm.save_pretrained(Path(args.out))
    if info["init"]:
        print(f"{args.metric} started from the nearest known metric: {info['init'][args.metric]}")
        if args.metric in rlm.calibration:
            a, weights = rlm.calibration[args.metric]
            mix = " * ".join(f"({s})^{b:.3f}" for s, b in sorted(weights.items(), key=lambda kv: -kv[1]))
            print(f"{args.metric} = {np.exp(a):.4g} * {mix} (fitted on the rows)")
    elif info["steps"] == 0:
        print(f"warning: no known metric of the same kind to locate {args.metric} at; it is the average of its kind. "
              f"Pass --steps {STEPS} to train on the rows", file=sys.stderr)
    loss = "" if info["last_loss"] is None else f" (last loss {info['last_loss']:.4f})"
    print(f"fine-tuned {'known' if seen else 'NEW'} metric {args.metric} on {args.space}: {info['steps']} steps in "
          f"{info['seconds']} s{loss}; saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
