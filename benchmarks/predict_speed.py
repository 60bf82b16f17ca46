"""End-to-end scoring speed of NB201 architectures: native string line -> CSV row.

    python benchmarks/predict_speed.py --checkpoint /tmp/train_default/out
    python benchmarks/predict_speed.py --quick --checkpoint PATH

Each repeat writes ``--n`` distinct sampled NB201 strings (a new sample per repeat, conversion
cache cleared, so nothing is reused) to a file and runs the prediction CLI's pipeline on it
(:func:`rlm_nas.predict.read_archs` -> :func:`~rlm_nas.predict.predict_lines` ->
:func:`~rlm_nas.predict.write_csv`: parse, ONNX, canonical text, tokenize, encode, sample,
CSV) with ``--samples`` samples per metric. The checkpoint is loaded once beforehand (its load
time is reported apart). Reported: archs/s, the median over repeats, and the time per arch spent
in ONNX build (``space.to_onnx``), text (``onnx_to_text``), tokenize, encode (the encoder
and cross-attention keys/values) and decode (grammar-constrained sampling and number decoding),
measured inside the same runs by wrapping those functions; ``other`` is the rest (file I/O,
parsing, aggregates). Rows: one metric, four, and every NB201 metric the checkpoint was trained on.
``archs/CPU-s`` divides by this process's CPU time instead of wall time: on a shared machine it
is close to what a quiet core would give (with one torch thread, the default). Target: >= 25
archs/s for one metric on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 25.0
STAGES = ("onnx", "text", "tokenize", "encode", "decode", "other")
FOUR = ("accuracy:cifar10", "latency:pixel3", "latency:1080ti_1", "latency:gold_6226")


@contextmanager
def timed(obj, name: str, acc: dict, key: str):
    """Replace ``obj.name`` by a wrapper adding its wall time to ``acc[key]``; restore after."""
    had = name in vars(obj)
    fn = getattr(obj, name)

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[key] += time.perf_counter() - t

    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, fn)
        else:
            delattr(obj, name)


def run_once(rlm, archs: list[str], metrics: list[str], samples: int, batch_size: int, workdir: Path) -> dict:
    """Seconds of one end-to-end run over ``archs``, total and per stage."""
    import search_spaces.text
    from rlm_nas.convert import clear_cache
    from rlm_nas.predict import predict_lines, read_archs, write_csv
    from search_spaces import get_space

    clear_cache()
    src, out = workdir / "archs.txt", workdir / "pred.csv"
    src.write_text("\n".join(archs) + "\n")
    acc = dict.fromkeys(("onnx", "text", "tokenize", "encode", "predict"), 0.0)
    with ExitStack() as stack:
        for obj, name, key in ((get_space("nb201"), "to_onnx", "onnx"), (search_spaces.text, "onnx_to_text", "text"),
                               (rlm.text_tokenizer, "encode", "tokenize"), (rlm, "predict", "predict"),
                               *((m, "encode", "encode") for m in rlm.member_modules)):  # an ensemble: every member's
            stack.enter_context(timed(obj, name, acc, key))
        t, cpu = time.perf_counter(), time.process_time()
        rows = predict_lines(rlm, "nb201", read_archs(src, "nb201"), metrics, samples, seed=0, batch_size=batch_size, progress=False)
        write_csv(out, rows, with_metric=len(metrics) > 1)
        total, cpu = time.perf_counter() - t, time.process_time() - cpu
    # RLM.predict converts the native strings itself: its time holds the ONNX build and the text.
    decode = acc["predict"] - acc["onnx"] - acc["text"] - acc["tokenize"] - acc["encode"]
    other = total - acc["predict"]
    return {"total": total, "cpu": cpu, "onnx": acc["onnx"], "text": acc["text"], "tokenize": acc["tokenize"], "encode": acc["encode"],
            "decode": decode, "other": other}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="default", help="RLM checkpoint folder, or 'default' (rlm_nas/checkpoints/default)")
    p.add_argument("--n", type=int, default=200, help="architectures per repeat (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="repeats per row; the median is reported (default: %(default)s)")
    p.add_argument("--samples", type=int, default=8, help="samples per architecture and metric (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="the prediction CLI's default (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s, as the prediction CLI)")
    p.add_argument("--quick", action="store_true", help="64 archs x 1 repeat")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "predict_speed.md"), help="markdown report; JSON beside it")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 64, 1
    if min(args.n, args.repeats, args.samples, args.batch_size, args.threads) < 1:
        p.error("--n, --repeats, --samples, --batch-size and --threads must be >= 1")

    import torch

    from rlm_nas.model import RLM, CheckpointError
    from search_spaces import get_space

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    try:
        rlm = RLM.from_pretrained(args.checkpoint)
    except (FileNotFoundError, CheckpointError) as e:
        p.error(f"--checkpoint {args.checkpoint}: {e}")
    load_s = time.perf_counter() - t
    known = sorted(m for s, m in rlm.known_pairs if s == "nb201") or [m for m in rlm.metrics]
    sets = {"1 (latency:pixel3)": ["latency:pixel3"], "4": list(FOUR), f"all nb201 ({len(known)})": known}
    missing = sorted({m for ms in sets.values() for m in ms} - set(rlm.metrics))
    if missing:
        p.error(f"--checkpoint {args.checkpoint} does not predict {', '.join(missing)}; it knows {', '.join(rlm.metrics)}")

    space = get_space("nb201")
    rows, load = [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        run_once(rlm, [space.format(g) for g in space.sample(16, seed=10_000)], ["latency:pixel3"], args.samples,
                 args.batch_size, Path(tmp))  # warm-up: imports, lazy init
        for label, metrics in sets.items():
            runs = []
            for r in range(args.repeats):
                archs = [space.format(g) for g in space.sample(args.n, seed=r)]
                runs.append(run_once(rlm, archs, metrics, args.samples, args.batch_size, Path(tmp)))
                print(f"  {label}: repeat {r + 1}/{args.repeats}: {args.n / runs[-1]['total']:.1f} archs/s", file=sys.stderr, flush=True)
            med = {k: statistics.median(x[k] for x in runs) for k in ("total", *STAGES)}
            rows.append({"metrics": label, "n_metrics": len(metrics), "archs_per_s": statistics.median(args.n / x["total"] for x in runs),
                         "archs_per_cpu_s": statistics.median(args.n / x["cpu"] for x in runs),
                         "ms_per_arch": {k: 1e3 * v / args.n for k, v in med.items()}, "runs": runs})

    load.append(os.getloadavg()[0])
    md = [f"# End-to-end NB201 scoring speed\n",
          f"Command: `python {' '.join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])}`  ",
          f"{args.n} archs x {args.repeats} repeats (median), {args.samples} samples per metric, batch {args.batch_size}, "
          f"{args.threads} torch threads, checkpoint {args.checkpoint} ({rlm!r}, loaded once in {load_s:.1f} s, not counted). "
          f"{os.cpu_count()} CPUs; 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end"
          + (" (other processes shared the cores: wall figures are pessimistic, archs per CPU-second much less so).\n"
             if max(load) > os.cpu_count() else ".\n"),
          "| metrics | archs/s | archs/CPU-s | ms/arch | ONNX build | text | tokenize | encode | decode | other | target >= 25/s |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ms = r["ms_per_arch"]
        verdict = ("PASS" if r["archs_per_s"] >= TARGET else "FAIL") if r["n_metrics"] == 1 else "(reference)"
        md.append(f"| {r['metrics']} | {r['archs_per_s']:.1f} | {r['archs_per_cpu_s']:.1f} | {ms['total']:.1f} | " + " | ".join(f"{ms[k]:.1f}" for k in STAGES)
                  + f" | {verdict} |")
    md.append("\nStage columns: ms per architecture (medians over repeats).")
    text = "\n".join(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "load_s": load_s, "loadavg": load, "rows": rows}, indent=1) + "\n")
    print(text)
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
