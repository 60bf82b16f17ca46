"""Most accurate NAS-Bench-201 cell within a latency budget on a Pixel 3, with Optuna (CPU, < 1 min).

    python examples/latency_constrained.py [--checkpoint default|PATH] [--budget 12] [--trials 20]

:class:`rlm_nas.optuna.RLMSampler` with ``constraints={"latency:pixel3": budget}`` only proposes
architectures whose *predicted* Pixel 3 latency is within the budget. After each trial it stores the
constraint ``latency - budget`` where Optuna reads it, so ``study.best_trial`` is the best
*feasible* trial. The latency stored is the one the objective measured and reported with
``trial.set_user_attr("latency:pixel3", ms)``; without one (as here: no phone attached) it is the
RLM's predicted median, and the trial's ``rlm:constraint_source`` system attribute says so.

The accuracy is a stand-in for training so that the example runs quickly: a deterministic score
(more 3x3 convolutions, higher score). Replace ``train_and_evaluate`` with your training loop
(accuracy in percent), and report measured latency in milliseconds if you can.
"""

from __future__ import annotations

import argparse

import optuna

from rlm_nas.optuna import RLMSampler
from rlm_nas.optuna.sampler import constraint_values
from search_spaces import get_space

DEVICE = "latency:pixel3"


def train_and_evaluate(space, genotype) -> float:
    """Stand-in for training (see the module docstring)."""
    ops = list(space.to_params(genotype).values())
    return 85.0 + 10.0 * ops.count("nor_conv_3x3") / len(ops)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="default", help="RLM checkpoint directory, or 'default'")
    p.add_argument("--budget", type=float, default=12.0, help="max Pixel 3 latency in ms (default 12)")
    p.add_argument("--trials", type=int, default=20, help="trials to run (default 20)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    space = get_space("nb201")
    sampler = RLMSampler(space, objectives=["accuracy:cifar10"], constraints={DEVICE: args.budget},
                         checkpoint=args.checkpoint, finetune_every=5, seed=args.seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        genotype = space.suggest(trial)
        # A measured latency would be reported like this (milliseconds):
        # trial.set_user_attr(DEVICE, measure_on_pixel3(genotype))
        return train_and_evaluate(space, genotype)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=args.trials, show_progress_bar=True)

    feasible = [t for t in study.trials if all(c <= 0 for c in constraint_values(t))]
    print(f"{len(feasible)} of {len(study.trials)} trials within {args.budget:g} ms on {DEVICE.split(':')[1]}")
    try:
        best = study.best_trial  # the best feasible trial (Optuna reads the recorded constraints)
    except ValueError:  # Optuna 5 when no completed trial is feasible
        print("no trial is predicted within the budget; raise --budget")
        return 0
    latency = best.system_attrs["rlm:predicted"][DEVICE]
    print(f"best: {best.value:.2f} at {latency['median']:.2f} ms predicted (p10-p90 {latency['p10']:.2f}-"
          f"{latency['p90']:.2f}; source: {best.system_attrs['rlm:constraint_source'][DEVICE]})")
    print(space.format(space.from_params(best.params)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
