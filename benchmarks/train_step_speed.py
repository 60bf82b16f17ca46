"""Training-step time of a checkpoint's architecture: precision, the trainer's CPU settings, dropout.

    python benchmarks/train_step_speed.py --checkpoint default --threads 1

One optimizer step (forward, backward, AdamW) on a batch of 8 architectures with 8 labels each,
the shape of a training step of the default's recipe (one process of its two). Each step draws
its batch from a pool of converted texts of one space, so batch widths vary as in training (the
ONNX export is not timed). Rows, all in one run:

- ``fp32`` and ``bf16``: the trainer's settings, in float32 and under bf16 autocast;
- ``bf16, exact widths, flash attention``: bf16 without the trainer's two CPU settings (batch
  widths padded to a multiple of ``rlm_nas.model.PAD_MULTIPLE``; the math attention kernel for
  texts up to ``MATH_ATTENTION_MAX_TOKENS`` tokens), i.e. the step before they were made;
- ``bf16, dropout 0.1`` and ``bf16, dropout 0.1 + attention dropout 0.1``: fresh weights of the
  same shape with ``ModelConfig.dropout`` (hidden states), then ``attention_dropout`` too.

Cells are the median step per space (ms); ``mix`` weighs the spaces by their share of the default
recipe's first-stage batches (about 61% NB201, 19% FBNet, 20% cell spaces, NB301's texts standing
for the cells'). Also printed: what ``rlm_nas.train.bf16_fast`` (the trainer's ``--precision
auto``) chooses on this machine, with the matmul speedup it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

SPACES = ("nb201", "fbnet", "nb301")
MIX = {"nb201": 0.61, "fbnet": 0.19, "nb301": 0.20}
SETTINGS = ("fp32", "bf16", "bf16, exact widths, flash attention", "bf16, dropout 0.1", "bf16, dropout 0.1 + attention dropout 0.1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="default", help="checkpoint whose architecture is timed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the recipe's processes use 1)")
    p.add_argument("--pool", type=int, default=64, help="converted texts per space that batches are drawn from")
    p.add_argument("--steps", type=int, default=24, help="timed steps per space and setting")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)

    import torch

    import rlm_nas.model as M
    from rlm_nas.convert import model_input
    from rlm_nas.model import RLM
    from rlm_nas.train import autocast, bf16_fast, cpu_bf16_speedup
    from search_spaces import get_space

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    loaded = RLM.from_pretrained(args.checkpoint)
    single = loaded.members[0]  # an ensemble trains its members alike; time one
    metrics = list(single.metrics)
    pools = {s: [model_input(s, a) for a in get_space(s).sample(args.pool, seed=1)] for s in SPACES}
    defaults = (M.PAD_MULTIPLE, M.MATH_ATTENTION_MAX_TOKENS)

    def model_for(setting: str) -> RLM:
        if "dropout" not in setting:
            return loaded.members[0]  # `members` copies: each setting starts from the same weights
        cfg = dataclasses.replace(single.config, dropout=0.1, attention_dropout=0.1 if "attention" in setting else 0.0)
        return RLM.create(cfg, single.text_tokenizer, metrics)

    medians: dict[str, dict[str, float]] = {}
    for setting in SETTINGS:
        M.PAD_MULTIPLE, M.MATH_ATTENTION_MAX_TOKENS = (1, 0) if "exact widths" in setting else defaults
        rlm = model_for(setting)
        module = rlm.module.float().train()
        opt = torch.optim.AdamW(module.parameters(), lr=1e-5)
        rng = random.Random(0)  # the same batches for every setting

        def step(space: str) -> float:
            texts = rng.sample(pools[space], args.batch_size)
            rows = [rng.sample(metrics, 8) for _ in texts]
            batch = rlm.make_batch(texts, rows, [[rng.uniform(0.1, 90.0) for _ in r] for r in rows])
            t = time.perf_counter()
            with autocast(cpu, setting != "fp32"):
                loss = module(**batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t

        times: dict[str, list[float]] = {s: [] for s in SPACES}
        for space in SPACES:
            for _ in range(3):
                step(space)  # warm-up: allocations and kernel choices
            times[space] = [step(space) for _ in range(args.steps)]
        medians[setting] = {s: 1000 * statistics.median(v) for s, v in times.items()}
        medians[setting]["mix"] = sum(MIX[s] * medians[setting][s] for s in SPACES)
    M.PAD_MULTIPLE, M.MATH_ATTENTION_MAX_TOKENS = defaults

    print(f"checkpoint {args.checkpoint}; {args.threads} thread(s); batch {args.batch_size} x 8 labels drawn from "
          f"{args.pool} texts per space; median of {args.steps} steps per cell (ms)\n")
    ref = medians["bf16"]["mix"]
    print("| setting | " + " | ".join(SPACES) + " | mix | mix / bf16 |\n|---|" + "---:|" * (len(SPACES) + 2))
    for setting, m in medians.items():
        print(f"| {setting} | " + " | ".join(f"{m[s]:.1f}" for s in SPACES) + f" | {m['mix']:.1f} | {m['mix'] / ref:.2f} |")
    print(f"\n--precision auto on this CPU: {'bf16' if bf16_fast(cpu) else 'fp32'} "
          f"(bf16 matmul measured {cpu_bf16_speedup():.1f}x the fp32 one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
