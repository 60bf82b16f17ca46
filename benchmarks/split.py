"""The fixed test split every benchmark uses: architectures whose labels no model trains on.

    python benchmarks/split.py --data ../shared/data --out benchmarks/test_split.json

Split by architecture with a fixed seed: per space, a random subset of the architectures that
have labels (NB201: 1,000 of those with accuracy and latency; FBNet: 500; NB301: 120 of 600).
Training commands pass this file as ``--exclude``, so these architectures are absent from
training *and* from validation/early stopping; benchmarks evaluate on them only.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict

from rlm_nas.data import load_dir

TEST_ARCHS = {"nb201": 1000, "fbnet": 500, "nb301": 120}


def make_split(data: str, seed: int = 0) -> dict:
    examples, _ = load_dir(data, progress=False)
    metrics = defaultdict(set)
    for e in examples:
        metrics[(e.space, e.arch)].add(e.metric)
    # Only architectures with the space's full label set: every task is then scored on the same archs.
    full = {space: max(len(m) for (s, _), m in metrics.items() if s == space) for space in TEST_ARCHS}
    rng = random.Random(seed)
    archs = []
    for space, n in TEST_ARCHS.items():
        pool = sorted(a for (s, a), m in metrics.items() if s == space and len(m) == full[space])
        archs += [[space, a] for a in rng.sample(pool, n)]
    return {"seed": seed, "counts": TEST_ARCHS, "archs": archs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", default="benchmarks/test_split.json")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    split = make_split(args.data, args.seed)
    with open(args.out, "w") as f:
        json.dump(split, f, indent=0)
    print(f"wrote {args.out}: {split['counts']}")


if __name__ == "__main__":
    main()
