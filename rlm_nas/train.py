"""Train an RLM from scratch on a data folder: ``python -m rlm_nas.train --data DIR --out DIR``.

Multi-task: a batch is a set of ARCHITECTURES, each with all (or a random subset of) its metrics,
so one encoder pass serves every label of an architecture. AdamW, linear warmup then cosine
decay, gradient clipping, bf16 autocast where it is faster (GPUs, AMX CPUs, CPUs with fast bf16 matmuls; see bf16_fast).
Validation is split BY ARCHITECTURE (``--exclude`` removes a fixed test split altogether);
Spearman per (space, metric) is logged, early stopping watches its mean, and the best model is what ``OUT/`` holds (``RLM.from_pretrained(OUT)``). ``OUT/last/`` holds a full
training state (model, optimizer, scheduler, RNG, step, data order) that ``--resume`` continues
exactly. Runs under ``torchrun`` as DistributedDataParallel over ``rlm.module`` (gloo on CPU, NCCL
on GPUs); each process takes its share of every global batch.

The run is deterministic for a given seed: the data order of epoch ``e`` is a permutation drawn
from ``(seed, e)`` that keeps each batch within one space (:func:`batch_order`), the metric subset
of an item from ``(seed, step, item)``, and torch's RNG is checkpointed. ``--max-minutes`` only
decides *when* to stop, never what a step computes.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import functools
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from rlm_nas.config import ENCODERS, ModelConfig, make_config
from rlm_nas.core import Example
from rlm_nas.data import ArchItem, DataError, format_report, group_by_arch, hold_out, load_dir, split_by_arch, synthetic_complexity

STATE_FILE = "state.pt"


# --- small pieces shared with finetune ----------------------------------------------------------
def bf16_fast(device: torch.device) -> bool:
    """True where bf16 autocast pays off: GPUs with bf16, CPUs with AMX tiles, and other CPUs whose
    bf16 matmul is measured at least :data:`BF16_MIN_SPEEDUP` times faster than their fp32 one
    (:func:`cpu_bf16_speedup`). Measured on the project's 2-core machines, one training step of
    the default's architecture, 1 thread (``benchmarks/train_step_speed.py``): an AMD EPYC of
    family 26 (Zen 5: AVX512-BF16, and MKL's fp32 matmul runs far from its peak there) 1.3-1.5x
    faster in bf16, matmul 4.6x; older CPUs emulate bf16 (slower), and a CPU with AVX512-BF16 but
    no AMX measured its step no faster."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_amx() or cpu_bf16_speedup() >= BF16_MIN_SPEEDUP


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units); False on torch builds that cannot tell."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


#: Matmul speedup above which a CPU trains in bf16. The margin keeps the choice stable on a noisy
#: machine: measured 4.6x where a step gains 1.3-1.5x, below 1 where bf16 is emulated.
BF16_MIN_SPEEDUP = 2.0


@functools.cache
def cpu_bf16_speedup() -> float:
    """fp32 time / bf16 time of one CPU matmul of a training step's shape (2,048 tokens of width
    128 into 1,024: the encoder's feed-forward input), best of 5 each, with torch's current threads.
    Measured once per process (about 0.1 s)."""
    x, w = torch.randn(2048, 128), torch.randn(1024, 128)

    def best(a: torch.Tensor, b: torch.Tensor) -> float:
        torch.nn.functional.linear(a, b)  # warm-up: first-call allocation and kernel choice
        times = []
        for _ in range(5):
            t = time.perf_counter()
            torch.nn.functional.linear(a, b)
            times.append(time.perf_counter() - t)
        return min(times)

    return best(x, w) / best(x.bfloat16(), w.bfloat16())


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def metric_subset(item: ArchItem, k: int, key: str, weight=None) -> tuple[list[str], list[float]]:
    """All labels of ``item``, or ``k`` of them drawn from a seed string (so the pick depends only
    on ``key``: the same under resume and whatever the process count).

    ``weight`` (metric name -> weight > 0, see :func:`metric_weights`) makes the draw favour some
    metrics: labels are drawn without replacement with probability proportional to their weight
    (Efraimidis-Spirakis keys). An NB201 architecture has 3 accuracy labels among ~27, so a uniform
    draw of 8 gives the loss about one accuracy label per visit, and the 24 correlated latencies
    the rest; ``accuracy:*=4`` gives it 2.1 (a 12-minute third stage with it: benchmarks/RESULTS.md)."""
    idx = list(range(len(item.metrics)))
    if k and len(idx) > k:
        rng = random.Random(key)
        if weight is None:
            idx = sorted(rng.sample(idx, k))
        else:
            keys = {i: rng.random() ** (1.0 / weight(item.metrics[i])) for i in idx}
            idx = sorted(sorted(idx, key=keys.__getitem__, reverse=True)[:k])
    return [item.metrics[i] for i in idx], [item.values[i] for i in idx]


def metric_weights(specs: Sequence[str]):
    """``["accuracy:*=4", ...]`` (fnmatch pattern = weight; the first match wins, others weigh 1)
    as a function of the metric name, or None when there are none."""
    rules = []
    for spec in specs:
        pattern, _, w = spec.rpartition("=")  # no "=": the pattern is empty
        try:
            weight = float(w)
        except ValueError:
            weight = math.nan
        if not pattern or not 0 < weight < math.inf:
            raise DataError(f"--metric-weights: {spec!r} is not PATTERN=WEIGHT with a finite WEIGHT > 0 "
                            f"(e.g. 'accuracy:*=4')")
        rules.append((pattern, weight))
    if not rules:
        return None
    return lambda metric: next((w for pat, w in rules if fnmatch.fnmatchcase(metric, pat)), 1.0)


def space_repeats(specs: Sequence[str], spaces: Iterable[str]) -> dict[str, int]:
    """``["nb301=16", ...]`` (space = times each of its architectures appears per epoch; others
    appear once) as a dict, checked against the training ``spaces``."""
    known, repeats = sorted(set(spaces)), {}
    for spec in specs:
        space, _, n = spec.rpartition("=")
        if space not in known or not n.isdigit() or int(n) < 1:
            raise DataError(f"--space-repeats: {spec!r} is not SPACE=N with N a whole number >= 1 and SPACE one of "
                            f"the training spaces: {', '.join(known)}")
        repeats[space] = int(n)
    return repeats


def model_overrides(specs: Sequence[str]) -> dict[str, int | float | str]:
    """``["d_model=192", ...]`` as :func:`make_config` overrides, each value of its field's type."""
    kinds = {name: type(value) for name, value in dataclasses.asdict(ModelConfig()).items()}  # from the defaults
    overrides: dict[str, int | float | str] = {}
    for spec in specs:
        name, _, value = spec.partition("=")
        if name not in kinds or not value:
            raise DataError(f"--model: {spec!r} is not FIELD=VALUE with FIELD one of {', '.join(kinds)}")
        kind = kinds[name]
        try:
            overrides[name] = kind(value)
        except ValueError:
            raise DataError(f"--model: {name} must be {'an int' if kind is int else 'a number'}, got {value!r}") from None
    return overrides


def batch_order(spaces: Sequence[str], per_step: int, seed: int, epoch: int) -> np.ndarray:
    """Item indices of epoch ``epoch`` in step order, drawn from ``(seed, epoch)``: every run of
    ``per_step`` items comes from one space, except the batches made of each space's leftovers.

    Texts of one space have similar lengths (NB201 ~95 tokens, FBNet ~240, NDS cells 290-400), so
    such a batch pads little. Mixed batches padded each NB201 text to the batch's longest cell: in
    random batches of 8 drawn from the default's data mix the encoder read 1.9x as many tokens as
    the texts have.
    """
    rng = np.random.default_rng([seed, epoch])
    by_space: dict[str, list[int]] = {}
    for i in rng.permutation(len(spaces)):
        by_space.setdefault(spaces[i], []).append(int(i))
    blocks, rest = [], []
    for space in sorted(by_space):
        idx = by_space[space]
        full = len(idx) - len(idx) % per_step
        blocks += [idx[j:j + per_step] for j in range(0, full, per_step)]
        rest += idx[full:]
    blocks += [rest[j:j + per_step] for j in range(0, len(rest), per_step)]
    # A short block can only be the last one: the trainer cuts the order into per_step slices.
    tail = blocks.pop() if blocks and len(blocks[-1]) < per_step else []
    return np.array([i for k in rng.permutation(len(blocks)) for i in blocks[k]] + tail, dtype=np.int64)


def lr_lambda(warmup: int, total: int, floor: float = 0.1):
    """Linear warmup to 1, then cosine decay to ``floor`` at ``total`` steps."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return f


class Texts:
    """Model-input texts of architectures, converted on first use (conversion is the slow part of
    the pipeline, so it is spread over the first epoch instead of blocking the start).

    With ``equivalents`` > 1 a call reads one of up to that many genotypes of the item's network
    (:meth:`search_spaces.base.Space.equivalents`), picked by ``draw`` (e.g. ``"seed:step:i"``, so
    a resumed run reads the same ones): augmentation that shows the model that their texts have
    one label.
    """

    def __init__(self, equivalents: int = 1):
        from rlm_nas.convert import equivalent_archs, model_input

        self._convert, self._cache, self._fresh = model_input, {}, {}
        self._equivalents, self._variants, self._equivalent_archs = equivalents, {}, equivalent_archs
        self.converted = 0  #: texts this process converted (the rest came from :meth:`share`)

    def __call__(self, item: ArchItem, draw: str = "") -> str:
        arch = item.arch
        if self._equivalents > 1:
            key = (item.space, arch)
            if key not in self._variants:  # native strings only: each is converted when first drawn
                self._variants[key] = self._equivalent_archs(item.space, arch, self._equivalents)
            arch = random.Random(draw).choice(self._variants[key])
        key = (item.space, arch)
        if key not in self._cache:
            self._cache[key] = self._fresh[key] = self._convert(item.space, arch)
            self.converted += 1
        return self._cache[key]

    def __len__(self) -> int:
        return len(self._cache)

    def share(self, all_gather) -> None:
        """Swap the texts converted since the last call with the other processes (``all_gather``:
        :meth:`Dist.all_gather`). A process takes a different share of the architectures each
        epoch, so without this every process would convert nearly every text of a long run."""
        for part in all_gather(self._fresh):
            self._cache.update(part)
        self._fresh = {}


# --- evaluation ---------------------------------------------------------------------------------
def eval_subset(items: list[ArchItem], per_space: int, seed: int) -> list[ArchItem]:
    """At most ``per_space`` validation architectures per space, the same ones at every evaluation
    (so scores compare across steps)."""
    by_space: dict[str, list[ArchItem]] = {}
    for it in items:
        by_space.setdefault(it.space, []).append(it)
    out = []
    for space in sorted(by_space):
        group = list(by_space[space])
        random.Random(f"eval:{seed}:{space}").shuffle(group)
        out += group[:per_space]
    return out


def evaluate(rlm, items: list[ArchItem], num_samples: int = 1, seed: int = 0, map_shards=None) -> list[dict]:
    """Spearman and Kendall-tau of the predicted median per (space, metric) over ``items``.

    Pairs with fewer than 3 labelled architectures or constant labels/predictions get ``None``
    scores (a rank correlation is undefined there), never NaN. ``map_shards`` (e.g.
    :meth:`Dist.map_shards`) spreads the predictions over processes.
    """
    from scipy.stats import kendalltau, spearmanr

    rows = []
    for space in sorted({it.space for it in items}):
        group = [it for it in items if it.space == space]
        metrics = sorted({m for it in group for m in it.metrics})
        # Quantile draws: with one, the median of the model's distribution in one decoder pass
        # (as cheap as greedy decoding, and it ranks better: benchmarks/results/sample_count.md).
        def medians(part: list[ArchItem]) -> list:
            return list(rlm.predict([it.arch for it in part], metrics, space=space, num_samples=num_samples, seed=seed).median)

        pred = np.array(map_shards(medians, group) if map_shards else medians(group))
        for j, metric in enumerate(metrics):
            have = [(i, it.values[it.metrics.index(metric)]) for i, it in enumerate(group) if metric in it.metrics]
            y = np.array([v for _, v in have])
            p = np.array([pred[i, j] for i, _ in have], dtype=float)
            rho = tau = None
            if len(y) >= 3 and np.ptp(y) > 0 and np.ptp(p) > 0 and np.isfinite(p).all():
                rho, tau = float(spearmanr(y, p).statistic), float(kendalltau(y, p).statistic)
            rows.append({"space": space, "metric": metric, "n": len(y), "spearman": rho, "kendall": tau})
    return rows


def mean_spearman(rows: list[dict]) -> float:
    """Mean Spearman over pairs that have one; an undefined pair counts as 0 (no ranking skill)."""
    return float(np.mean([r["spearman"] or 0.0 for r in rows])) if rows else float("nan")


# --- distributed --------------------------------------------------------------------------------
class Dist:
    """Rank/world of a ``torchrun`` launch (world 1 otherwise) and the few collectives we need."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world > 1:
            import torch.distributed as dist

            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.dist = dist

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` under DistributedDataParallel when there are several processes (gradients
        are averaged during backward), else itself."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's decision (e.g. "stop now") for everyone."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        self.dist.broadcast(t, 0)
        return bool(t.item())

    def map_shards(self, fn, items: list) -> list:
        """``fn(items)`` (a list of per-item results), computed by each process on every
        ``world``-th item and gathered in order: the work before training (exact counts) and the
        validation passes would otherwise run on one process while the others wait."""
        if self.world == 1:
            return list(fn(items))
        share = items[self.rank::self.world]
        # A small list leaves some processes nothing: fn is not called on an empty share.
        parts = self.all_gather(list(fn(share)) if share else [])
        out = [None] * len(items)
        for r, part in enumerate(parts):
            out[r::self.world] = part
        return out

    def all_gather(self, obj) -> list:
        """Every process's ``obj`` (picklable), in rank order."""
        if self.world == 1:
            return [obj]
        parts = [None] * self.world
        self.dist.all_gather_object(parts, obj)
        return parts

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            self.dist.destroy_process_group()


# --- checkpoints --------------------------------------------------------------------------------
def save_state(out: Path, rlm, state: dict) -> None:
    """Write ``OUT/last/`` (model + ``state.pt``) by swapping in a finished temp folder, so a kill
    in the middle of a save leaves the previous checkpoint intact."""
    tmp, last, old = out / "last.tmp", out / "last", out / "last.old"
    shutil.rmtree(tmp, ignore_errors=True)
    rlm.save_pretrained(tmp)
    torch.save(state, tmp / STATE_FILE)
    if last.exists():
        last.rename(old)
    tmp.rename(last)
    shutil.rmtree(old, ignore_errors=True)


def find_last(out: Path) -> Path | None:
    for d in (out / "last", out / "last.old"):  # last.old: killed between the two renames
        if (d / STATE_FILE).is_file():
            return d
    return None


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_best(out: Path, rlm) -> None:
    """The deliverable: ``OUT/`` loadable by ``RLM.from_pretrained(OUT)``. Saved through a temp
    folder and moved file by file, so ``OUT/last`` and ``metrics.json`` beside it are kept."""
    tmp = out / "best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    rlm.save_pretrained(tmp)
    for f in tmp.iterdir():
        dest = out / f.name
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(f, dest)
    tmp.rmdir()


# --- the run ------------------------------------------------------------------------------------
#: Arguments that define the run; ``--resume`` takes them from the checkpoint, not the command line.
RUN_ARGS = ("config", "encoder", "model", "seed", "val_fraction", "batch_size", "lr", "weight_decay", "vocab_size", "epochs", "max_steps",
            "warmup", "metrics_per_arch", "synthetic_per_space", "eval_every", "eval_archs", "eval_samples", "patience",
            "checkpoint_every", "precision", "holdout", "exclude", "exclude_metrics", "clip", "init", "tokenizer",
            "metric_weights", "equivalents", "space_repeats")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlm_nas.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, nargs="+", help="folder(s) laid out like shared/data, or of your own sweeps/CSVs (e.g. measurements/)")
    p.add_argument("--out", required=True, help="output folder: best model, metrics.json, last/ (training state)")
    p.add_argument("--config", default="small", choices=["tiny", "small", "base"], help="model size preset")
    p.add_argument("--encoder", default=None, choices=ENCODERS, help="encoder stack (default: the preset's, modernbert)")
    p.add_argument("--model", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="fields of the --config preset to change (rlm_nas.config.ModelConfig), e.g. 'd_model=192 heads=6 d_ff=768'")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget of this invocation; a checkpoint is saved when it runs out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue OUT/last exactly (run arguments come from the checkpoint)")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights and tokenizer (a folder or 'default'; --config, "
                        "--encoder and --model are then ignored) with a fresh optimizer and LR schedule: a second stage of training. Give it "
                        "--holdout CHECKPOINT/metrics.json so validation stays on architectures it never trained on")
    p.add_argument("--tokenizer", default=None, metavar="CHECKPOINT",
                   help="fresh weights, but this checkpoint's text tokenizer instead of learning one (a folder or 'default'): "
                        "runs that share a tokenizer can be joined into one model (RLM.ensemble)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction of ARCHITECTURES held out per space")
    p.add_argument("--holdout", default=None, help="JSON file of [space, arch] pairs to hold out instead (or a metrics.json of an earlier run)")
    p.add_argument("--exclude", default=None, help="JSON file of [space, arch] pairs (or {\"archs\": [...]}) never to train or validate on")
    p.add_argument("--exclude-metrics", nargs="+", default=[], metavar="PATTERN",
                   help="metrics never to train or validate on, as fnmatch patterns (e.g. 'latency:pixel*'): "
                        "a checkpoint that has never seen a device, for few-shot adaptation benchmarks")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 can be faster on a busy machine)")
    p.add_argument("--batch-size", type=int, default=16, help="architectures per step (per process)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    p.add_argument("--vocab-size", type=int, default=None, help="text BPE vocabulary (default: the config's)")
    p.add_argument("--epochs", type=float, default=10, help="length of the LR schedule, in epochs")
    p.add_argument("--max-steps", type=int, default=None,
                   help="length of the LR schedule in steps (overrides --epochs); 0 with --init only scores those weights on validation")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 5%% of the schedule, at most 200)")
    p.add_argument("--metrics-per-arch", type=int, default=8, help="labels per architecture per step (0: all)")
    p.add_argument("--metric-weights", nargs="+", default=[], metavar="PATTERN=WEIGHT",
                   help="draw these metrics' labels more (or less) often than the others, which weigh 1, when an "
                        "architecture has more than --metrics-per-arch labels (e.g. 'accuracy:*=4')")
    p.add_argument("--equivalents", type=int, default=1,
                   help="show each cell-space architecture as one of up to this many genotypes of its network (a node's "
                        "two inputs swapped), drawn per step: augmentation (default: %(default)s, as given)")
    p.add_argument("--space-repeats", nargs="+", default=[], metavar="SPACE=N",
                   help="show each architecture of SPACE N times per epoch, others once: more steps for a small "
                        "space (e.g. 'nb301=16': 480 architectures, against ~12K of nb201)")
    p.add_argument("--synthetic-per-space", type=int, default=0, help="sampled architectures per space with exact params/flops added")
    p.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default: once per epoch, at most 500)")
    p.add_argument("--eval-archs", type=int, default=128, help="validation architectures per space used to score")
    p.add_argument("--eval-samples", type=int, default=1, help="quantile draws per prediction when scoring (1: the model's median)")
    p.add_argument("--patience", type=int, default=5, help="evaluations without improvement before stopping early")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between OUT/last checkpoints")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="auto: bf16 autocast where it is faster: GPUs, AMX CPUs, CPUs whose bf16 matmul is measured 2x faster (bf16_fast)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return p


def read_archs(path: str) -> set[tuple[str, str]]:
    """(space, arch) pairs from a JSON file: a list of pairs, ``{"archs": [...]}`` (the benchmarks'
    test split) or an earlier run's ``metrics.json`` (its ``split.val_archs``)."""
    try:
        doc = json.loads(Path(path).read_text())
        pairs = doc if isinstance(doc, list) else doc["archs"] if "archs" in doc else doc["split"]["val_archs"]
        return {(str(s), str(a)) for s, a in pairs}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: expected a JSON list of [space, arch] pairs, {{\"archs\": [...]}} or a metrics.json "
                        f"with split.val_archs ({type(e).__name__}: {e})") from None


def load_examples(data: list[str], synthetic_per_space: int = 0, seed: int = 0, exclude: str | None = None,
                  exclude_metrics: Sequence[str] = (), progress: bool = False,
                  log=lambda *a: None, map_shards=None) -> tuple[list[Example], list[dict]]:
    """Every example a run with these arguments trains and validates on, before its split, and the
    loading report of its sources (the run's ``metrics.json`` keeps it as ``sources``).

    The folders of ``data``; ``synthetic_per_space`` sampled architectures per space with exact
    params/flops (``seed``); then the architectures of ``exclude`` and the metrics matching
    ``exclude_metrics`` left out. Benchmarks call it to rebuild a run's validation split.
    ``map_shards``: see :func:`rlm_nas.data.synthetic_complexity`.
    """
    examples, report = [], []
    for folder in data:
        found, found_report = load_dir(folder, progress=progress)
        examples += found
        report += found_report
    if synthetic_per_space:
        syn = synthetic_complexity(per_space=synthetic_per_space, seed=seed, progress=progress, map_shards=map_shards)
        examples += syn.examples
        report.append(syn.summary())
    log(format_report(report))
    if exclude:  # e.g. the benchmarks' test split: neither trained on nor used for early stopping
        examples, dropped = hold_out(examples, read_archs(exclude))
        log(f"--exclude {exclude}: {len({(e.space, e.arch) for e in dropped})} architectures ({len(dropped)} labels) left out")
    if exclude_metrics:  # the metric is unknown to the model, not just unlabelled
        kept = [e for e in examples if not any(fnmatch.fnmatchcase(e.metric, pat) for pat in exclude_metrics)]
        log(f"--exclude-metrics: {sorted({e.metric for e in examples} - {e.metric for e in kept})} "
            f"({len(examples) - len(kept)} labels) left out")
        examples = kept
    return examples, report


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.max_steps is not None and args.max_steps < 0:
        p.error(f"--max-steps must be >= 0, got {args.max_steps}")
    if args.equivalents < 1:
        p.error(f"--equivalents must be >= 1 (1: each architecture as given), got {args.equivalents}")
    dist = Dist()
    try:
        run(args, dist)
    except DataError as e:  # a bad data file: its message says where; no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.close()
    return 0


def run(args: argparse.Namespace, dist: Dist) -> dict:
    """Train as ``args`` says; returns the content of ``OUT/metrics.json``."""
    from tqdm.auto import tqdm

    from rlm_nas.model import RLM, checkpoint_dir
    from rlm_nas.tokenizers.text import TextTokenizer

    t0 = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    log = (lambda *a: print(*a, flush=True)) if dist.main else (lambda *a: None)
    ckpt_dir = find_last(out) if args.resume else None
    if args.resume and ckpt_dir is None:
        raise DataError(f"{out}: --resume given but there is no checkpoint {out}/last/{STATE_FILE}; start without --resume")
    state = torch.load(ckpt_dir / STATE_FILE, weights_only=False) if ckpt_dir else None
    if state:  # the run is defined by its checkpoint; only the time budget comes from this command
        for k in RUN_ARGS:
            setattr(args, k, state["args"].get(k, getattr(args, k)))  # .get: checkpoints from before an argument existed
        log(f"resuming {ckpt_dir} at step {state['step']}")
    weight = metric_weights(args.metric_weights)
    overrides = {**({"encoder": args.encoder} if args.encoder else {}), **model_overrides(args.model)}
    try:  # checked before the slow part
        config = make_config(args.config, **overrides)
    except ValueError as e:
        raise DataError(f"--model {' '.join(args.model)}: {e}") from None
    if args.init and args.tokenizer:
        raise DataError(f"--tokenizer {args.tokenizer}: --init {args.init} brings its own tokenizer; give one of the two")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    # --- data -----------------------------------------------------------------------------
    examples, report = load_examples(args.data, args.synthetic_per_space, args.seed, args.exclude, args.exclude_metrics,
                                     progress=dist.main and not args.no_progress, log=log, map_shards=dist.map_shards)
    if state:
        held = {tuple(a) for a in state["val_archs"]}
        train_ex, val_ex = hold_out(examples, held)
    elif args.holdout:
        train_ex, val_ex = hold_out(examples, read_archs(args.holdout))
    else:
        train_ex, val_ex = split_by_arch(examples, args.val_fraction, args.seed)
    train_items, val_items = group_by_arch(train_ex), group_by_arch(val_ex)
    if not train_items:
        raise DataError(f"{' '.join(args.data)}: no training architectures left after holding out validation")
    repeats = space_repeats(args.space_repeats, (it.space for it in train_items))  # checked before the slow part
    eval_items = eval_subset(val_items, args.eval_archs, args.seed)
    log(f"{len(train_items)} training architectures ({len(train_ex)} labels), {len(val_items)} validation "
        f"({len(val_ex)} labels; {len(eval_items)} scored per evaluation)")
    texts = Texts(args.equivalents)

    # --- model ----------------------------------------------------------------------------
    metrics = sorted({e.metric for e in examples})
    if state:
        rlm = RLM.from_pretrained(ckpt_dir)
    elif args.init:
        try:
            rlm = RLM.from_pretrained(args.init)
        except (OSError, ValueError) as e:
            raise DataError(f"--init {args.init}: {e}") from None
        if new := [m for m in metrics if m not in rlm.metrics]:
            rlm.add_metrics(new)
        if not args.holdout:
            log(f"warning: --init without --holdout: validation may score architectures {args.init} trained on")
    else:
        if args.tokenizer:
            try:
                tok = TextTokenizer.load(checkpoint_dir(args.tokenizer))
            except (OSError, ValueError) as e:
                raise DataError(f"--tokenizer {args.tokenizer}: {e}") from None
        else:
            # BPE over a stratified sample of training texts: the vocabulary of the canonical text is
            # small and shared within a space, so a few hundred texts per space cover it.
            sample = eval_subset(train_items, 300, args.seed + 1)
            corpus = dist.map_shards(lambda part: [texts(it) for it in tqdm(part, desc="texts for tokenizer", leave=False,
                                                                           disable=not dist.main or args.no_progress)], sample)
            tok = TextTokenizer.train(corpus, args.vocab_size or config.text_vocab_size)
        rlm = RLM.create(config, tok, metrics, seed=args.seed)
    rlm.register_pairs(sorted({(e.space, e.metric) for e in train_ex}))
    module = rlm.module.to(dist.device)
    model = dist.wrap(module)  # DDP broadcasts rank 0's weights, so every process starts equal
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    per_step = args.batch_size * dist.world
    # An epoch's slots: training item indices, a space's repeated. A slot's position (not its item)
    # keys its label draw and genotype, so the copies of an item differ; without repeats they agree.
    slots = [i for i, it in enumerate(train_items) for _ in range(repeats.get(it.space, 1))]
    steps_per_epoch = math.ceil(len(slots) / per_step)
    total = args.max_steps if args.max_steps is not None else max(1, round(args.epochs * steps_per_epoch))
    # Capped: a CPU run stopped by --max-minutes may see only a few hundred steps of a long schedule.
    warmup = args.warmup if args.warmup is not None else max(1, min(200, total // 20))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup, total))
    eval_every = args.eval_every or min(steps_per_epoch, 500)
    use_bf16 = args.precision == "bf16" or (args.precision == "auto" and bf16_fast(dist.device))
    step, best, bad_evals, history, elapsed0 = 0, None, 0, [], 0.0
    if state:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step, best, bad_evals, history, elapsed0 = state["step"], state["best"], state["bad_evals"], state["history"], state["elapsed"]
    log(f"model {f'from {args.init}' if args.init else args.config}: {sum(p.numel() for p in params):,} parameters, {len(metrics)} metrics; "
        f"{total} steps of {per_step} architectures ({steps_per_epoch}/epoch), {'bf16' if use_bf16 else 'fp32'} on {dist.device}, "
        f"{dist.world} process(es)")

    slot_spaces = [train_items[i].space for i in slots]

    @functools.lru_cache(maxsize=1)  # drawn once per epoch: a draw takes ~14 ms, a step ~300
    def order(epoch: int) -> np.ndarray:
        return batch_order(slot_spaces, per_step, args.seed, epoch)

    def checkpoint() -> None:
        if dist.main:
            save_state(out, rlm, {
                "args": {k: getattr(args, k) for k in RUN_ARGS}, "step": step, "best": best, "bad_evals": bad_evals,
                "history": history, "elapsed": elapsed0 + time.monotonic() - t0, "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": rng_state(),
                "val_archs": sorted({(e.space, e.arch) for e in val_ex}),
                "data_order": {"epoch": step // steps_per_epoch, "position": step % steps_per_epoch,
                               "permutation": order(step // steps_per_epoch).tolist()},
            })
        dist.barrier()

    def validate() -> bool:
        """Score on validation, keep the best model; True when patience ran out. The processes
        share the predictions, so each holds the same scores and takes the same decision."""
        nonlocal best, bad_evals
        if not eval_items:
            return False
        module.eval()
        with torch.no_grad(), autocast(dist.device, use_bf16):
            rows = evaluate(rlm, eval_items, args.eval_samples, args.seed, dist.map_shards)
        module.train()
        score = mean_spearman(rows)
        history.append({"step": step, "mean_spearman": score, "loss": running})
        improved = best is None or score > best["mean_spearman"]
        log(f"step {step}: val mean Spearman {score:.4f}" + (" (best)" if improved else f" (best {best['mean_spearman']:.4f})"))
        if improved:
            best = {"step": step, "mean_spearman": score, "rows": rows}
            bad_evals = 0
            if dist.main:
                save_best(out, rlm)
        else:
            bad_evals += 1
        return bad_evals >= args.patience

    # --- loop -----------------------------------------------------------------------------
    module.train()
    running = None
    stopped = "schedule finished"
    interrupted = []

    def on_signal(signum, frame):
        """Ctrl-C / SIGTERM: finish the current step, then checkpoint and save as if time ran out
        (a second signal aborts at once)."""
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(signal.Signals(signum).name)

    handlers = {}
    if threading.current_thread() is threading.main_thread():  # signal() works only there
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=total, initial=step, desc="train", disable=not dist.main or args.no_progress, dynamic_ncols=True)
    while step < total:
        epoch, pos = divmod(step, steps_per_epoch)
        chunk = order(epoch)[pos * per_step:(pos + 1) * per_step]
        mine = chunk[dist.rank::dist.world]
        batch = [train_items[slots[j]] for j in mine]
        labels = [metric_subset(it, args.metrics_per_arch, f"{args.seed}:{step}:{j}", weight) for j, it in zip(mine, batch)]
        with autocast(dist.device, use_bf16):
            loss = model(**rlm.make_batch([texts(it, f"{args.seed}:{step}:{j}") for j, it in zip(mine, batch)],
                                          [m for m, _ in labels], [v for _, v in labels]))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: training loss is {loss.item()}; lower --lr (now {args.lr})")
        loss.backward()
        texts.share(dist.all_gather)
        torch.nn.utils.clip_grad_norm_(params, args.clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if step % eval_every == 0 and step < total and validate():
            stopped = f"early stop: no improvement in {args.patience} evaluations"
            break
        if step % args.checkpoint_every == 0:
            checkpoint()
        out_of_time = args.max_minutes is not None and time.monotonic() - t0 > 60 * args.max_minutes
        if dist.broadcast_flag(out_of_time or bool(interrupted)) and step < total:
            stopped = (f"{interrupted[0]} at step {step}" if interrupted else
                       f"--max-minutes {args.max_minutes} ran out at step {step}")
            break
    bar.close()
    for sig, old in handlers.items():
        signal.signal(sig, old)
    checkpoint()  # resumable from exactly here
    if not history or history[-1]["step"] != step:
        validate()  # score the final weights too; also guarantees OUT/ holds a model
    if dist.main and (best is None):  # no validation set: the final weights are the deliverable
        save_best(out, rlm)
    log(f"stopped: {stopped}; texts: {len(texts)} distinct, {texts.converted} converted by this process")

    result = {
        "best": None if best is None else {"step": best["step"], "mean_spearman": best["mean_spearman"]},
        "val": [] if best is None else best["rows"],
        "steps": step, "total_steps": total, "stopped": stopped, "history": history,
        "elapsed_s": round(elapsed0 + time.monotonic() - t0, 1),
        "sources": report,
        "split": {"val_fraction": args.val_fraction, "seed": args.seed, "holdout": args.holdout, "exclude": args.exclude,
                  "exclude_metrics": args.exclude_metrics,
                  "val_archs": sorted([list(k) for k in {(e.space, e.arch) for e in val_ex}])},
    }
    if dist.main:
        (out / "metrics.json").write_text(json.dumps(result, indent=1))
        for r in result["val"]:
            rho = "n/a" if r["spearman"] is None else f"{r['spearman']:.3f}"
            log(f"  {r['space']:<8} {r['metric']:<28} n={r['n']:<5} spearman={rho}")
    dist.barrier()
    return result


if __name__ == "__main__":
    sys.exit(main())
