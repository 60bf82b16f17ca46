"""Measure the latency of sampled candidates with ONNX Runtime and write it as training data.

    python -m rlm_nas.measure --space darts -n 200 --out measurements/darts-epyc-1t.csv

Public latency data covers NB201 and FBNet only, so the product measures the other spaces itself.
Each candidate is built with ``space.to_onnx``, its weight inputs are turned into random
initializers (so ONNX Runtime folds BatchNorm into Conv and pre-packs weights as in a real
deployment; the values do not change dense float latency), and it is timed in a worker process
together with the other candidates of its group (``--interleave``): ``--warmup`` untimed runs each,
then ``--repeats`` rounds that run every candidate of the group once, in random order. The median
(ms) of a candidate's timed runs is kept.

Output: ``FILE.csv`` with columns ``arch,value,space,metric,cv`` (value: median ms; metric:
``latency:<device>``; cv: std/mean of the timed runs; ``arch`` is the space's native string,
csv-quoted where needed). ``arch,value`` come first, so it is a fine-tune CSV, and with
``space,metric`` it is also a generic CSV. The run settings (provider, threads, affinity, CPU
model, batch, onnxruntime version, ...) and the reason of every failure go to the JSON sidecar
``FILE.meta``. Running again with the same ``--out`` resumes: rows already in the CSV are skipped,
so a crash or Ctrl-C loses at most the group in flight.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger("rlm_nas.measure")

#: Settings that must match for a resumed run to append to the same CSV (else values would mix).
RESUME_KEYS = ("metric", "space", "seed", "batch", "provider", "threads")
#: What ``--check`` asks of two passes over the same candidates on an idle machine.
CHECK_TARGET = 0.98


@dataclass(frozen=True)
class Settings:
    """How candidates are timed. ``timeout`` (s) bounds one candidate's session creation + runs."""

    provider: str = "cpu"
    threads: int = 1
    warmup: int = 10
    repeats: int = 30
    timeout: float = 60.0
    #: Candidates timed together: each gets its own session and warm-up, then every one of the
    #: ``repeats`` rounds runs each candidate once, in a fresh random order. Why: the speed of this
    #: (virtual) machine drifts by ~10% over tenths of a second (one FBNet session timed in 8 blocks
    #: of 40 runs: block medians 2.08-2.54 ms), so back-to-back runs share one bias that no median
    #: removes and that reorders networks of close latency. Interleaved, a drift hits every candidate
    #: of the group alike, and each candidate's runs spread over many drift states.
    interleave: int = 64


@dataclass
class Result:
    """The outcome of one candidate: ``times_ms`` on success, else ``error``."""

    arch: str
    times_ms: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float:
        return float(np.median(self.times_ms))

    @property
    def cv(self) -> float:
        """Coefficient of variation (std / mean) of the timed runs: the noise of this candidate."""
        t = np.asarray(self.times_ms)
        return float(t.std() / t.mean())


# --- device names ---------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU model string of this machine (``/proc/cpuinfo``, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def short_cpu_name(model: str) -> str:
    """``"Intel(R) Xeon(R) Gold 6226 CPU @ 2.70GHz"`` -> ``"xeon-gold-6226"``; ``"AMD EPYC 7763 64-Core Processor"`` -> ``"epyc-7763"``.

    Vendor names, trademarks, clock and core-count words are dropped: they are not what tells two
    CPUs apart, and the result must fit a metric name (lower-case letters, digits, '-').
    """
    s = model.lower()
    s = re.sub(r"\((r|tm)\)|@.*$|\b\d+-core\b|\b(processor|cpu|intel|amd|with .*)\b", " ", s)
    words = re.findall(r"[a-z0-9]+", s)
    return "-".join(words) or "cpu"


def cpu_device_name(threads: int) -> str:
    """Default ``--device-name`` for a CPU run, e.g. ``epyc-7763-1c``.

    The core count is the number of threads the measurement uses, not the machine's total: latency
    depends on the former, so the same CPU timed with 1 thread gets the same name on any box.
    """
    return f"{short_cpu_name(cpu_model())}-{threads}c"


# --- preparing a model ----------------------------------------------------------------------------
def with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of ``model`` whose weight *inputs* are random initializers (see the module docstring).

    The first graph input is the image batch (``GraphBuilder`` declares it before any weight); all
    other inputs without an initializer are weights. Values: Kaiming-uniform for >=2-D tensors so
    activations neither blow up nor sink into (slow) denormals through deep networks; ones for 1-D
    tensors (biases, BatchNorm scale/shift/mean/var: a positive variance keeps the fold finite).
    """
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    have = {t.name for t in g.initializer}
    keep, weights = [], []
    for i, inp in enumerate(g.input):
        (keep if i == 0 or inp.name in have else weights).append(inp)
    for inp in weights:
        shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
        if len(shape) >= 2:
            bound = 1.0 / math.sqrt(max(1, math.prod(shape[1:])))
            arr = rng.uniform(-bound, bound, shape).astype(np.float32)
        else:
            arr = np.ones(shape, np.float32)
        g.initializer.append(numpy_helper.from_array(arr, inp.name))
    del g.input[:]
    g.input.extend(keep)
    return out


# --- timing in a worker process -------------------------------------------------------------------
def check_provider(provider: str) -> None:
    """Fail at once, saying what is missing, if ``provider`` cannot run here."""
    import onnxruntime as ort

    if provider == "cpu":
        return
    if provider != "cuda":
        raise ValueError(f"unknown provider {provider!r}; use 'cpu' or 'cuda'")
    have = ort.get_available_providers()
    if "CUDAExecutionProvider" not in have:
        raise RuntimeError(
            f"--provider cuda needs onnxruntime-gpu: this onnxruntime {ort.__version__} offers only "
            f"{', '.join(have)}. Install it with `pip install onnxruntime-gpu` (instead of onnxruntime)."
        )
    if not Path("/dev/nvidiactl").exists():
        raise RuntimeError("--provider cuda needs an NVIDIA GPU, and none is visible (no /dev/nvidiactl).")


def _time_group(models: Sequence[bytes], s: Settings) -> list[tuple[str, object]]:
    """Time ``models`` together (see :attr:`Settings.interleave`).

    Returns, in their order, ``("ok", timed_runs_ms)`` or ``("error", message)`` per model.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    # Fixed, sequential threading: one intra-op pool of `threads`, no inter-op parallelism, so the
    # number does not depend on how many cores happen to be free.
    so.intra_op_num_threads = s.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only; warnings would litter the progress bar
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if s.provider == "cuda" else ["CPUExecutionProvider"]
    outcome: list[tuple[str, object] | None] = [None] * len(models)
    live = {}  # index -> (session, feeds)
    for i, model in enumerate(models):
        try:
            sess = ort.InferenceSession(model, so, providers=providers)
            if s.provider == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
                # ORT silently falls back to CPU when CUDA fails to load; a CPU number labelled GPU is worse than none.
                raise RuntimeError("CUDAExecutionProvider failed to load (CUDA/cuDNN libraries missing?); ORT fell back to CPU")
            rng = np.random.default_rng(0)
            feeds = {}
            for inp in sess.get_inputs():
                if not all(isinstance(d, int) and d > 0 for d in inp.shape):
                    raise ValueError(f"input {inp.name!r} has a non-concrete shape {inp.shape}")
                feeds[inp.name] = rng.standard_normal(inp.shape).astype(np.float32)
            for _ in range(s.warmup):
                sess.run(None, feeds)
            live[i] = (sess, feeds)
        except Exception as e:  # noqa: BLE001  -- this model fails, the others of the group go on
            outcome[i] = ("error", f"{type(e).__name__}: {e}")
    times = {i: [] for i in live}
    order = np.random.default_rng(0)
    for _ in range(s.repeats):
        for i in order.permutation(sorted(live)):
            sess, feeds = live[i]
            t0 = time.perf_counter_ns()
            sess.run(None, feeds)
            times[i].append((time.perf_counter_ns() - t0) / 1e6)
    for i, t in times.items():
        outcome[i] = ("ok", t)
    return outcome


def _worker(conn, settings: Settings) -> None:
    """Worker loop: receive a list of model bytes, answer with :func:`_time_group`'s list."""
    import onnxruntime  # noqa: F401  (import before "ready" so the first deadline excludes it)

    conn.send("ready")
    while (msg := conn.recv()) is not None:
        conn.send(_time_group(msg, settings))


class WorkerError(RuntimeError):
    """The timing worker cannot start: no candidate could be measured, so the run stops."""


class Timer:
    """Times models in a worker process, killed and replaced when a candidate passes the timeout.

    A process (not a thread) because neither session creation nor a run can be interrupted in-process.
    It inherits this process's CPU affinity. Use as a context manager.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._proc = None
        self._conn = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # no fork: the parent may hold torch/OpenMP threads
        self._conn, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, self.settings), daemon=True)
        try:
            proc.start()
            self._proc = proc
            child.close()
            ready = self._conn.poll(120) and self._conn.recv() == "ready"
        except (EOFError, RuntimeError):  # it died while starting / spawning is impossible here
            ready = False
        if not ready:
            self.close()
            raise WorkerError(
                "the timing worker did not start. A script that calls rlm_nas.measure needs an "
                "`if __name__ == '__main__':` guard, since the worker is spawned (it re-imports the script)."
            )

    def time(self, models: Sequence[bytes]) -> list[list[float] | RuntimeError]:
        """Time ``models`` as one group: per model, its timed runs (ms) or the RuntimeError it raised.

        Raises TimeoutError past ``settings.timeout`` per model, and RuntimeError when the worker
        dies (e.g. a segfault inside ORT); the next call then starts a fresh worker.
        """
        if self._proc is None:
            self._start()
        self._conn.send(list(models))
        limit = self.settings.timeout * len(models)
        if not self._conn.poll(limit):
            self.close()  # the worker is stuck in a candidate: kill it, the next call starts afresh
            raise TimeoutError(f"timed out after {limit:g} s")
        try:
            answer = self._conn.recv()
        except EOFError:
            code = self._proc.exitcode
            self.close()
            raise RuntimeError(f"the timing worker died (exit code {code})") from None
        return [payload if status == "ok" else RuntimeError(payload) for status, payload in answer]

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join()
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def __enter__(self) -> Timer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- measuring candidates -------------------------------------------------------------------------
Candidate = tuple[str, Callable[[], onnx.ModelProto]]  # (arch string, builds its ONNX model)


def measure(candidates: Sequence[Candidate], settings: Settings, desc: str = "measuring", on_result=None) -> list[Result]:
    """Time every candidate, in groups of ``settings.interleave`` (progress bar); failures are
    logged and returned with ``error`` set.

    ``on_result(result)`` is called after each group for each of its candidates, in order, e.g. to
    append it to a file at once.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    results = []
    with Timer(settings) as timer, logging_redirect_tqdm():
        bar = tqdm(total=len(candidates), desc=desc, unit="arch", dynamic_ncols=True)
        for start in range(0, len(candidates), settings.interleave):
            group = candidates[start : start + settings.interleave]
            done = [Result(arch) for arch, _ in group]
            timed, models = [], []
            for r, (_, build) in zip(done, group):
                try:
                    models.append(with_random_weights(build()).SerializeToString())
                    timed.append(r)
                except Exception as e:  # noqa: BLE001  -- logged and skipped, never aborts the campaign
                    r.error = f"{type(e).__name__}: {e}"
            for r, outcome in zip(timed, _time_or_split(timer, models)):
                if isinstance(outcome, Exception):
                    r.error = str(outcome)
                else:
                    r.times_ms = outcome
            for r in done:
                if r.error is not None:
                    log.warning("skipped %s: %s", r.arch, r.error)
                results.append(r)
                if on_result is not None:
                    on_result(r)
            bar.update(len(done))
            if ok := [r for r in done if r.error is None]:
                bar.set_postfix(ms=f"{np.median([r.median for r in ok]):.3g}", cv=f"{np.median([r.cv for r in ok]):.3f}")
        bar.close()
    return results


def _time_or_split(timer: Timer, models: list[bytes]) -> list[list[float] | Exception]:
    """``timer.time(models)``; when the group times out or kills the worker, halve it until the
    culprit is alone, so only that candidate fails."""
    if not models:
        return []
    try:
        return timer.time(models)
    except WorkerError:
        raise  # not a candidate's fault: every later one would fail the same way
    except (TimeoutError, RuntimeError) as e:
        if len(models) == 1:
            return [e]
        half = len(models) // 2
        return _time_or_split(timer, models[:half]) + _time_or_split(timer, models[half:])


#: CSV columns. ``arch,value`` first: the fine-tune loader (``data.load_arch_values``) reads those
#: and ignores the rest; ``space,metric`` make the same file a generic ``space,arch,metric,value``
#: CSV (``data.load_generic`` / ``load_dir``); ``cv`` is the candidate's noise, ignored by both.
COLUMNS = ["arch", "value", "space", "metric", "cv"]


def meta_path(out: Path) -> Path:
    """The sidecar of ``out``: ``x.csv`` -> ``x.meta`` (JSON). Not ``.json``: ``data.load_dir``
    reads every ``*.json`` in a data folder as an NDS sweep, and these CSVs belong in such folders."""
    return Path(out).with_suffix(".meta")


def measure_to_csv(candidates: Sequence[Candidate], out: Path, settings: Settings, meta: dict) -> list[Result]:
    """Measure ``candidates`` into ``out`` (:data:`COLUMNS`) and its sidecar; resume if it exists.

    ``meta`` describes the run (at least the :data:`RESUME_KEYS`); a resumed run must match the
    existing sidecar on those keys. Rows are appended and flushed one by one; the sidecar also
    keeps the reason of every failure (failed candidates are tried again on resume).
    """
    out, side = Path(out), meta_path(out)
    done: set[str] = set()
    failed: dict[str, str] = {}
    if out.exists():
        if not side.exists():
            raise ValueError(f"{out} exists without {side.name}: cannot tell how it was measured, so not appending to it")
        old = json.loads(side.read_text())
        diff = {k: (old.get(k), meta.get(k)) for k in RESUME_KEYS if old.get(k) != meta.get(k)}
        if diff:
            shown = "; ".join(f"{k}: file has {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"cannot resume {out}: settings differ ({shown}); use another --out")
        with out.open(newline="") as f:
            reader = csv.reader(f)
            if next(reader, None) != COLUMNS:
                raise ValueError(f"{out} does not start with the header {','.join(COLUMNS)}")
            done = {row[0] for row in reader if row}
        failed = old.get("failed", {})
    # Same seed, same sequence: keep the first occurrence of each arch not yet in the file.
    todo, seen = [], set(done)
    for arch, build in candidates:
        if arch not in seen:
            seen.add(arch)
            todo.append((arch, build))
    if done:
        log.info("resuming %s: %d already measured, %d to go", out, len(done), len(todo))
    meta = {**meta, "failed": failed}

    def save_meta() -> None:
        tmp = side.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(side)  # atomic: a crash never leaves a half-written sidecar

    out.parent.mkdir(parents=True, exist_ok=True)
    save_meta()
    new_file = not out.exists()
    with out.open("a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if new_file:
            writer.writerow(COLUMNS)

        def save(r: Result) -> None:
            if r.error is None:
                writer.writerow([r.arch, f"{r.median:.6g}", meta["space"], meta["metric"], f"{r.cv:.4f}"])
                f.flush()
                if failed.pop(r.arch, None) is not None:
                    save_meta()
            else:
                failed[r.arch] = r.error
                save_meta()

        return measure(todo, settings, on_result=save)


def summarize(results: Sequence[Result]) -> str:
    """One line: how many were measured / failed, and the median and max CV (the noise)."""
    ok = [r for r in results if r.error is None]
    line = f"{len(ok)} measured, {len(results) - len(ok)} failed"
    if ok:
        cvs = [r.cv for r in ok]
        line += f"; CV median {np.median(cvs):.4f}, max {max(cvs):.4f}"
    return line


def check(candidates: Sequence[Candidate], settings: Settings) -> float:
    """Measure the same candidates twice (two full passes) and return the Spearman of the medians."""
    from scipy.stats import spearmanr

    first = measure(candidates, settings, desc="check pass 1")
    second = measure(candidates, settings, desc="check pass 2")
    pairs = [(a.median, b.median) for a, b in zip(first, second) if a.error is None and b.error is None]
    print(f"pass 1: {summarize(first)}\npass 2: {summarize(second)}")
    if len(pairs) < 3:
        raise RuntimeError(f"only {len(pairs)} candidates measured in both passes; need at least 3 for a Spearman")
    return float(spearmanr(*zip(*pairs)).statistic)


# --- CLI --------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    def positive(kind):
        def parse(text):
            v = kind(text)
            if v <= 0:
                raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
            return v

        return parse

    def non_negative(text):
        v = int(text)
        if v < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return v

    d = Settings()
    p = argparse.ArgumentParser(prog="python -m rlm_nas.measure", description=__doc__.split("\n")[0])
    p.add_argument("--space", required=True, help="search space to sample (see search_spaces.SPACE_NAMES)")
    p.add_argument("-n", type=positive(int), required=True, help="number of candidates (space.sample(n, seed))")
    p.add_argument("--device-name", help="metric is latency:<device-name> (default for cpu: from the CPU model and --threads, e.g. epyc-7763-1c)")
    p.add_argument("--provider", choices=["cpu", "cuda"], default=d.provider)
    p.add_argument("--batch", type=positive(int), default=1)
    p.add_argument("--threads", type=positive(int), default=d.threads, help="ORT intra-op threads (inter-op is 1, sequential)")
    p.add_argument("--cpus", help="pin to these CPUs first, e.g. '2,3' or '0-3' (os.sched_setaffinity)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=non_negative, default=d.warmup, help="untimed runs per candidate")
    p.add_argument("--repeats", type=positive(int), default=d.repeats, help="timed runs per candidate (the median is kept)")
    p.add_argument("--interleave", type=positive(int), default=d.interleave,
                   help="candidates timed together, their runs interleaved in random order (cancels the machine's speed drifts)")
    p.add_argument("--timeout", type=positive(float), default=d.timeout, help="seconds per candidate before it is skipped")
    p.add_argument("--out", type=Path, help="CSV to write or resume (arch,value,space,metric,cv); JSON sidecar FILE.meta")
    p.add_argument("--check", action="store_true", help=f"measure the candidates twice, print the Spearman (target >= {CHECK_TARGET}); writes nothing")
    return p


def _parse_cpus(text: str) -> set[int]:
    cpus = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 when ``--check`` misses its target)."""
    from rlm_nas.core import check_metric
    from search_spaces import get_space

    p = _parser()
    a = p.parse_args(argv)
    if a.check == (a.out is not None):
        p.error("give --out FILE.csv to measure, or --check (which writes nothing) without --out")
    if a.cpus:
        try:
            os.sched_setaffinity(0, _parse_cpus(a.cpus))  # the timing worker inherits it
        except (ValueError, OSError) as e:
            p.error(f"--cpus {a.cpus!r}: {e} (available: {sorted(os.sched_getaffinity(0))})")
    if a.provider == "cuda" and not a.device_name:
        p.error("--provider cuda needs --device-name (e.g. a100_1); the default name describes a CPU")
    device = a.device_name or cpu_device_name(a.threads)
    try:
        metric = check_metric(f"latency:{device}")
        check_provider(a.provider)
    except (ValueError, RuntimeError) as e:
        p.error(str(e))
    try:
        space = get_space(a.space)
    except (ValueError, ImportError) as e:  # ImportError: a space whose module is not installed/written
        p.error(f"--space {a.space}: {e}")

    import onnxruntime as ort

    settings = Settings(a.provider, a.threads, a.warmup, a.repeats, a.timeout, a.interleave)
    cpus = sorted(os.sched_getaffinity(0))
    if a.provider == "cpu" and a.threads > len(cpus):
        log.warning("--threads %d exceeds the %d CPUs this process may use: threads will share cores", a.threads, len(cpus))
    genotypes = space.sample(a.n, a.seed)
    cands = [(space.format(g), lambda g=g: space.to_onnx(g, batch_size=a.batch)) for g in genotypes]

    if a.check:
        rho = check(cands, settings)
        ok = rho >= CHECK_TARGET
        print(f"Spearman between the two passes: {rho:.4f} over {len(cands)} candidates "
              f"({'meets' if ok else 'BELOW'} the {CHECK_TARGET} target{'' if ok else '; is the machine idle?'})")
        return 0 if ok else 1

    meta = {
        "metric": metric, "device_name": device, "space": a.space, "n": a.n, "seed": a.seed, "batch": a.batch,
        **asdict(settings), "inter_op_threads": 1, "execution_mode": "sequential", "cpus": cpus,
        "cpu_model": cpu_model(), "onnxruntime": ort.__version__, "python": platform.python_version(),
    }
    try:
        results = measure_to_csv(cands, a.out, settings, meta)
    except ValueError as e:
        p.error(str(e))
    print(f"{a.out} ({metric}): {summarize(results)}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(main())
