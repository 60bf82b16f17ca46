"""Predict metrics of the architectures listed in a file, to a CSV.

CLI::

    python -m rlm_nas.predict --space nb201 --metric latency:pixel3 --input archs.txt --output pred.csv \\
        [--checkpoint PATH|default] [--samples 8] [--draws quantiles|random] [--equivalents 8] [--seed 0] \\
        [--batch-size 64] [--skip-invalid]

Input: one architecture per line in the space's native string: an NB201 arch string
(``|nor_conv_3x3~0|+|...|``), 22 comma-separated FBNet block names, NASLib's
``[[(input, op) x 8], [...]]`` or NDS genotype JSON for ``nb301``, NDS genotype JSON on one line
for the NDS spaces (``nasnet amoeba pnas enas darts``). Surrounding whitespace is stripped;
blank lines are ignored (they get no output row, but line numbers in messages count them).

Output: CSV with columns ``arch,median,mean,p10,p90,extrapolated``, one row per input line in
input order; ``arch`` is the line as given. Values are aggregates of ``--samples`` draws from
the RLM: by default its quantiles at levels (i + 0.5) / k (deterministic; the median column is
the median of the model's distribution), or with ``--draws random`` ancestral samples. In the cell
spaces they are averaged over ``--equivalents`` genotypes of the same network (``RLM.predict``).
``extrapolated`` is ``true`` when the checkpoint had no training data for (space, metric): the
numbers are then a guess. ``--metric`` takes one metric, or several
comma-separated (or the flag repeated); with several, a ``metric`` column follows ``arch`` and
each line gets one row per metric, in the order given.

An invalid line stops the run with its line number and the reason (exit code 2, nothing written);
with ``--skip-invalid`` it is written with empty values and a warning goes to stderr. Bad flags,
an unknown metric or space, or an unreadable checkpoint also exit with 2 and a one-line message.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rlm_nas.core import DRAWS, EQUIVALENTS

COLUMNS = ("median", "mean", "p10", "p90")
#: Spaces whose cells another space measures at a fixed network size (NB301: DARTS cells at width
#: 32, depth 8). Where a checkpoint has no data for the first, the second may have it.
SAME_CELLS = {"darts": "nb301"}


class PredictError(ValueError):
    """Bad input for the CLI; the message names the file, line or flag and what is allowed."""


@dataclass(frozen=True)
class Line:
    """One non-blank input line: its 1-based number, text, and parse error (None when valid)."""

    number: int
    arch: str
    error: str | None = None


def extrapolation_warning(rlm, checkpoint: str, space: str, metrics: Sequence[str]) -> str | None:
    """A one-line warning naming the ``metrics`` that ``rlm`` had no ``space`` training data for,
    the spaces it had them for, and a space of the same cells with data; None when all are known."""
    known = rlm.known_pairs
    extra = [m for m in metrics if (space, m) not in known]
    if not extra:
        return None
    had = {m: sorted(s for s, k in known if k == m) for m in extra}
    named = ", ".join(f"{m} (trained on {', '.join(had[m])})" if had[m] else m for m in extra)
    text = f"checkpoint {checkpoint} had no {space} training data for {named}: those predictions are extrapolated (a guess)"
    alt = SAME_CELLS.get(space)
    if any(alt in spaces for spaces in had.values()):
        text += f"; {alt} is the {space} cell space at one fixed width and depth, with that data: use --space {alt}"
    return text


def read_archs(path: str | Path, space: str) -> list[Line]:
    """The non-blank lines of ``path``, each parsed as a native string of ``space``."""
    from search_spaces import get_space

    sp = get_space(space)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PredictError(f"--input {path}: cannot read it: {e}") from None
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        arch = raw.strip()
        if not arch:
            continue
        try:
            sp.parse(arch)
            out.append(Line(number, arch))
        except ValueError as e:  # InvalidGenotype names the field, the value and what is allowed
            out.append(Line(number, arch, str(e)))
    return out


def predict_lines(rlm, space: str, lines: Sequence[Line], metrics: Sequence[str], samples: int = 8, seed: int = 0,
                  batch_size: int = 64, progress: bool = True, draws: str = DRAWS[0],
                  equivalents: int = EQUIVALENTS) -> list[dict]:
    """Output rows (dicts with ``arch``, ``metric`` and :data:`COLUMNS`, ``extrapolated``) for
    ``lines`` x ``metrics``, in that order; invalid lines get empty values."""
    valid = [ln.arch for ln in lines if ln.error is None]
    pred = rlm.predict(valid, list(metrics), space=space, num_samples=samples, seed=seed, batch_size=batch_size,
                       progress=progress, draws=draws, equivalents=equivalents)
    stats = {c: getattr(pred, c) for c in COLUMNS}  # (n_valid, n_metrics) each
    rows, i = [], 0
    for ln in lines:
        for j, metric in enumerate(metrics):
            row = {"arch": ln.arch, "metric": metric}
            if ln.error is None:
                row.update({c: format(float(stats[c][i, j]), ".6g") for c in COLUMNS})
                row["extrapolated"] = "true" if pred.extrapolated[j] else "false"
            else:
                row.update({c: "" for c in (*COLUMNS, "extrapolated")})
            rows.append(row)
        i += ln.error is None
    return rows


def write_csv(path: str | Path, rows: list[dict], with_metric: bool) -> None:
    """Write ``rows``; the ``metric`` column only ``with_metric`` (several metrics)."""
    fields = ["arch", *(["metric"] if with_metric else []), *COLUMNS, "extrapolated"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def parser() -> argparse.ArgumentParser:
    from search_spaces import SPACE_NAMES

    p = argparse.ArgumentParser(prog="python -m rlm_nas.predict", description=__doc__.split("\n\n")[0],
                                epilog="Blank input lines are ignored; see the module docstring for the formats.")
    p.add_argument("--space", required=True, choices=SPACE_NAMES, metavar="SPACE",
                   help=f"space of the input architectures; one of: {', '.join(SPACE_NAMES)}")
    p.add_argument("--metric", required=True, action="append",
                   help="metric to predict, e.g. latency:pixel3; several: comma-separated or the flag repeated")
    p.add_argument("--checkpoint", default="default", help="'default' (shipped) or a checkpoint folder (default: %(default)s)")
    p.add_argument("--input", required=True, help="text file, one native architecture string per line")
    p.add_argument("--output", required=True, help="CSV file to write")
    p.add_argument("--samples", type=int, default=8,
                   help="draws per architecture and metric; their median is the prediction, p10/p90 their spread. "
                        "With quantile draws the median is the model's already at 8 (random samples need more: "
                        "benchmarks/results/sample_count.md) (default: %(default)s)")
    p.add_argument("--draws", choices=DRAWS, default=DRAWS[0],
                   help="'quantiles': the model's quantiles at levels (i + 0.5) / k, deterministic; 'random': "
                        "ancestral samples, reproducible with --seed (default: %(default)s)")
    p.add_argument("--equivalents", type=int, default=EQUIVALENTS,
                   help="average over up to this many genotypes of each network: in the cell spaces a node's two inputs "
                        "swapped, which the model reads slightly differently (benchmarks/results/equivalents.md); "
                        "no cost elsewhere (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed for --draws random (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="architectures per model batch (default: %(default)s)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="write invalid lines with empty values (and warn) instead of stopping")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: %(default)s; decoding is many small ops, and extra threads slow to a crawl "
                        "when other processes share the cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    a = p.parse_args(argv)
    metrics = list(dict.fromkeys(m.strip() for flag in a.metric for m in flag.split(",") if m.strip()))
    for name, value in (("--samples", a.samples), ("--batch-size", a.batch_size), ("--threads", a.threads),
                        ("--equivalents", a.equivalents)):
        if value is not None and value < 1:
            p.error(f"{name} must be >= 1, got {value}")
    if not metrics:
        p.error("--metric is empty; give a metric name such as latency:pixel3")
    out_dir = Path(a.output).resolve().parent
    if not out_dir.is_dir():
        p.error(f"--output {a.output}: folder {out_dir} does not exist")
    try:
        lines = read_archs(a.input, a.space)
    except PredictError as e:
        return _fail(str(e))
    bad = [ln for ln in lines if ln.error]
    if bad and not a.skip_invalid:
        more = f" ({len(bad) - 1} more invalid line(s); --skip-invalid writes them with empty values)" if len(bad) > 1 else ""
        return _fail(f"{a.input}: line {bad[0].number}: invalid {a.space} architecture: {bad[0].error}{more}")

    import torch

    from rlm_nas.model import RLM, CheckpointError

    torch.set_num_threads(a.threads)
    try:
        rlm = RLM.from_pretrained(a.checkpoint)
    except (FileNotFoundError, CheckpointError) as e:
        return _fail(f"--checkpoint {a.checkpoint}: {e}")
    unknown = [m for m in metrics if m not in rlm.metrics]
    if unknown:
        return _fail(f"--metric {', '.join(unknown)}: not known to checkpoint {a.checkpoint}; it knows: {', '.join(rlm.metrics)}")
    for ln in bad:
        print(f"warning: {a.input}: line {ln.number}: invalid {a.space} architecture, written with empty values: {ln.error}",
              file=sys.stderr)
    warning = extrapolation_warning(rlm, a.checkpoint, a.space, metrics)
    if warning:
        print(f"warning: {warning}; flagged in column 'extrapolated'", file=sys.stderr)
    rows = predict_lines(rlm, a.space, lines, metrics, a.samples, a.seed, a.batch_size, progress=not a.no_progress,
                         draws=a.draws, equivalents=a.equivalents)
    write_csv(a.output, rows, with_metric=len(metrics) > 1)
    print(f"wrote {len(rows)} rows ({len(lines) - len(bad)} architectures x {len(metrics)} metric(s)"
          f"{f', {len(bad)} invalid line(s) left empty' if bad else ''}) to {a.output}", file=sys.stderr)
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
