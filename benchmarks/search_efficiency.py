"""Search efficiency on NAS-Bench-201: RLMSampler against Optuna and NNI searchers, NB201 tables as the oracle.

Protocol (no leakage). The pool is the 1,000 NB201 architectures of ``benchmarks/test_split.json``,
whose labels the default checkpoint never saw (it is trained with ``--exclude`` of that file, in
training *and* validation). Every method searches this same pool, and the oracle is the table value:
``accuracy:cifar10`` (the ``cifar10_valid`` column of ``nb201/accuracy.csv``) and
``latency:pixel3`` (HELP ``pixel3.pt``), read with the :mod:`rlm_nas.data` loaders.

- RLMSampler: its candidates are the pool itself (``RLMSampler(candidates=pool)``), so it scores
  the whole pool once and never proposes outside it. Default settings otherwise (Thompson acquisition, 8 samples). Without
  ``--online-finetune`` (the default) the RLM's samples of the pool do not change during a study,
  so they are predicted once per seed (one ``predict`` of both metrics, seed = the run's seed) and
  shared by the single- and multi-objective studies of that seed; with ``--online-finetune`` each
  study loads the checkpoint afresh and fine-tunes it on its own trials (the sampler's default
  every-10-trials, 2 s schedule), which is much slower.
- The others search the full space of the 6 NB201 edge parameters (``get_space("nb201")``; for
  NNI a mutable dict of those 6 choices): Optuna ``TPESampler``, ``GPSampler``
  (``deterministic_objective=True``), ``RandomSampler``; NNI 3.0's ``RegularizedEvolution``
  (population 10, tournament 3, as in the NB201 paper's REA; ``mutation_prob=1/6``: one edge per
  child on average) and ``Random``, run by NNI's ``SequentialExecutionEngine`` with a
  ``FunctionalEvaluator``. A proposal outside the pool is mapped to the nearest pool architecture
  (Hamming distance over the 6 edges; ties broken by a fixed pseudo-random order seeded by the
  proposal's string), and the searcher is told that architecture's oracle value.
- A *query* is the first evaluation of a pool architecture. A proposal that maps to an architecture
  already evaluated is answered from the cache and not counted (in favour of the baselines), so
  every method gets ``budget`` distinct architectures. A run stops after ``10 x budget`` proposals
  at most; a run that stops short keeps its best-so-far flat (JSON ``proposals`` / ``queries``).
- Budgets 20, 50 and 100 are prefixes of one 100-query run per method and seed: no method here
  uses the budget to plan (TPE/GP start-up trials, NNI populations and NSGA-II's generations are
  fixed), so this is the same as separate runs. Every method and seed runs in the same invocation.
- Regret = (pool best accuracy) - (best accuracy among the first ``budget`` queries), in
  percentage points. Queries to top 1% = the index of the first query that is among the pool's 10
  most accurate architectures; a run that misses within the budget counts as ``budget`` (the hit
  rate is reported beside it). Mean +- standard error (std / sqrt(seeds)) over seeds.
- Multi-objective: (accuracy max, pixel3 latency min) after 50 queries; RLMSampler with
  ``directions=["maximize", "minimize"]`` against ``NSGAIISampler(population_size=10)`` (the
  default 50 would be pure random sampling at 50 queries) and ``RandomSampler`` as a reference.
  Hypervolume in (percentage points x ms) with the reference point (pool median accuracy, pool
  maximum latency): starting the accuracy axis at the median keeps chance-level and degenerate
  networks (9.7% at 0 ms) from dominating the volume. Also given as a fraction of the whole pool's.

Targets (PASS/FAIL): RLMSampler's mean regret is the lowest (ties count as lowest) at every
budget; its mean queries to the top 1% (at the largest budget) is <= 30; its mean hypervolume is
>= NSGA-II's.

Outputs ``benchmarks/results/search_efficiency.{md,json}`` and ``search_regret.png`` (``--quick``
writes ``*_quick.*``)::

    python benchmarks/search_efficiency.py --checkpoint /tmp/train_default/out --jobs 2
    python benchmarks/search_efficiency.py --quick --checkpoint PATH     # 2 seeds, budget 20
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from search_spaces.nb201 import OPS, PARAMS  # noqa: E402

ACC, LAT = "accuracy:cifar10", "latency:pixel3"
MO_BUDGET = 50
MAX_PROPOSALS = 10  # per query of the budget


class Pool:
    """The test-split NB201 architectures, their oracle values, and the nearest-pool mapping."""

    def __init__(self, data: Path, split: Path):
        from rlm_nas.data import load_help_latency, load_nb201_accuracy
        from search_spaces import get_space

        self.space = get_space("nb201")
        archs = [a for s, a in json.loads(split.read_text())["archs"] if s == "nb201"]
        self.genotypes = [self.space.parse(a) for a in archs]
        self.archs = [self.space.format(g) for g in self.genotypes]
        table = {}
        for loaded in (load_nb201_accuracy(data / "nb201/accuracy.csv"), load_help_latency(data / "help/nasbench201/latency/pixel3.pt")):
            table.update({(e.arch, e.metric): e.value for e in loaded.examples})
        self.acc = np.array([table[a, ACC] for a in self.archs])
        self.lat = np.array([table[a, LAT] for a in self.archs])
        self.index = {a: i for i, a in enumerate(self.archs)}
        self.codes = np.array([[OPS.index(op) for op in g.ops] for g in self.genotypes])
        self.top = set(np.flatnonzero(self.acc >= np.sort(self.acc)[-max(1, len(self.acc) // 100)]).tolist())
        self.ref = (float(np.median(self.acc)), float(self.lat.max()))

    def nearest(self, genotype) -> int:
        """Index of ``genotype`` in the pool, or of the nearest pool architecture (see the module doc)."""
        key = self.space.format(genotype)
        if key in self.index:
            return self.index[key]
        dist = (self.codes != [OPS.index(op) for op in genotype.ops]).sum(1)
        tie = np.random.default_rng(zlib.crc32(key.encode())).random(len(dist))
        return int(np.argmin(dist + 0.5 * tie))


class Queries:
    """The distinct pool architectures a run evaluated, in order; repeats are free cache hits."""

    def __init__(self, pool: Pool, budget: int):
        self.pool, self.budget, self.order, self.proposals = pool, budget, [], 0

    def evaluate(self, genotype) -> int:
        self.proposals += 1
        i = self.pool.nearest(genotype)
        if i not in self.order and len(self.order) < self.budget:
            self.order.append(i)
        return i

    @property
    def done(self) -> bool:
        return len(self.order) >= self.budget or self.proposals >= MAX_PROPOSALS * self.budget


class CachedRLM:
    """Stands in for the RLM: its samples of every pool architecture, predicted once (one seed)."""

    def __init__(self, rlm, pool: Pool, seed: int, num_samples: int = 8):
        pred = rlm.predict(pool.genotypes, [ACC, LAT], space="nb201", num_samples=num_samples, seed=seed)
        self.metrics, self.pool, self.pred = rlm.metrics, pool, pred

    def predict(self, genotypes, metrics, **_):
        from rlm_nas.core import Prediction

        rows = [self.pool.index[self.pool.space.format(g)] for g in genotypes]
        cols = [self.pred.metrics.index(m) for m in metrics]
        return Prediction(tuple(metrics), self.pred.samples[np.ix_(rows, cols)], self.pred.extrapolated[cols])


def pool_sampler(pool: Pool, **kwargs):
    """An RLMSampler whose candidates are exactly the pool architectures."""
    from rlm_nas.optuna import RLMSampler

    return RLMSampler(pool.space, candidates=pool.genotypes, **kwargs)


def run_optuna(pool: Pool, sampler, budget: int, multi: bool = False) -> Queries:
    """One Optuna study over the 6 edge parameters, stopped after ``budget`` queries."""
    import optuna

    q = Queries(pool, budget)

    def objective(trial):
        i = q.evaluate(pool.space.suggest(trial))
        trial.set_user_attr("pool_arch", pool.archs[i])
        return (float(pool.acc[i]), float(pool.lat[i])) if multi else float(pool.acc[i])

    study = optuna.create_study(directions=["maximize", "minimize"] if multi else ["maximize"], sampler=sampler)
    study.optimize(objective, n_trials=MAX_PROPOSALS * budget, callbacks=[lambda s, _: q.done and s.stop()])
    return q


def run_nni(pool: Pool, strategy, budget: int) -> Queries:
    """One NNI strategy over a model space of the 6 edge choices, stopped after ``budget`` queries."""
    import nni
    from nni.mutable import MutableDict
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.execution import SequentialExecutionEngine
    from nni.nas.space import RawFormatModelSpace

    q = Queries(pool, budget)

    class Edges(MutableDict):  # frozen: a dict subclass, since NNI keeps a weak reference to the model
        def freeze(self, sample):
            return type("FrozenEdges", (dict,), {})(super().freeze(sample))

    class Engine(SequentialExecutionEngine):
        def budget_available(self) -> bool:
            return not q.done and super().budget_available()

    def evaluate(edges):
        nni.report_final_result(float(pool.acc[q.evaluate(pool.space.from_params(dict(edges)))]))

    space = RawFormatModelSpace.from_model(Edges({p: nni.choice(p, list(OPS)) for p in PARAMS}), FunctionalEvaluator(evaluate))
    strategy(space, Engine())
    return q


# --- one seed (a worker process) --------------------------------------------------------------
_STATE: dict = {}


def _init(args: argparse.Namespace) -> None:
    """Per process: one thread, the pool, the RLM (texts are cached per process), NNI's HOME, quiet logs."""
    import torch

    torch.set_num_threads(1)
    os.environ["HOME"] = tempfile.mkdtemp(prefix="nni-home-")  # NNI writes ~/nni-experiments
    warnings.filterwarnings("ignore")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import nni  # noqa: F401  (configures its loggers on import: quiet them after)

    logging.getLogger("nni").setLevel(logging.ERROR)
    from rlm_nas.model import RLM

    _STATE.update(args=args, pool=Pool(Path(args.data), Path(args.split)), rlm=RLM.from_pretrained(args.checkpoint))


def run_seed(seed: int) -> dict:
    """Every method on one seed: ``{"so"|"mo": {method: {order, proposals, seconds}}}``."""
    import optuna
    from nni.nas.strategy import Random, RegularizedEvolution

    args, pool = _STATE["args"], _STATE["pool"]
    budget = max(args.budgets)
    start = time.perf_counter()
    cached = None if args.online_finetune else CachedRLM(_STATE["rlm"], pool, seed)
    predict_s = time.perf_counter() - start

    def rlm(objectives):
        from rlm_nas.model import RLM

        model = RLM.from_pretrained(args.checkpoint) if args.online_finetune else cached
        return pool_sampler(pool, objectives=objectives, checkpoint=model, acquisition=args.acquisition,
                            online_finetune=args.online_finetune, seed=seed)

    so = {
        "RLMSampler": lambda: run_optuna(pool, rlm((ACC,)), budget),
        "TPESampler": lambda: run_optuna(pool, optuna.samplers.TPESampler(seed=seed), budget),
        "GPSampler": lambda: run_optuna(pool, optuna.samplers.GPSampler(seed=seed, deterministic_objective=True), budget),
        "RandomSampler": lambda: run_optuna(pool, optuna.samplers.RandomSampler(seed=seed), budget),
        "NNI RegularizedEvolution": lambda: run_nni(pool, RegularizedEvolution(population_size=10, sample_size=3, mutation_prob=1 / 6, seed=seed), budget),
        "NNI Random": lambda: run_nni(pool, Random(seed=seed), budget),
    }
    mo = {
        "RLMSampler": lambda: run_optuna(pool, rlm((ACC, LAT)), MO_BUDGET, multi=True),
        "NSGAIISampler": lambda: run_optuna(pool, optuna.samplers.NSGAIISampler(population_size=10, seed=seed), MO_BUDGET, multi=True),
        "RandomSampler": lambda: run_optuna(pool, optuna.samplers.RandomSampler(seed=seed), MO_BUDGET, multi=True),
    }
    out: dict = {"seed": seed, "rlm_predict_seconds": round(predict_s, 3), "so": {}, "mo": {}}
    for kind, methods in (("so", so), ("mo", mo if args.multi_objective else {})):
        for name, run in methods.items():
            start = time.perf_counter()
            q = run()
            out[kind][name] = {"order": q.order, "proposals": q.proposals, "seconds": round(time.perf_counter() - start, 3)}
    return out


# --- metrics ----------------------------------------------------------------------------------
def mean_se(x) -> tuple[float, float]:
    x = np.asarray(x, dtype=float)
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def regret_curve(pool: Pool, order: list[int], budget: int) -> np.ndarray:
    """Regret after each of ``budget`` queries (flat after the last one of a run that stopped short)."""
    best = np.maximum.accumulate(pool.acc[order[:budget]])
    return pool.acc.max() - np.concatenate([best, np.full(budget - len(best), best[-1])])


def queries_to_top(pool: Pool, order: list[int], budget: int) -> tuple[int, bool]:
    """(queries until the first top-1% architecture, capped at ``budget``; hit within the budget)."""
    hits = [k + 1 for k, i in enumerate(order[:budget]) if i in pool.top]
    return (hits[0], True) if hits else (budget, False)


def hypervolume(acc: np.ndarray, lat: np.ndarray, ref: tuple[float, float]) -> float:
    """2-D hypervolume of (accuracy max, latency min) points above ``ref = (accuracy, latency)``."""
    hv, floor = 0.0, ref[1]
    for a, l in sorted(zip(acc, lat), key=lambda p: -p[0]):  # most accurate first
        if a > ref[0] and l < floor:
            hv += (a - ref[0]) * (floor - l)
            floor = l
    return hv


def summarize(pool: Pool, runs: list[dict], budgets: list[int]) -> dict:
    so, mo = {}, {}
    for name in runs[0]["so"]:
        orders = [r["so"][name]["order"] for r in runs]
        row = {"seconds": mean_se([r["so"][name]["seconds"] for r in runs]),
               "short_runs": sum(len(o) < max(budgets) for o in orders)}
        for b in budgets:
            reached = [queries_to_top(pool, o, b) for o in orders]
            row[str(b)] = {"regret": mean_se([regret_curve(pool, o, b)[-1] for o in orders]),
                           "queries_to_top1": mean_se([k for k, _ in reached]),
                           "hit_rate": float(np.mean([hit for _, hit in reached]))}
        row["curve"] = np.mean([regret_curve(pool, o, max(budgets)) for o in orders], 0).tolist()
        row["curve_se"] = (np.std([regret_curve(pool, o, max(budgets)) for o in orders], 0, ddof=1) / np.sqrt(len(orders))).tolist() if len(orders) > 1 else None
        so[name] = row
    pool_hv = hypervolume(pool.acc, pool.lat, pool.ref)
    for name in runs[0]["mo"]:
        hvs = [hypervolume(pool.acc[r["mo"][name]["order"]], pool.lat[r["mo"][name]["order"]], pool.ref) for r in runs]
        mo[name] = {"hypervolume": mean_se(hvs), "fraction_of_pool": mean_se(np.array(hvs) / pool_hv),
                    "seconds": mean_se([r["mo"][name]["seconds"] for r in runs])}
    targets = {}
    if "RLMSampler" in so:
        others = [m for m in so if m != "RLMSampler"]
        targets["lowest mean regret at every budget"] = all(
            so["RLMSampler"][str(b)]["regret"][0] <= min(so[m][str(b)]["regret"][0] for m in others) for b in budgets)
        # Misses count as the budget: below 30 the target would pass on misses alone.
        b = max(budgets)
        targets[f"top 1% within 30 queries on average (budget {b})"] = so["RLMSampler"][str(b)]["queries_to_top1"][0] <= 30 if b >= 30 else None
    if "RLMSampler" in mo:
        targets["hypervolume >= NSGA-II's"] = mo["RLMSampler"]["hypervolume"][0] >= mo["NSGAIISampler"]["hypervolume"][0]
    return {"so": so, "mo": mo, "pool_hypervolume": pool_hv, "targets": targets}


# --- report -----------------------------------------------------------------------------------
def markdown(summary: dict, meta: dict, budgets: list[int]) -> str:
    f = lambda ms, d=2: f"{ms[0]:.{d}f} ± {ms[1]:.{d}f}"  # noqa: E731
    lines = [f"# Search efficiency on NB201 ({meta['seeds']} seeds, pool of {meta['pool_size']} test-split archs)", "",
             f"Command: `{meta['command']}`  ", f"Checkpoint: `{meta['checkpoint']}`; RLM online fine-tuning: "
             f"{'on' if meta['online_finetune'] else 'off'}; acquisition: {meta['acquisition']}; wall time {meta['wall_s']:.0f} s "
             f"(s/run below excludes the RLM's prediction of the pool, {meta['rlm_predict_s']:.1f} s per seed, shared by its two studies).  ",
             f"Pool best cifar10 accuracy {meta['pool_best']:.2f}%; top 1% = {meta['top_size']} archs. "
             "Protocol: see the module docstring of `benchmarks/search_efficiency.py` (nearest-pool mapping of "
             "off-pool proposals, repeats not counted, misses count as the budget).", "",
             "## Regret (pool best − best found, accuracy points) and queries to the top 1%", "",
             "| method | " + " | ".join(f"regret @{b}" for b in budgets) + " | " +
             " | ".join(f"queries to top 1% @{b} (hit rate)" for b in budgets) + " | s/run |",
             "|---" * (2 * len(budgets) + 2) + "|"]
    for name, row in summary["so"].items():
        lines.append(f"| {name} | " + " | ".join(f(row[str(b)]["regret"]) for b in budgets) + " | " +
                     " | ".join(f"{f(row[str(b)]['queries_to_top1'], 1)} ({row[str(b)]['hit_rate']:.0%})" for b in budgets) +
                     f" | {row['seconds'][0]:.1f} |")
    if summary["mo"]:
        lines += ["", f"## Hypervolume after {MO_BUDGET} queries (cifar10 accuracy max, pixel3 latency min)", "",
                  f"Reference point: accuracy {meta['reference_point'][0]:.2f}% (the pool median), latency {meta['reference_point'][1]:.2f} ms "
                  "(the pool maximum); "
                  f"the whole pool's hypervolume is {summary['pool_hypervolume']:.1f}.", "",
                  "| method | hypervolume | fraction of pool's | s/run |", "|---|---|---|---|"]
        for name, row in summary["mo"].items():
            lines.append(f"| {name} | {f(row['hypervolume'], 1)} | {f(row['fraction_of_pool'], 3)} | {row['seconds'][0]:.1f} |")
    lines += ["", "## Targets", ""] + [f"- {'N/A (budget < 30)' if ok is None else 'PASS' if ok else 'FAIL'}: RLMSampler {name}"
                                         for name, ok in summary["targets"].items()]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in summary["so"].items():
        x, y = np.arange(1, len(row["curve"]) + 1), np.array(row["curve"])
        ax.plot(x, y, label=name, lw=2.5 if name == "RLMSampler" else 1.5)
        if row["curve_se"] is not None:
            ax.fill_between(x, y - row["curve_se"], y + row["curve_se"], alpha=0.2)
    ax.set(xlabel="queries (distinct pool architectures evaluated)", ylabel="regret (cifar10 accuracy points)",
           title="NB201 test-split pool: mean regret ± s.e.", ylim=(0, None))
    ax.set_yscale("symlog", linthresh=0.1)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="default", help="RLM checkpoint (default: the shipped one)")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--budgets", type=int, nargs="+", default=[20, 50, 100])
    p.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, budget 20")
    p.add_argument("--online-finetune", action="store_true", help="fine-tune the RLM on each study's trials (slow; off by default)")
    p.add_argument("--acquisition", default="thompson", choices=("thompson", "ucb", "mean"))
    p.add_argument("--no-multi-objective", dest="multi_objective", action="store_false")
    p.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes (one thread each)")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data"))
    p.add_argument("--split", default=str(ROOT / "benchmarks/test_split.json"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results"))
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.budgets = 2, [20]
    args.budgets = sorted(set(args.budgets))
    start = time.perf_counter()
    if args.jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(args.jobs, _init, (args,)) as workers:
            runs = workers.map(run_seed, range(args.seeds), chunksize=1)
    else:
        _init(args)
        runs = [run_seed(s) for s in range(args.seeds)]
    pool = _STATE.get("pool") or Pool(Path(args.data), Path(args.split))
    summary = summarize(pool, runs, args.budgets)
    meta = {"command": " ".join(["python", "benchmarks/search_efficiency.py", *(sys.argv[1:] if argv is None else argv)]),
            "checkpoint": args.checkpoint, "seeds": args.seeds, "budgets": args.budgets, "online_finetune": args.online_finetune,
            "acquisition": args.acquisition, "pool_size": len(pool.archs), "pool_best": float(pool.acc.max()),
            "top_size": len(pool.top), "reference_point": pool.ref, "max_proposals_per_query": MAX_PROPOSALS,
            "rlm_predict_s": float(np.mean([r["rlm_predict_seconds"] for r in runs])), "wall_s": time.perf_counter() - start}
    out, suffix = Path(args.out), "_quick" if args.quick else ""
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(summary, meta, args.budgets)
    (out / f"search_efficiency{suffix}.md").write_text(text)
    (out / f"search_efficiency{suffix}.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}) + "\n")
    plot(summary, out / f"search_regret{suffix}.png")
    print(text + f"\nwrote {out}/search_efficiency{suffix}.{{md,json}} and search_regret{suffix}.png")
    return summary


if __name__ == "__main__":
    main()
