"""Loaders that turn published NAS measurements (and a user's own) into :class:`Example` lists.

Every loader returns a :class:`Loaded`: the examples plus the number of labels that were missing
(``NaN``, blank, or an absent row). Missing labels are reserved for evaluation upstream, so they are
skipped and counted, never turned into numbers. Bad input raises :class:`DataError`, whose message
names the file, the row (line number or record index), the column and the allowed values.

Sources (see ``../shared/data/README.md`` and ``../shared/docs/nds-format.md``):

==========================================  ======================================================
HELP latency ``help/<space>/latency/*.pt``  :func:`load_help_latency` -> ``latency:<file stem>``
NB201 ``nb201/accuracy.csv``                :func:`load_nb201_accuracy`
NASLib NB301 ``zc_nasbench301.json``        :func:`load_nb301`
NDS sweeps ``NASNet.json``, ``DARTS_in``..  :func:`load_nds`
a user's ``space,arch,metric,value``        :func:`load_generic` (``.csv`` or ``.jsonl``)
fine-tune ``arch,value`` CSV                :func:`load_arch_values`
exact params/flops of sampled networks      :func:`synthetic_complexity`
==========================================  ======================================================

:func:`load_dir` reads all of them from a folder; :func:`split_by_arch` and :func:`hold_out` split
examples so that every metric of one architecture falls on the same side.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from rlm_nas.core import Example, check_metric

#: NAS-Bench-201 has exactly this many architectures; rows absent from its files are missing labels.
NB201_SIZE = 15625
#: NB201 accuracy CSV column -> metric (CIFAR-10 uses the ``valid`` split, as in HELP/NASLib).
NB201_ACCURACY_COLUMNS = {
    "cifar10_valid": "accuracy:cifar10",
    "cifar100": "accuracy:cifar100",
    "imagenet16_120": "accuracy:imagenet16-120",
}
#: NDS file-name token -> our space; the non-cell NDS families are rejected by name.
NDS_FAMILIES = {"nasnet": "nasnet", "amoeba": "amoeba", "pnas": "pnas", "enas": "enas", "darts": "darts"}
NDS_NON_CELL = ("resnet", "resnext", "vanilla")
#: Spellings of a missing label in text files.
_MISSING_TEXT = {"", "nan", "none", "null", "na", "n/a"}


class DataError(ValueError):
    """A data file cannot be read as claimed; the message says where and what is allowed."""


class NotACellSpace(DataError):
    """An NDS sweep of a non-cell family (ResNet, ResNeXt, Vanilla): no space of ours describes it."""


@dataclass
class Loaded:
    """The examples of one source and how many of its labels were missing (skipped)."""

    source: str
    examples: list[Example] = field(default_factory=list)
    missing: int = 0
    note: str = ""
    #: Records skipped because their architecture is outside our space (the note says why).
    skipped: int = 0

    def summary(self) -> dict:
        return {"source": self.source, "examples": len(self.examples), "missing": self.missing,
                "skipped": self.skipped, "note": self.note}


# --- helpers ------------------------------------------------------------------------------------
def _space(name: str, where: str):
    from search_spaces import SPACE_NAMES, get_space

    if name not in SPACE_NAMES:
        raise DataError(f"{where}: unknown space {name!r}; known spaces: {', '.join(SPACE_NAMES)}")
    return get_space(name)


@functools.lru_cache(maxsize=None)
def _canonical(space: str, arch: str) -> str:
    """The space's own string for ``arch`` (parse then format), so one network has one key."""
    sp = _space(space, "space")
    return sp.format(sp.parse(arch))


def canonical_arch(space: str, arch: str, where: str) -> str:
    """``arch`` in the space's canonical native form; :class:`DataError` naming ``where`` if invalid."""
    _space(space, where)  # unknown space -> its own clear message
    try:
        return _canonical(space, arch)
    except ValueError as e:  # InvalidGenotype is a ValueError
        raise DataError(f"{where}: invalid {space} architecture {_short(arch)}: {e}") from None


def _short(text: str, n: int = 120) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def _number(raw, where: str) -> float | None:
    """A finite float, or None for a missing label; DataError for anything else."""
    if raw is None:
        return None
    if isinstance(raw, str):
        if raw.strip().lower() in _MISSING_TEXT:
            return None
        try:
            raw = float(raw)
        except ValueError:
            raise DataError(f"{where}: value {_short(raw)} is not a number; expected a number, or blank/NaN when missing") from None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise DataError(f"{where}: value {raw!r} is not a number; expected a number, or null/NaN when missing")
    if math.isnan(raw):
        return None
    if math.isinf(raw):
        raise DataError(f"{where}: value {raw!r} is infinite; expected a finite number")
    return float(raw)


def _metric(name, where: str) -> str:
    try:
        return check_metric(name)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None


def _read_csv(path: Path, required: tuple[str, ...]):
    """Yield ``(line_number, row)`` of a CSV with a header that has every ``required`` column."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        if not header:
            raise DataError(f"{path}: the CSV is empty; expected a header line with columns {', '.join(required)}")
        header = [h.strip() for h in header]
        reader.fieldnames = header
        lacking = [c for c in required if c not in header]
        if lacking:
            raise DataError(f"{path}: line 1: missing column(s) {', '.join(lacking)}; the header has {', '.join(header)}; "
                            f"required: {', '.join(required)}")
        n = 0
        for row in reader:
            n += 1
            yield reader.line_num, {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        if n == 0:
            raise DataError(f"{path}: the CSV has a header but no rows")


def _torch_load(path: Path):
    import torch

    # weights_only: the HELP files are plain lists/dicts, so no pickled code has to be trusted.
    return torch.load(path, map_location="cpu", weights_only=True)


# --- HELP latency -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _help_archs(space_dir: str, space: str) -> tuple[str, ...]:
    """Index -> canonical arch string of a HELP space folder (shared by its 22 device files)."""
    d = Path(space_dir)
    if space == "nb201":
        mapping = _torch_load(d / "str_arch2idx.pt")
        archs = [""] * len(mapping)
        for arch, i in mapping.items():  # invert: the file maps string -> index
            archs[int(i)] = arch
    else:
        meta = _torch_load(d / "metainfo.pt")
        # Our fbnet native string is the 22 block names joined by commas.
        archs = [",".join(a["arch_str"]) for a in meta["arch"]]
    return tuple(canonical_arch(space, a, f"{d} index {i}") for i, a in enumerate(archs))


def load_help_latency(path: str | Path) -> Loaded:
    """One HELP latency file ``help/{nasbench201,fbnet}/latency/<device>.pt`` -> ``latency:<device>``.

    The space follows from the folder (``nasbench201`` -> nb201, ``fbnet`` -> fbnet); index ``i``
    of the list is the architecture of ``str_arch2idx.pt`` / ``metainfo.pt`` two folders up.
    """
    path = Path(path)
    folder = path.parent.parent
    space = {"nasbench201": "nb201", "fbnet": "fbnet"}.get(folder.name)
    if space is None or path.parent.name != "latency":
        raise DataError(f"{path}: expected a HELP file help/nasbench201/latency/<device>.pt or help/fbnet/latency/<device>.pt")
    needed = folder / ("str_arch2idx.pt" if space == "nb201" else "metainfo.pt")
    if not needed.is_file():
        raise DataError(f"{path}: {needed.name} is missing from {folder}; it maps the list index to the architecture")
    metric = _metric(f"latency:{path.stem.lower()}", str(path))
    archs = _help_archs(str(folder), space)
    values = _torch_load(path)
    if not isinstance(values, (list, tuple)) or len(values) != len(archs):
        raise DataError(f"{path}: expected a list of {len(archs)} latencies (one per architecture of {needed.name}), "
                        f"got {type(values).__name__} of length {len(values) if hasattr(values, '__len__') else '?'}")
    out = Loaded(str(path))
    for i, (arch, v) in enumerate(zip(archs, values)):
        x = _number(float(v) if hasattr(v, "item") else v, f"{path}: index {i}")
        if x is None:
            out.missing += 1
        else:
            out.examples.append(Example(space, arch, metric, x))
    return out


# --- NB201 accuracy -----------------------------------------------------------------------------
def load_nb201_accuracy(path: str | Path) -> Loaded:
    """``nb201/accuracy.csv`` (``nb201_index,arch_str,cifar10_valid,cifar100,imagenet16_120``).

    Blank/NaN cells and architectures without a row (of the 15,625) count as missing.
    """
    path = Path(path)
    out = Loaded(str(path))
    seen = set()
    for line, row in _read_csv(path, ("arch_str", *NB201_ACCURACY_COLUMNS)):
        arch = canonical_arch("nb201", row["arch_str"], f"{path}: line {line}: column arch_str")
        seen.add(arch)
        for col, metric in NB201_ACCURACY_COLUMNS.items():
            x = _number(row[col], f"{path}: line {line}: column {col}")
            if x is None:
                out.missing += 1
            else:
                out.examples.append(Example("nb201", arch, metric, x))
    out.missing += len(NB201_ACCURACY_COLUMNS) * max(0, NB201_SIZE - len(seen))
    return out


# --- NASLib NB301 -------------------------------------------------------------------------------
def load_nb301(path: str | Path) -> Loaded:
    """NASLib ``zc_nasbench301.json``: ``accuracy:cifar10`` = ``val_accuracy`` of each arch key.

    Its ``flops``/``params`` scores are not exposed: they are rounded millions from NASLib's own
    network, while ``params``/``flops`` labels everywhere else are exact counts of *our* builder
    (:func:`synthetic_complexity`); mixing two conventions under one metric name would teach the
    model noise.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cifar10"), dict):
        raise DataError(f"{path}: expected {{\"cifar10\": {{\"<arch>\": {{\"val_accuracy\": ...}}}}}} (NASLib zero-cost format)")
    out = Loaded(str(path), note="flops/params scores not used (NASLib's rounded millions)")
    for key, rec in data["cifar10"].items():
        where = f"{path}: arch {_short(key, 60)}"
        arch = canonical_arch("nb301", key, where)
        x = _number(rec.get("val_accuracy") if isinstance(rec, dict) else None, f"{where}: field val_accuracy")
        if x is None:
            out.missing += 1
        else:
            out.examples.append(Example("nb301", arch, "accuracy:cifar10", x))
    return out


# --- NDS sweeps ---------------------------------------------------------------------------------
def nds_space(path: str | Path) -> str:
    """The space of an NDS sweep file from its name (``DARTS_lr-wd.json`` -> ``darts``).

    Raises :class:`NotACellSpace` for ResNet/ResNeXt/Vanilla sweeps and :class:`DataError` when
    no family name appears in the file name.
    """
    path = Path(path)
    tokens = [t for t in re.split(r"[^a-z0-9]+", path.stem.lower()) if t]
    for t in tokens:
        if t in NDS_FAMILIES:
            return NDS_FAMILIES[t]
        if t in NDS_NON_CELL:
            raise NotACellSpace(f"{path}: {t} sweeps are not cell spaces (no genotype to read); only "
                                f"{', '.join(NDS_FAMILIES)} NDS sweeps can be loaded")
    raise DataError(f"{path}: cannot tell the NDS space from the file name; it must contain one of "
                    f"{', '.join(NDS_FAMILIES)} (e.g. DARTS.json, PNAS_fix-w-d.json, ENAS_in.json)")


def nds_arch_string(net: dict) -> str:
    """The candidate native string of an NDS ``net`` record: its genotype plus width and depth as
    one JSON line (the cell spaces parse exactly this; :func:`canonical_arch` normalises it)."""
    g = net["genotype"]
    doc = {k: g[k] for k in ("normal", "normal_concat", "reduce", "reduce_concat")}
    doc.update(width=net["width"], depth=net["depth"])
    return json.dumps(doc, separators=(",", ":"))


def load_nds(path: str | Path) -> Loaded:
    """One NDS sweep (plain list or ``{"top": [...], "mid": [...]}``) of a cell space.

    Metrics: ``accuracy:cifar10`` (``accuracy:imagenet`` for ``*_in.json``) = 100 - final test
    top-1 error (``test_ep_top1[-1]``), and ``params``/``flops`` from the record.

    A record whose network is outside our space (e.g. a width or depth the space does not
    allow) is skipped and counted in ``skipped``, with the first reason in ``note``: our builder
    cannot describe the network that was measured. A structurally broken record raises.
    """
    path = Path(path)
    space = nds_space(path)
    stem_tokens = re.split(r"[^a-z0-9]+", path.stem.lower())
    acc_metric = "accuracy:imagenet" if "in" in stem_tokens else "accuracy:cifar10"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict):  # some releases split the sweep into groups: concatenate them
        if not all(isinstance(v, list) for v in data.values()):
            raise DataError(f"{path}: expected a list of records or a {{\"top\": [...], \"mid\": [...]}} wrapper of lists")
        records = [r for v in data.values() for r in v]
    elif isinstance(data, list):
        records = data
    else:
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    out = Loaded(str(path))
    for i, rec in enumerate(records):
        where = f"{path}: record {i}"
        try:
            raw_arch = nds_arch_string(rec["net"])
        except (KeyError, TypeError) as e:
            raise DataError(f"{where}: field net.genotype/width/depth is missing or malformed ({e!r}); "
                            "expected net: {genotype: {normal, normal_concat, reduce, reduce_concat}, width, depth}") from None
        try:
            arch = canonical_arch(space, raw_arch, where)
        except DataError as e:
            out.skipped += 1
            out.note = out.note or f"records outside the {space} space skipped, first: {e}"
            continue
        curve = rec.get("test_ep_top1")
        err = _number(curve[-1] if isinstance(curve, list) and curve else None, f"{where}: field test_ep_top1[-1]")
        labels = [(acc_metric, None if err is None else 100.0 - err)]
        labels += [(m, _number(rec.get(m), f"{where}: field {m}")) for m in ("params", "flops")]
        for metric, x in labels:
            if x is None:
                out.missing += 1
            else:
                out.examples.append(Example(space, arch, metric, x))
    return out


# --- a user's own measurements ------------------------------------------------------------------
def _generic_row(path: Path, where: str, row: dict) -> Example | None:
    space = row.get("space")
    _space(space, f"{where}: column space")
    metric = _metric(row.get("metric"), f"{where}: column metric")
    arch = row.get("arch")
    if not isinstance(arch, str) or not arch:
        raise DataError(f"{where}: column arch: {arch!r} is not an architecture string")
    arch = canonical_arch(space, arch, f"{where}: column arch")
    x = _number(row.get("value"), f"{where}: column value")
    return None if x is None else Example(space, arch, metric, x)


def load_generic(path: str | Path) -> Loaded:
    """A user's measurements: CSV with header ``space,arch,metric,value`` or JSONL of such objects."""
    path = Path(path)
    out = Loaded(str(path))
    if path.suffix.lower() == ".jsonl":
        rows = []
        for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {line}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {line}: expected an object with keys space, arch, metric, value")
            lacking = [c for c in ("space", "arch", "metric", "value") if c not in obj]
            if lacking:
                raise DataError(f"{path}: line {line}: missing key(s) {', '.join(lacking)}; required: space, arch, metric, value")
            rows.append((line, obj))
        if not rows:
            raise DataError(f"{path}: the JSONL file has no records; expected one object per line with space, arch, metric, value")
    else:
        rows = _read_csv(path, ("space", "arch", "metric", "value"))
    for line, row in rows:
        ex = _generic_row(path, f"{path}: line {line}", row)
        if ex is None:
            out.missing += 1
        else:
            out.examples.append(ex)
    return out


def load_arch_values(path: str | Path, space: str, metric: str) -> Loaded:
    """The fine-tune CSV: columns ``arch,value`` (others, e.g. ``cv``, are ignored), all of one
    ``space`` and ``metric``."""
    path = Path(path)
    _space(space, f"{path}: --space")
    metric = _metric(metric, f"{path}: --metric")
    out = Loaded(str(path))
    for line, row in _read_csv(path, ("arch", "value")):
        # `python -m rlm_nas.measure` also writes space/metric columns: they must agree with the
        # command line, or the rows would be taught under the wrong name.
        for col, want in (("space", space), ("metric", metric)):
            if row.get(col) and row[col] != want:
                raise DataError(f"{path}: line {line}: column {col}: {row[col]!r} differs from --{col} {want!r}")
        ex = _generic_row(path, f"{path}: line {line}", {**row, "space": space, "metric": metric})
        if ex is None:
            out.missing += 1
        else:
            out.examples.append(ex)
    return out


# --- synthetic exact params/flops ---------------------------------------------------------------
def synthetic_complexity(spaces=None, per_space: int = 100, seed: int = 0, progress: bool = True,
                         map_shards=None) -> Loaded:
    """Exact ``params`` and ``flops`` of ``per_space`` sampled architectures of each space.

    Counts come from :func:`search_spaces.profile.genotype_counts`. ``map_shards(fn, items)``
    (e.g. the trainer's ``Dist.map_shards``) may spread the counting over processes; it must
    return ``fn(items)``.
    """
    from tqdm.auto import tqdm

    from search_spaces import SPACE_NAMES
    from search_spaces.profile import genotype_counts

    chosen = [_space(name, "synthetic_complexity") for name in (spaces or SPACE_NAMES)]
    jobs = [(space, g) for space in chosen for g in space.sample(per_space, seed=seed)]
    out = Loaded("synthetic params/flops", note=f"{per_space} sampled architectures per space, seed {seed}")

    def count(part: list) -> list[tuple[int, int]]:
        return [genotype_counts(space, g) for space, g in tqdm(part, desc="params/flops", disable=not progress, leave=False)]

    for (space, g), (flops, params) in zip(jobs, map_shards(count, jobs) if map_shards else count(jobs)):
        arch = space.format(g)
        out.examples += [Example(space.name, arch, "params", float(params)),
                         Example(space.name, arch, "flops", float(flops))]
    return out


# --- a folder -----------------------------------------------------------------------------------
#: Reference files of the shared data that check network builders; they are not training labels.
_REFERENCE_FILES = {"flops_params.csv"}


def load_dir(path: str | Path, progress: bool = True) -> tuple[list[Example], list[dict]]:
    """Every source found under ``path`` (laid out like ``../shared/data``) -> (examples, report).

    Recognised: HELP ``latency/*.pt``, ``nb201/accuracy.csv``, NASLib ``zc_nasbench301.json``,
    NDS sweeps (any ``*.json`` whose name holds a cell family), and a user's ``*.csv``/``*.jsonl``
    of ``space,arch,metric,value``. The report has one entry per file: examples loaded, labels
    missing, and a note (e.g. why a file was skipped). Malformed files raise :class:`DataError`.
    """
    from tqdm.auto import tqdm

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; --data must be a folder laid out like shared/data")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in {".pt", ".csv", ".jsonl", ".json"})
    examples: list[Example] = []
    report: list[dict] = []
    for p in tqdm(files, desc="loading", disable=not progress, leave=False):
        rel = str(p.relative_to(root))
        suffix = p.suffix.lower()
        try:
            if suffix == ".pt":
                if p.parent.name != "latency":
                    continue  # str_arch2idx.pt / metainfo.pt: index tables read with the latency files
                loaded = load_help_latency(p)
            elif p.name in _REFERENCE_FILES:
                report.append({"source": rel, "examples": 0, "missing": 0,
                               "note": "skipped: reference counts for checking builders (exact counts come from the synthetic source)"})
                continue
            elif p.name == "accuracy.csv" and p.parent.name == "nb201":
                loaded = load_nb201_accuracy(p)
            elif suffix in {".csv", ".jsonl"}:
                loaded = load_generic(p)
            elif p.name.startswith("zc_nasbench301"):
                loaded = load_nb301(p)
            else:
                loaded = load_nds(p)
        except NotACellSpace as e:
            report.append({"source": rel, "examples": 0, "missing": 0, "note": f"skipped: {e}"})
            continue
        loaded.source = rel
        examples += loaded.examples
        report.append(loaded.summary())
    if not examples:
        raise DataError(f"{root}: found no labelled examples (looked for HELP latency .pt, nb201/accuracy.csv, "
                        "zc_nasbench301.json, NDS sweeps *.json, and space,arch,metric,value CSV/JSONL)")
    return examples, report


def format_report(report: list[dict]) -> str:
    """The load report as aligned text lines (one per source, then the totals)."""
    width = max([len(r["source"]) for r in report] + [6])
    lines = [f"{'source':<{width}}  {'examples':>8}  {'missing':>7}  {'skipped':>7}  note"]
    lines += [f"{r['source']:<{width}}  {r['examples']:>8}  {r['missing']:>7}  {r.get('skipped', 0):>7}  {r.get('note', '')}"
              for r in report]
    lines.append(f"{'total':<{width}}  {sum(r['examples'] for r in report):>8}  {sum(r['missing'] for r in report):>7}  "
                 f"{sum(r.get('skipped', 0) for r in report):>7}")
    return "\n".join(lines)


# --- splits -------------------------------------------------------------------------------------
def split_by_arch(examples: list[Example], val_fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(train, val) with every example of one (space, arch) on the same side.

    Each space is split on its own (``round(val_fraction * n)`` of its architectures, at least one
    when the space has two or more), so every space is represented in validation.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    by_space: dict[str, set[str]] = defaultdict(set)
    for e in examples:
        by_space[e.space].add(e.arch)
    held: set[tuple[str, str]] = set()
    for space in sorted(by_space):
        archs = sorted(by_space[space])
        random.Random(f"{seed}:{space}").shuffle(archs)  # str seed: stable across processes
        k = round(val_fraction * len(archs))
        if val_fraction > 0 and len(archs) > 1:
            k = min(max(k, 1), len(archs) - 1)
        held.update((space, a) for a in archs[:k])
    return hold_out(examples, held)


def hold_out(examples: list[Example], archs) -> tuple[list[Example], list[Example]]:
    """(kept, held): ``held`` has every example whose ``(space, arch)`` is in ``archs``."""
    archs = {tuple(a) for a in archs}
    kept = [e for e in examples if (e.space, e.arch) not in archs]
    held = [e for e in examples if (e.space, e.arch) in archs]
    return kept, held


@dataclass(frozen=True)
class ArchItem:
    """All labels of one architecture: what one encoder pass of the model is trained on."""

    space: str
    arch: str
    metrics: tuple[str, ...]
    values: tuple[float, ...]


def group_by_arch(examples: list[Example]) -> list[ArchItem]:
    """One :class:`ArchItem` per (space, arch), sorted; repeated measurements of a metric are
    averaged (NDS has repeated seeds and lr/wd sweeps of one network: the mean is the best
    architecture-only target)."""
    acc: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e in examples:
        acc[(e.space, e.arch)][e.metric].append(e.value)
    items = []
    for (space, arch), labels in sorted(acc.items()):
        metrics = tuple(sorted(labels))
        items.append(ArchItem(space, arch, metrics, tuple(sum(labels[m]) / len(labels[m]) for m in metrics)))
    return items
