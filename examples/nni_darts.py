"""Search NNI's DARTS space with the RLM as a surrogate (NNI 3.0, sequential engine, CPU).

    python examples/nni_darts.py --checkpoint PATH [--trials 12] [--latency-budget 30]

Each round the RLMStrategy scores a pool of random DARTS samples with the RLM, trains only the
best predicted ones, and fine-tunes the RLM on what they reported. ``--latency-budget`` only
submits candidates whose predicted ``latency:pixel3`` (ms) is within the budget.

The evaluator here is a stand-in for training so the example runs in about a minute: it reports
a deterministic score of the architecture (more separable convolutions, higher score) instead of
training the network it receives. Replace ``evaluate`` with your training loop; report top-1 accuracy
in percent, the unit the RLM predicts. NNI writes its experiment under ``~/nni-experiments``.
"""

from __future__ import annotations

import argparse

import nni
from nni.nas.evaluator import FunctionalEvaluator
from nni.nas.experiment import NasExperiment, NasExperimentConfig
from nni.nas.hub.pytorch import DARTS

from rlm_nas.nni import RLMStrategy, nni_genotype


def evaluate(network) -> None:
    """Stand-in for training (see the module docstring)."""
    sample = nni.get_current_parameter().sample
    ops = [v for k, v in sample.items() if "/op_" in k]
    nni.report_final_result(85.0 + 10.0 * sum(op.startswith("sep_conv") for op in ops) / len(ops))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="default", help="RLM checkpoint directory, or 'default'")
    p.add_argument("--trials", type=int, default=8, help="networks to evaluate (default 8)")
    p.add_argument("--width", type=int, default=16, help="DARTS width, one of 16, 24, 32 (default 16)")
    p.add_argument("--depth", type=int, default=8, help="DARTS cells, one of 4, 8, 12, 16, 20 (default 8)")
    p.add_argument("--latency-budget", type=float, default=None, help="max predicted latency:pixel3 in ms")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    strategy = RLMStrategy(
        args.checkpoint, objective="accuracy:cifar10",
        constraints={"latency:pixel3": args.latency_budget} if args.latency_budget is not None else None,
        pool_size=16, batch_size=4, finetune_steps=3, finetune_seconds=5.0, seed=args.seed,
    )
    space = DARTS(width=args.width, num_cells=args.depth)
    config = NasExperimentConfig("sequential", "simplified", max_trial_number=args.trials)
    experiment = NasExperiment(space, FunctionalEvaluator(evaluate), strategy, config)
    experiment.run()

    print(f"\nevaluated {len(list(strategy.list_models(sort=False)))} networks; the best:")
    from search_spaces import get_space

    darts = get_space(strategy.space_name)
    for model in strategy.list_models(limit=3):
        print(f"  {model.metric:6.2f}  {darts.format(nni_genotype(darts, model))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
