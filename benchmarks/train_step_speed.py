"""Training-step time of a checkpoint's architecture in float32 and under bf16 autocast.

    python benchmarks/train_step_speed.py --checkpoint default --threads 1

One optimizer step (forward, backward, AdamW) on batches of 8 sampled NB201, FBNet and NB301
architectures with 8 labels each, the shape of a training step of the default's recipe (one
process of its two). Each batch is built once and reused, so the ONNX export is not timed.
Reports the median step per space and precision, and what ``rlm_nas.train.bf16_fast`` (the
trainer's ``--precision auto``) chooses on this machine, with the matmul speedup it measured.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

SPACES = ("nb201", "fbnet", "nb301")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="default", help="checkpoint whose architecture is timed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the recipe's processes use 1)")
    p.add_argument("--batches", type=int, default=4, help="batches per space")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the batches")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args(argv)

    import torch

    from rlm_nas.convert import model_input
    from rlm_nas.model import RLM
    from rlm_nas.train import autocast, bf16_fast, cpu_bf16_speedup
    from search_spaces import get_space

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    rng = random.Random(0)
    rlm = RLM.from_pretrained(args.checkpoint)
    metrics = list(rlm.metrics)
    batches = []
    for space in SPACES:
        for _ in range(args.batches):
            archs = get_space(space).sample(args.batch_size, seed=rng.randrange(2**31))
            rows = [rng.sample(metrics, 8) for _ in archs]
            batches.append((space, rlm.make_batch([model_input(space, a) for a in archs], rows,
                                                  [[rng.uniform(0.1, 90.0) for _ in r] for r in rows])))
    medians = {}
    for precision in ("fp32", "bf16"):
        rlm = RLM.from_pretrained(args.checkpoint)  # the same start for both
        module = rlm.module.float().train()
        opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

        def step(batch) -> float:
            t = time.perf_counter()
            with autocast(cpu, precision == "bf16"):
                loss = module(**batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t

        for _, batch in batches[:: args.batches]:
            step(batch)  # warm-up: allocations and kernel choices
        times: dict[str, list[float]] = {s: [] for s in SPACES}
        for _ in range(args.repeats):
            for space, batch in batches:
                times[space].append(step(batch))
        medians[precision] = {s: 1000 * statistics.median(v) for s, v in times.items()}

    print(f"checkpoint {args.checkpoint}; {args.threads} thread(s); batch {args.batch_size} x 8 labels; "
          f"median of {args.batches * args.repeats} steps per cell (ms)\n")
    print("| space | fp32 | bf16 | fp32 / bf16 |\n|---|---:|---:|---:|")
    for s in SPACES:
        a, b = medians["fp32"][s], medians["bf16"][s]
        print(f"| {s} | {a:.1f} | {b:.1f} | {a / b:.2f} |")
    print(f"\n--precision auto on this CPU: {'bf16' if bf16_fast(cpu) else 'fp32'} "
          f"(bf16 matmul measured {cpu_bf16_speedup():.1f}x the fp32 one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
