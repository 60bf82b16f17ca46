"""RLMSampler loaded through OptunaHub, searching NAS-Bench-201 (CPU, well under a minute).

    python examples/optunahub/example.py [--checkpoint default|PATH] [--trials 10]

The objective is a stand-in for training (more 3x3 convolutions, higher score); replace it with
your training loop and return top-1 accuracy in percent, the unit the RLM predicts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna
import optunahub

from search_spaces import get_space

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="default", help="RLM checkpoint directory, or 'default'")
    p.add_argument("--trials", type=int, default=10)
    args = p.parse_args(argv)

    # This folder is the package; once it is in the OptunaHub registry this line becomes
    # optunahub.load_module("samplers/rlm_nas").
    module = optunahub.load_local_module(package=HERE.name, registry_root=str(HERE.parent))
    space = get_space("nb201")
    sampler = module.RLMSampler(space, objectives=["accuracy:cifar10"], checkpoint=args.checkpoint, seed=0)

    def objective(trial: optuna.Trial) -> float:
        ops = list(space.to_params(space.suggest(trial)).values())
        return 85.0 + 10.0 * ops.count("nor_conv_3x3") / len(ops)

    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=args.trials)
    print(f"best {study.best_value:.2f}: {space.format(space.from_params(study.best_params))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
