"""Architecture search from the command line: Optuna with the RLM proposing candidates (RLMSampler).

Examples::

    # pure surrogate search: no training, no server; "measured" values are RLM predictions
    # (nb301: DARTS cells at NAS-Bench-301's size, where the shipped model has accuracy data)
    python -m rlm_nas.search --space nb301 --trials 200 --out out/nb301

    # accuracy under a latency budget on a device, resumable through SQLite
    python -m rlm_nas.search --space nb201 --device pixel3 --latency-budget 12 \\
        --storage sqlite:///study.db --study-name nb201-pixel3

    # real evaluations: the last line of the command's stdout is the measured value
    python -m rlm_nas.search --space darts --evaluate cmd --evaluate-cmd "python train.py {arch}"

With ``--device`` and no budget the search is multi-objective (objective vs latency) and reports
the Pareto front. Re-running with the same ``--storage`` and ``--study-name`` resumes the study
(``--trials`` is the total); Ctrl-C stops it cleanly and still writes the results.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import signal
import subprocess
import sys
import warnings
from pathlib import Path

from rlm_nas.core import EQUIVALENTS

SURROGATE_SAMPLES = 32  # samples behind a surrogate "measurement": its median is the value


class EvaluationError(RuntimeError):
    """An evaluation command failed; the trial is marked failed and the search goes on."""


def build_parser() -> argparse.ArgumentParser:
    from search_spaces import SPACE_NAMES

    p = argparse.ArgumentParser(prog="python -m rlm_nas.search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", required=True, choices=SPACE_NAMES, help="search space")
    p.add_argument("--objective", default="accuracy:cifar10", help="metric to optimize (default: %(default)s)")
    p.add_argument("--device", help="latency device, e.g. pixel3 (metric latency:<device>)")
    p.add_argument("--latency-budget", type=float, help="max latency in ms on --device (a constraint)")
    p.add_argument("--trials", type=int, default=200, help="total trials in the study (default: %(default)s)")
    p.add_argument("--evaluate", choices=("surrogate", "cmd"), default="surrogate",
                   help="surrogate: the RLM's median prediction is the value (no training); cmd: run --evaluate-cmd")
    p.add_argument("--evaluate-cmd", help="shell command with {arch} (replaced by the shell-quoted native string); "
                   "the last stdout line holds one number per objective, then optionally the measured latency")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per evaluation command (default: %(default)s)")
    p.add_argument("--storage", help="Optuna storage URL, e.g. sqlite:///study.db (default: in memory)")
    p.add_argument("--study-name", help="study name (default: rlm-<space>); reuse it to resume")
    p.add_argument("--out", help="output folder (default: out/<study-name>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="default", help="'default' (shipped) or a checkpoint path")
    p.add_argument("--acquisition", choices=("thompson", "ucb", "mean"), default="thompson")
    p.add_argument("--pool-size", type=int, default=16,
                   help="new candidates the RLM scores per trial (default: %(default)s; more is slower, searches wider)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: %(default)s; the RLM's small batches gain little from more, "
                        "and extra threads slow to a crawl when other processes share the cores)")
    return p


def _check_flags(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.latency_budget is not None and a.device is None:
        p.error("--latency-budget needs --device (the device the budget is for, e.g. --device pixel3)")
    if a.latency_budget is not None and not (math.isfinite(a.latency_budget) and a.latency_budget > 0):
        p.error(f"--latency-budget must be a positive number of ms, got {a.latency_budget}")
    if a.trials < 1:
        p.error(f"--trials must be >= 1, got {a.trials}")
    if a.pool_size < 1:
        p.error(f"--pool-size must be >= 1, got {a.pool_size}")
    if a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")
    if a.timeout <= 0:
        p.error(f"--timeout must be > 0 seconds, got {a.timeout}")
    if a.evaluate == "cmd" and not a.evaluate_cmd:
        p.error('--evaluate cmd needs --evaluate-cmd "CMD {arch}"')
    if a.evaluate_cmd and a.evaluate != "cmd":
        p.error("--evaluate-cmd is only used with --evaluate cmd")
    if a.evaluate_cmd and "{arch}" not in a.evaluate_cmd:
        p.error(f"--evaluate-cmd must contain {{arch}} (where the architecture goes), got {a.evaluate_cmd!r}")


def _check_metrics(p: argparse.ArgumentParser, a: argparse.Namespace, known: tuple[str, ...]) -> None:
    devices = sorted(m.split(":", 1)[1] for m in known if m.startswith("latency:"))
    if a.objective not in known:
        p.error(f"--objective {a.objective!r} is not predicted by checkpoint {a.checkpoint!r}; known: {', '.join(known)}")
    if a.device is not None and f"latency:{a.device}" not in known:
        p.error(f"--device {a.device!r} is unknown to checkpoint {a.checkpoint!r}; known devices: {', '.join(devices) or 'none'}")


def _direction(metric: str) -> str:
    return "maximize" if metric.startswith("accuracy:") else "minimize"


def _run_cmd(template: str, arch: str, timeout: float, n_min: int, n_max: int) -> list[float]:
    """Run the evaluation command; its last stdout line holds ``n_min``..``n_max`` numbers."""
    cmd = template.replace("{arch}", shlex.quote(arch))
    try:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EvaluationError(f"--evaluate-cmd timed out after {timeout:g} s") from None
    if r.returncode != 0:
        raise EvaluationError(f"--evaluate-cmd exited with {r.returncode}: {r.stderr.strip()[-800:]}")
    lines = r.stdout.strip().splitlines()
    try:
        values = [float(x) for x in re.split(r"[,\s]+", lines[-1].strip())] if lines else []
    except ValueError:
        values = []
    if not n_min <= len(values) <= n_max or not all(map(math.isfinite, values)):
        raise EvaluationError(f"--evaluate-cmd's last stdout line must hold {n_min}..{n_max} finite numbers, "
                              f"got {lines[-1] if lines else '(no output)'!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    _check_flags(p, a)

    import optuna
    import torch
    from tqdm import tqdm

    torch.set_num_threads(a.threads)

    from rlm_nas.optuna.sampler import RLMSampler, arch_seed, load_rlm
    from rlm_nas.predict import extrapolation_warning
    from search_spaces import get_space

    try:
        rlm = load_rlm(a.checkpoint)
    except (OSError, ValueError) as e:
        p.error(f"--checkpoint {a.checkpoint!r} could not be loaded: {e}")
    _check_metrics(p, a, tuple(rlm.metrics))

    space = get_space(a.space)
    latency = f"latency:{a.device}" if a.device else None
    objectives = [a.objective] + ([latency] if latency and a.latency_budget is None and latency != a.objective else [])
    constraints = {latency: a.latency_budget} if a.latency_budget is not None else {}
    warning = extrapolation_warning(rlm, a.checkpoint, a.space, [*objectives, *constraints])
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
        warnings.filterwarnings("ignore", message="the checkpoint has no training data")  # the sampler's, said above
    # Fine-tuning on the surrogate's own predictions would teach it nothing: only on real values.
    sampler = RLMSampler(space, objectives, constraints, checkpoint=rlm, acquisition=a.acquisition, pool_size=a.pool_size,
                         online_finetune=a.evaluate == "cmd", seed=a.seed)
    name = a.study_name or f"rlm-{a.space}"
    storage = a.storage
    if storage and not storage.startswith(("redis", "journal")) and "://" in storage:
        # Heartbeats let the next run mark trials of a killed run as failed instead of running.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(storage, heartbeat_interval=10, grace_period=30)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, load_if_exists=True,
                                directions=[_direction(m) for m in objectives])
    setup = {"space": a.space, "objectives": objectives, "constraints": constraints, "evaluate": a.evaluate}
    if study.user_attrs.get("setup", setup) != setup:
        p.error(f"study {name!r} in {a.storage} was run with {study.user_attrs['setup']}, not {setup}; "
                "use another --study-name")
    study.set_user_attr("setup", setup)

    # Ctrl-C: a KeyboardInterrupt inside one of Optuna's storage commits leaves the study
    # inconsistent, so it is raised only while a trial is being evaluated (no storage writes
    # there; Optuna marks that trial failed). Anywhere else the search stops after the current
    # trial is recorded.
    stop = {"requested": False, "evaluating": False}

    def on_sigint(signum, frame):
        stop["requested"] = True
        if stop["evaluating"]:
            raise KeyboardInterrupt

    def evaluate(g, arch: str) -> list[float]:
        stop["evaluating"] = True
        try:
            if stop["requested"]:
                raise KeyboardInterrupt  # asked for while this trial was sampled: do not start it
            if a.evaluate == "surrogate":
                pred = sampler.predict([g], num_samples=SURROGATE_SAMPLES, seed=arch_seed(arch, a.seed), equivalents=EQUIVALENTS)
                return [float(pred.column(m)["median"][0]) for m in sampler.metrics]
            return _run_cmd(a.evaluate_cmd, arch, a.timeout, len(objectives), len(objectives) + len(constraints))
        finally:
            stop["evaluating"] = False

    def objective(trial):
        g = space.suggest(trial)
        arch = space.format(g)
        trial.set_user_attr("arch", arch)
        try:
            values = evaluate(g, arch)
        except EvaluationError as e:
            trial.set_user_attr("error", str(e))
            raise
        for m, v in zip(constraints, values[len(objectives):]):
            trial.set_user_attr(m, v)  # the measured constraint value; the sampler records it
        return values[: len(objectives)]

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    n_finished = len(study.get_trials(deepcopy=False, states=finished))
    remaining = a.trials - n_finished
    if n_finished:
        print(f"resuming study {name!r}: {n_finished} of {a.trials} trials already finished", file=sys.stderr)
    if a.evaluate == "surrogate":
        print(f"surrogate search: each trial's value is the RLM's median of {SURROGATE_SAMPLES} samples "
              f"(of up to {EQUIVALENTS} equivalent genotypes; checkpoint {a.checkpoint!r}); no network is trained or timed",
              file=sys.stderr)
    with tqdm(total=max(remaining, 0), desc=f"{a.space} search", unit="trial") as bar:
        def on_trial(study, trial):
            bar.update(1)
            if trial.state == optuna.trial.TrialState.FAIL:
                bar.set_postfix_str(f"trial {trial.number} failed")
            if stop["requested"]:
                study.stop()

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            if remaining > 0:
                study.optimize(objective, n_trials=remaining, callbacks=[on_trial], catch=(EvaluationError,))
        except KeyboardInterrupt:  # Optuna has already marked the evaluated trial failed
            pass
        finally:
            signal.signal(signal.SIGINT, previous)
    interrupted = stop["requested"]
    out = Path(a.out or Path("out") / name)
    report(study, space, sampler, objectives, constraints, a, out)
    if interrupted:
        print("interrupted: the study is saved; re-run the same command to resume", file=sys.stderr)
    return 130 if interrupted else 0


def report(study, space, sampler, objectives, constraints, a, out: Path) -> dict:
    """Write ``results.json``, ``best.onnx``, ``best.txt`` and ``pareto.png``; print the table."""
    import numpy as np
    from optuna.trial import TrialState

    from rlm_nas.optuna.sampler import ARCH_ATTR, PREDICTED_ATTR, _summary, constraint_values, pareto_mask

    out.mkdir(parents=True, exist_ok=True)
    extrapolated = [m for m in sampler.metrics if (a.space, m) not in sampler.rlm.known_pairs]
    trials = study.get_trials(deepcopy=False)
    records = []
    for t in trials:
        arch = t.user_attrs.get("arch") or t.system_attrs.get(ARCH_ATTR)
        pred = t.system_attrs.get(PREDICTED_ATTR) if t.system_attrs.get(ARCH_ATTR) == arch else None
        rec = {"number": t.number, "arch": arch, "state": t.state.name, "predicted": pred}
        ok = t.state == TrialState.COMPLETE
        if len(objectives) == 1:
            rec["value"] = t.value if ok else None
        else:
            rec["values"] = t.values if ok else None
        if constraints:
            rec["measured"] = {m: t.user_attrs[m] for m in constraints if m in t.user_attrs}
            rec["feasible"] = ok and all(c <= 0 for c in constraint_values(t))
        if "error" in t.user_attrs:
            rec["error"] = t.user_attrs["error"]
        records.append(rec)
    # Trials the sampler did not propose (enqueued, independent fallback): predict them now.
    todo = [r for r in records if r["arch"] and not r["predicted"]]
    if todo:
        pred = sampler.predict([space.parse(r["arch"]) for r in todo], seed=a.seed, equivalents=EQUIVALENTS)
        for i, r in enumerate(todo):
            r["predicted"] = _summary(pred, i)

    done = [r for r in records if r["state"] == "COMPLETE" and r.get("feasible", True)]
    signs = np.array([1.0 if d.name == "MAXIMIZE" else -1.0 for d in study.directions])
    vals = lambda r: [r["value"]] if "value" in r else r["values"]  # noqa: E731
    if done:
        scores = np.nan_to_num(np.array([vals(r) for r in done], dtype=float) * signs, nan=-np.inf)
        if len(objectives) == 1:
            front = [done[i] for i in np.argsort(-scores[:, 0], kind="stable")]
            best = front[0]
        else:
            front = sorted((r for r, m in zip(done, pareto_mask(scores)) if m), key=lambda r: -signs[0] * r["values"][0])
            best = front[0]  # of the front, the one best on the first objective
    else:
        front, best = [], None
    results = {
        "space": a.space, "objectives": objectives, "constraints": constraints, "evaluate": a.evaluate,
        "note": ("surrogate mode: every value is the RLM's prediction (median of "
                 f"{SURROGATE_SAMPLES} samples, of up to {EQUIVALENTS} equivalent genotypes), not a measurement") if a.evaluate == "surrogate" else
                "values were measured by --evaluate-cmd",
        "extrapolated": extrapolated,  # metrics the checkpoint had no training data for in this space
        "trials": records,
        "best": best if len(objectives) == 1 else front,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if best is not None:
        import onnx

        g = space.parse(best["arch"])
        model = space.to_onnx(g)
        onnx.checker.check_model(model)
        onnx.save(model, out / "best.onnx")
        (out / "best.txt").write_text(best["arch"] + "\n")
    if a.device and done:
        _plot(records, front if len(objectives) > 1 else [best], objectives, f"latency:{a.device}", constraints, out / "pareto.png")
    _table(front[:10], objectives, sampler.metrics, a.evaluate, len(records), extrapolated)
    print(f"results: {out / 'results.json'}" + (f", best: {out / 'best.txt'}" if best else ", no feasible trial completed"))
    return results


def _fmt_pred(p: dict | None) -> str:
    return "-" if not p else f"{p['median']:.4g} [{p['p10']:.4g}–{p['p90']:.4g}]"


def _table(rows: list[dict], objectives: list[str], metrics: tuple[str, ...], evaluate: str, n: int,
           extrapolated: list[str]) -> None:
    from rich.console import Console
    from rich.markup import escape  # "[p10–p90]" and darts' JSON would otherwise read as markup
    from rich.table import Table

    what = "Pareto front" if len(objectives) > 1 else f"top {len(rows)}"
    kind = "surrogate" if evaluate == "surrogate" else "measured"
    t = Table(title=escape(f"{what} of {n} trials ({kind} values; predicted = median [p10–p90])"))
    t.add_column("trial", justify="right")
    t.add_column("arch (full string in results.json)", overflow="ellipsis", no_wrap=True, max_width=36)
    guess = lambda m: " (extrapolated)" if m in extrapolated else ""  # noqa: E731
    for m in objectives:
        t.add_column(f"{m}\n{kind}{guess(m) if evaluate == 'surrogate' else ''}", justify="right")
    for m in metrics:
        t.add_column(f"{m}\npredicted{guess(m)}", justify="right")
    for r in rows:
        vals = [r["value"]] if "value" in r else r["values"]
        cells = [str(r["number"]), r["arch"], *(f"{v:.4g}" for v in vals), *(_fmt_pred((r["predicted"] or {}).get(m)) for m in metrics)]
        t.add_row(*map(escape, cells))
    Console(stderr=True, width=None if sys.stderr.isatty() else 160).print(t)  # logs: no 80-column squeeze


def _plot(records, front, objectives, latency, constraints, path: Path) -> None:
    """Objective vs latency: the RLM's predictions (median, p10–p90 bars) in grey, the trials'
    values (latency as predicted where none was measured) on top, the best/front in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obj = objectives[0]
    rows = [r for r in records if r["state"] == "COMPLETE" and r["predicted"] and {obj, latency} <= r["predicted"].keys()]

    def value(r, metric):
        vals = [r["value"]] if "value" in r else r["values"]
        if metric in objectives:
            return vals[objectives.index(metric)]
        return r.get("measured", {}).get(metric, r["predicted"][metric]["median"])

    fig, ax = plt.subplots(figsize=(6, 4.5))
    if rows:
        x = [r["predicted"][latency] for r in rows]
        y = [r["predicted"][obj] for r in rows]
        ax.errorbar([d["median"] for d in x], [d["median"] for d in y], fmt="o", color="0.7", ms=3, elinewidth=0.6,
                    xerr=[[d["median"] - d["p10"] for d in x], [d["p90"] - d["median"] for d in x]],
                    yerr=[[d["median"] - d["p10"] for d in y], [d["p90"] - d["median"] for d in y]],
                    label="predicted (median, p10–p90)")
        ax.scatter([value(r, latency) for r in rows], [value(r, obj) for r in rows], s=10, color="C0", zorder=3, label="trials")
        top = [r for r in front if r in rows]
        ax.scatter([value(r, latency) for r in top], [value(r, obj) for r in top], s=30, color="C3", zorder=4,
                   label="Pareto front" if len(objectives) > 1 else "best")
    if latency in constraints:
        ax.axvline(constraints[latency], color="k", ls="--", lw=1, label=f"budget {constraints[latency]:g} ms")
    ax.set_xlabel(f"{latency} (ms)")
    ax.set_ylabel(obj)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
