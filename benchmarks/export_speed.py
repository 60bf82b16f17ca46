"""Speed of the direct ONNX path against the exporter path, and text length, per search space.

Direct path (what the surrogate uses): ``space.sample`` -> ``space.to_onnx`` -> ``onnx_to_text``,
timed end to end in one process. Exporter path, on the same networks (the first few of the
sample): ``torch.onnx.export`` + ``onnxsim`` + ``onnx_to_text`` of ``space.build(g)`` with a
1x3x32x32 input (``search_spaces.export_onnx``); building the torch module is NOT timed, which
favours the exporter path, so the reported speedup is a lower bound. Times are wall-clock
per-candidate medians over repeats, with torch limited to one thread.

Text length: characters of ``onnx_to_text`` over ``--n-length`` sampled genotypes (median, max).

    python benchmarks/export_speed.py            # full: 200 direct x 3, 10 exported x 2, 1,000 lengths
    python benchmarks/export_speed.py --quick    # a short run (~1 minute)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from search_spaces import SPACE_NAMES, export_onnx, get_space, onnx_to_text


def _direct_ms(space, n: int, seed: int) -> tuple[float, float]:
    """Wall and CPU milliseconds per candidate for sample -> to_onnx -> onnx_to_text of ``n``.

    CPU time is reported beside wall time because the machine may be shared: on a busy machine
    wall time grows with the other jobs, CPU time of this single-threaded loop much less.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    for g in space.sample(n, seed=seed):
        onnx_to_text(space.to_onnx(g))
    return (time.perf_counter() - wall) / n * 1e3, (time.process_time() - cpu) / n * 1e3


def _exporter_ms(space, genotypes, repeats: int) -> float:
    """Median over networks of the median over repeats, in ms, of export + onnxsim + text."""
    x = torch.zeros(1, *space.input_shape)
    per_net = []
    for g in genotypes:
        net = space.build(g)  # not timed (see the module docstring)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            onnx_to_text(export_onnx(net, x))
            times.append(time.perf_counter() - start)
        per_net.append(statistics.median(times))
    return statistics.median(per_net) * 1e3


def run(spaces, n_direct: int, n_export: int, n_length: int, repeats: int, export_repeats: int, seed: int) -> list[dict]:
    rows = []
    for name in spaces:
        space = get_space(name)
        _direct_ms(space, 3, seed)  # warm-up: imports, schema caches
        timings = [_direct_ms(space, n_direct, seed + r) for r in range(repeats)]
        direct = statistics.median(t[0] for t in timings)
        direct_cpu = statistics.median(t[1] for t in timings)
        try:
            exporter = _exporter_ms(space, space.sample(n_export, seed=seed), export_repeats)
        except ValueError as e:  # an op the exporter cannot handle: report it, keep the other figures
            print(f"  {name}: exporter path failed: {e}", flush=True)
            exporter = float("nan")
        lengths = [len(onnx_to_text(space.to_onnx(g))) for g in space.sample(n_length, seed=seed + 1000)]
        rows.append(
            dict(
                space=name,
                direct_ms=direct,
                direct_cpu_ms=direct_cpu,
                per_s=1e3 / direct,
                exporter_ms=exporter,
                speedup=exporter / direct,
                len_median=statistics.median(lengths),
                len_max=max(lengths),
            )
        )
        print(f"  {name}: {1e3 / direct:.0f}/s, {exporter / direct:.0f}x", flush=True)
    return rows


def markdown(rows: list[dict], args) -> str:
    head = (
        f"direct: {args.n_direct} candidates x {args.repeats} repeats; exporter: {args.n_export} networks x "
        f"{args.export_repeats} repeats; text length over {args.n_length} samples\n\n"
        "| space | direct cand/s | direct ms/cand | direct CPU ms/cand | exporter ms/cand | speedup "
        "| text chars median | text chars max |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {r['space']} | {r['per_s']:.0f} | {r['direct_ms']:.1f} | {r['direct_cpu_ms']:.1f} | {r['exporter_ms']:.0f} "
        f"| {r['speedup']:.0f}x "
        f"| {r['len_median']:.0f} | {r['len_max']} |\n"
        for r in rows
    )
    return head + body


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run: 30 direct, 3 exported, 100 lengths, 1 repeat")
    parser.add_argument("--spaces", nargs="+", choices=SPACE_NAMES, default=list(SPACE_NAMES))
    parser.add_argument("--n-direct", type=int, default=200)
    parser.add_argument("--n-export", type=int, default=10)
    parser.add_argument("--n-length", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the direct-path loop")
    parser.add_argument("--export-repeats", type=int, default=2, help="repeats of each exporter-path network")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.n_direct, args.n_export, args.n_length, args.repeats, args.export_repeats = 30, 3, 100, 1, 1
    torch.set_num_threads(1)  # single process, single thread: the direct path uses one core too
    rows = run(args.spaces, args.n_direct, args.n_export, args.n_length, args.repeats, args.export_repeats, args.seed)
    print()
    print(markdown(rows, args))


if __name__ == "__main__":
    main()
