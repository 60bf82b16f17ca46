"""Search the DARTS space with Optuna, the RLM proposing each architecture (CPU, ~1 minute).

    python examples/optuna_darts.py [--checkpoint default|PATH] [--trials 20] [--storage sqlite:///darts.db]

Each trial, :class:`rlm_nas.optuna.RLMSampler` scores new candidates (random DARTS cells and
mutations of the best so far) with the RLM and proposes the most promising one; the objective
evaluates it, and every few trials the RLM is fine-tuned on those results (``online_finetune``).

The objective here is a stand-in for training so that the example runs in about a minute: a
deterministic score of the architecture (more separable convolutions, higher score). Replace
``train_and_evaluate`` with your training loop and return top-1 accuracy in percent, the unit the
RLM predicts. With ``--storage`` the study is kept in a database; run the script again to add trials,
or start it in several terminals at once: they share the study.
"""

from __future__ import annotations

import argparse

import optuna

from rlm_nas.optuna import RLMSampler
from search_spaces import get_space


def train_and_evaluate(space, genotype) -> float:
    """Stand-in for training (see the module docstring)."""
    ops = [v for v in space.to_params(genotype).values() if isinstance(v, str)]
    return 85.0 + 10.0 * sum(op.startswith("sep_conv") for op in ops) / len(ops)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="default", help="RLM checkpoint directory, or 'default'")
    p.add_argument("--trials", type=int, default=20, help="trials to run (default 20)")
    p.add_argument("--storage", default=None, help="Optuna storage URL, e.g. sqlite:///darts.db (default: in memory)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    space = get_space("darts")
    sampler = RLMSampler(space, objectives=["accuracy:cifar10"], checkpoint=args.checkpoint,
                         finetune_every=5, seed=args.seed)
    study = optuna.create_study(direction="maximize", sampler=sampler, storage=args.storage,
                                study_name="optuna-darts", load_if_exists=True)

    def objective(trial: optuna.Trial) -> float:
        genotype = space.suggest(trial)  # the sampler's proposal, as a DARTS genotype
        return train_and_evaluate(space, genotype)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=args.trials, show_progress_bar=True)

    best = study.best_trial
    predicted = best.system_attrs["rlm:predicted"]["accuracy:cifar10"]
    print(f"{len(study.trials)} trials; best {best.value:.2f} (trial {best.number}; the RLM predicted "
          f"{predicted['median']:.2f}, p10-p90 {predicted['p10']:.2f}-{predicted['p90']:.2f})")
    print(space.format(space.from_params(best.params)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
