"""Write the shipped checkpoint's model card from the training run's ``metrics.json``.

    python benchmarks/model_card.py --run OUT --checkpoint rlm_nas/checkpoints/default \
        --command "python -m rlm_nas.train ..." --wall "52 min" --peak-mem "2.1 GiB"

The card lists every (space, metric) pair the model was trained on, with Spearman and Kendall-tau
on the run's validation architectures (held out by architecture, never trained on). Pairs with
too few validation architectures, or constant predictions, show ``n/a``: say so, don't guess.
Beside it goes ``training.json``: the run's ``metrics.json`` without its bulky history and list
of validation architectures, so benchmarks can check what the shipped model was trained on.

An ensemble (``RLM.ensemble``) takes one ``--run`` per member (its last stage's folder) and the
``--scores`` of the ensemble itself, which the card shows.

The trainer keeps the weights with the best validation score. To ship the end of the schedule
(``OUT/last``) instead, score those weights on the same validation architectures with a zero-step
run and pass its folder as ``--scores``::

    python -m rlm_nas.train ... --init OUT/last --holdout OUT/metrics.json --max-steps 0 --out SCORES

The card's remarks on greedy decoding and on equivalent genotypes are counted from
``benchmarks/results/{sample_count,equivalents}.json``, and only when those reports carry the
digest of the shipped weights: run both benchmarks on a new checkpoint before writing its card.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
sys.path.insert(0, str(ROOT / "benchmarks"))
from rlm_nas.config import ModelConfig  # noqa: E402
from sample_count import weights_digest  # noqa: E402


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


ENCODER_NAMES = {"modernbert": "a ModernBERT encoder", "t5": "a T5 encoder"}


def _report(path: Path, digest: str) -> dict | None:
    """A benchmark report's JSON if it measured the weights with this digest, else None."""
    report = json.loads(path.read_text()) if path.is_file() else {}
    return report if report.get("weights") == digest else None


def decoding_remarks(checkpoint: Path, results: Path) -> tuple[str, str]:
    """The card's remarks on greedy decoding and equivalent genotypes, counted from the reports of
    ``benchmarks/sample_count.py`` and ``benchmarks/equivalents.py`` when they measured these
    weights; otherwise the card says they have yet to be run, rather than quote another model."""
    digest = weights_digest(checkpoint)
    samples, equivalents = _report(results / "sample_count.json", digest), _report(results / "equivalents.json", digest)
    if samples:
        rows = samples["rows"]
        worse = sum(r["greedy"] < r["quantiles@1"] for r in rows)
        greedy = f"which ranks this model worse on {worse} of the {len(rows)} benchmarked tasks, `benchmarks/sample_count.py`"
    else:
        greedy = "which `benchmarks/sample_count.py` compares (not yet run on these weights)"
    if equivalents:
        rows = equivalents["rows"]
        better = sum(r["8"]["kendall"] > r["1"]["kendall"] for r in rows)
        average = f"ranks this model better than one genotype on {better} of the {len(rows)} tasks measured (Kendall-τ)"
    else:
        average = "is compared with one genotype by `benchmarks/equivalents.py` (not yet run on these weights)"
    return greedy, average


def card(runs: list[Path], command: str, wall: str, peak_mem: str, encoder: str, remarks: tuple[str, str],
         scores: Path | None = None, member_weights: str = "its last stage's best",
         member_scores: list[Path] | None = None) -> str:
    """The card's markdown; ``runs``: one per ensemble member; ``remarks``: :func:`decoding_remarks`;
    ``member_weights``: what each member's weights are; ``member_scores``: zero-step runs that scored
    each member's shipped weights (when those are not its run's best, e.g. ``RLM.average``)."""
    greedy, average = remarks
    members = [json.loads((r / "metrics.json").read_text()) for r in runs]
    m = members[0]
    s = None if scores is None else json.loads((scores / "metrics.json").read_text())
    steps = " and ".join(f"{x['steps']} ({x.get('stopped') or 'schedule completed'})" for x in members)
    if len(runs) > 1:
        rows = s["val"]
        scored = [json.loads((r / "metrics.json").read_text()) for r in member_scores] if member_scores else members
        own = ", ".join(f"{x['best']['mean_spearman']:.3f}" for x in scored)
        weights = (f"; each member's weights are {member_weights}; the ensemble's validation mean Spearman "
                   f"{s['best']['mean_spearman']:.3f} (the members': {own})")
    elif s is None:
        rows, weights = m["val"], (f"; the weights are step {m['best']['step']}'s, the best validation score" if m.get("best") else "")
    else:
        rows = s["val"]
        weights = (f"; the weights are the last step's (validation mean Spearman {s['best']['mean_spearman']:.3f}; "
                   f"the best, {m['best']['mean_spearman']:.3f}, was step {m['best']['step']}'s)")
    rows = sorted(rows, key=lambda r: (r["space"], r["metric"]))
    split = m["split"]
    # A later training stage (--init, --holdout) validates on an earlier stage's or run's
    # architectures, so no stage ever trained on them.
    validation = ("the architectures that `--holdout` named (an earlier stage's or run's validation set), never trained on"
                  if split.get("holdout") else f"validation fraction {split['val_fraction']} per space, seed {split['seed']}")
    if len(runs) > 1:  # later members train with --holdout of the first: one validation set, never trained on
        validation = (f"validation architectures: the first member's ({validation}); the other members held them out "
                      "(`--holdout`), so no member trained on them")
    elif split.get("holdout"):
        validation = f"validation architectures: {validation}"
    what = (f"An ensemble of {len(runs)} independently trained encoder-decoder regression language models (each "
            if len(runs) > 1 else "An encoder-decoder regression language model (")
    lines = [
        "# rlm-nas default checkpoint",
        "",
        f"{what}{ENCODER_NAMES[encoder]} and a T5 decoder from `transformers`,",
        "trained from scratch on a 2-core CPU) that reads `\"{space}\\n\\n{canonical ONNX text}\"` and writes each metric as",
        "sign, exponent and mantissa tokens under a grammar mask. Load it with `RLM.from_pretrained(\"default\")`."
        + (" Each member draws the requested samples and `RLM.predict` averages their sorted draws (their quantiles)."
           if len(runs) > 1 else ""),
        "",
        f"- Training command: `{command}`",
        f"- Wall time: {wall}; peak memory: {peak_mem}; steps of the last stage: {steps}" + weights,
        f"- Split: by architecture. The benchmarks' test architectures (`benchmarks/test_split.json`) were excluded",
        f"  from training and validation; {validation}.",
        "- Weights are stored in float16 (loaded as float32).",
        "",
        "## Held-out quality per (space, metric)",
        "",
        "Validation architectures of the training run, scored as its trainer did (the model's median, one",
        f"quantile draw; trainers before 2026-11-25 decoded greedily, {greedy}).",
        "The test-split figures against baselines are in `benchmarks/RESULTS.md`. Pairs not listed have no training",
        "data: predictions for them are flagged `extrapolated`. In the cell spaces (the NDS ones and `nb301`),",
        f"averaging 8 genotypes of the same network (`RLM.predict(equivalents=8)`, the CLIs' default) {average}",
        "(`benchmarks/results/equivalents.md`).",
        "",
        "| space | metric | val archs | Spearman | Kendall-τ |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {r['space']} | {r['metric']} | {r['n']} | {_fmt(r['spearman'])} | {_fmt(r['kendall'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def training_record(runs: list[Path], scores: Path | None = None) -> dict:
    """The run's ``metrics.json`` minus ``history`` and ``split.val_archs`` (~10 KB instead of ~0.5 MB).

    With ``scores``, its ``val`` rows are those of the shipped weights, as on the card; ``best``
    stays the run's own pick, so the record says both. An ensemble's record is its scoring run's,
    with each member's own record under ``members``."""
    if len(runs) > 1:
        m = training_record([scores])
        m["val_weights"] = f"the ensemble, scored by a zero-step run ({scores.name})"
        m["members"] = [training_record([r]) for r in runs]
        return m
    run = runs[0]
    m = json.loads((run / "metrics.json").read_text())
    if scores is not None:
        m["val"] = json.loads((scores / "metrics.json").read_text())["val"]
        m["val_weights"] = f"the shipped weights, re-scored by a zero-step run ({scores.name}); 'best' is the run's own pick"
    m.pop("history", None)
    m["split"] = {k: v for k, v in m["split"].items() if k != "val_archs"}
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, nargs="+", required=True, help="training output folder (has metrics.json); one per ensemble member")
    p.add_argument("--checkpoint", type=Path, default=Path("rlm_nas/checkpoints/default"))
    p.add_argument("--command", required=True)
    p.add_argument("--wall", required=True)
    p.add_argument("--peak-mem", required=True)
    p.add_argument("--scores", type=Path, default=None,
                   help="folder of a --max-steps 0 run that scored the shipped weights (when they are not the run's best)")
    p.add_argument("--member-weights", default="its last stage's best", help="what each ensemble member's weights are, for the card")
    p.add_argument("--member-scores", type=Path, nargs="+", default=None,
                   help="per ensemble member, a --max-steps 0 run that scored its shipped weights (when they are not its run's best)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results",
                   help="folder of sample_count.json and equivalents.json (run them on the shipped weights first)")
    args = p.parse_args()
    if len(args.run) > 1 and args.scores is None:
        p.error("an ensemble (several --run) needs --scores: a zero-step run that scored the ensemble itself")
    if args.member_scores and len(args.member_scores) != len(args.run):
        p.error(f"--member-scores takes one folder per --run ({len(args.run)}), got {len(args.member_scores)}")
    encoder = ModelConfig.from_saved(json.loads((args.checkpoint / "config.json").read_text())["model_config"]).encoder
    (args.checkpoint / "README.md").write_text(card(args.run, args.command, args.wall, args.peak_mem, encoder,
                                                     decoding_remarks(args.checkpoint, args.results), args.scores,
                                                     args.member_weights, args.member_scores))
    record = training_record(args.run, args.scores)
    if len(args.run) > 1:
        record["member_weights"] = args.member_weights
    (args.checkpoint / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.checkpoint / 'README.md'} and training.json")


if __name__ == "__main__":
    main()
