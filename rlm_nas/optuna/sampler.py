"""``RLMSampler``: an Optuna sampler that proposes architectures the RLM predicts to be good."""

from __future__ import annotations

import math
import threading
import warnings
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from rlm_nas.core import Example, Prediction, check_metric

if TYPE_CHECKING:
    from optuna.study import Study

    from search_spaces import Space

ACQUISITIONS = ("thompson", "ucb", "mean")
#: Most scored-but-unevaluated candidates kept (the Pareto selection is quadratic in it).
MAX_SCORED = 2048
#: Trial system attributes written by the sampler (JSON values, so every storage keeps them).
ARCH_ATTR, PREDICTED_ATTR = "rlm:arch", "rlm:predicted"
#: Optuna 5 names each constraint (``trial.set_constraint`` writes ``constraints:<key>``); 4.x
#: reads a single list under ``constraints`` (what ``constraints_func`` writes). 5 reads both.
_NAMED_CONSTRAINTS = hasattr(optuna.trial.FrozenTrial, "set_constraint")


class RLMSampler(BaseSampler):
    """Propose architectures of a search space by scoring a candidate pool with an RLM.

    The objective asks for the architecture with ``space.suggest(trial)``. For each trial the
    sampler draws ``pool_size`` new candidates (random architectures plus one-edit mutations of
    the best completed ones), predicts every ``objectives`` and ``constraints`` metric for them,
    and, among all candidates scored so far that the study does not have yet (in any state but
    failed), returns the best under ``acquisition``: ``"thompson"`` (one of a candidate's RLM
    quantile draws, picked at random: a draw from the model), ``"ucb"`` (p90 of a maximized
    metric, p10 of a minimized one) or ``"mean"`` (median). Directions come from the study;
    with several objectives the pick is drawn from the predicted Pareto front.

    ``constraints`` maps a metric to its budget (e.g. ``{"latency:pixel3": 12.0}``): candidates
    predicted over budget are dropped (if none fit, the one with the smallest relative excess is
    kept). After each trial the *real* constraint ``value - budget`` is stored where Optuna's
    constrained machinery reads it (``best_trial``, ``best_trials``, TPE/NSGA-II): the value is
    ``trial.user_attrs[metric]`` if the objective set it, else the objective value if the metric
    is an objective, else the RLM's predicted median (then ``rlm:constraint_source`` says so).

    With ``online_finetune`` the RLM is fine-tuned on the study's completed trials every
    ``finetune_every`` completions, for at most ``finetune_seconds``, so it adapts without
    stalling the study. Objective values must then be in the checkpoint's units (accuracy in %,
    latency in ms).

    All state is read from the study's storage, so in-memory, SQLite or any RDB storage,
    ``n_jobs > 1`` and several processes sharing one study all work. Parameters that are not in
    ``space.distributions()`` are sampled by ``independent_sampler`` (default
    :class:`~optuna.samplers.RandomSampler`) with a warning.

    Example:
        >>> import optuna
        >>> from rlm_nas.optuna import RLMSampler
        >>> from search_spaces import get_space
        >>> space = get_space("nb201")
        >>> sampler = RLMSampler(space, objectives=("accuracy:cifar10",), checkpoint="default", seed=0)
        >>> study = optuna.create_study(direction="maximize", sampler=sampler)
        >>> def objective(trial):
        ...     arch = space.suggest(trial)
        ...     return sampler.predict([arch]).median[0, 0]  # your training run goes here
        >>> study.optimize(objective, n_trials=3)
        >>> len({t.system_attrs["rlm:arch"] for t in study.trials})  # never the same one twice
        3

    Args:
        space: a :class:`search_spaces.Space` or its registry name.
        objectives: one metric per study objective, in the study's order.
        constraints: ``{metric: budget}``; feasible when the metric is ``<= budget``.
        checkpoint: ``"default"``, a checkpoint path, or an already loaded RLM.
        pool_size: new candidates scored per trial (half mutations once trials complete); the pick
            is made among every candidate scored so far and not yet evaluated.
        acquisition: one of ``"thompson"``, ``"ucb"``, ``"mean"``.
        num_samples: RLM draws per candidate, the model's quantiles at levels (i + 0.5) / k (for the
            median, p10/p90 and Thompson draws).
        online_finetune, finetune_every, finetune_seconds: see above.
        seed: makes proposals reproducible; each trial's draws depend on (seed, trial number).
        independent_sampler: for parameters outside the space.
        warn_independent_sampling: warn when the independent sampler is used.
        candidates: choose only among these architectures (genotypes or native strings), e.g. the
            ones a benchmark table has labels for, or a shortlist of your own. They are all
            scored at the first trial (``pool_size`` is then unused) and proposed best first under
            ``acquisition``, each at most once. Default: random samples and mutations.
    """

    def __init__(
        self,
        space: "Space | str",
        objectives: Sequence[str] = ("accuracy:cifar10",),
        constraints: Mapping[str, float] | None = None,
        checkpoint: Any = "default",
        pool_size: int = 16,
        acquisition: str = "thompson",
        num_samples: int = 8,
        online_finetune: bool = True,
        finetune_every: int = 10,
        finetune_seconds: float = 2.0,
        seed: int | None = None,
        independent_sampler: BaseSampler | None = None,
        warn_independent_sampling: bool = True,
        candidates: Sequence[Any] | None = None,
    ) -> None:
        if isinstance(space, str):
            from search_spaces import get_space

            space = get_space(space)
        if acquisition not in ACQUISITIONS:
            raise ValueError(f"acquisition {acquisition!r} is unknown; allowed: {', '.join(ACQUISITIONS)}")
        for name, v in (("pool_size", pool_size), ("num_samples", num_samples), ("finetune_every", finetune_every)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if isinstance(objectives, str):
            objectives = (objectives,)
        if not objectives:
            raise ValueError("objectives must name at least one metric, e.g. ('accuracy:cifar10',)")
        constraints = dict(constraints or {})
        for metric, budget in constraints.items():
            if not isinstance(budget, (int, float)) or not math.isfinite(budget):
                raise ValueError(f"constraints[{metric!r}] must be a finite number (the budget), got {budget!r}")
        self.space = space
        self._candidates = None
        if candidates is not None:
            genotypes = [space.parse(c) if isinstance(c, str) else c for c in candidates]
            for g in genotypes:
                space.validate(g)
            self._candidates = list({space.format(g): g for g in genotypes}.items())
            if not self._candidates:
                raise ValueError("candidates is empty; pass at least one architecture, or None to sample them")
        self.objectives = tuple(check_metric(m) for m in objectives)
        self.constraints = {check_metric(m): float(b) for m, b in constraints.items()}
        self.rlm = load_rlm(checkpoint)
        unknown = [m for m in (*self.objectives, *self.constraints) if m not in self.rlm.metrics]
        if unknown:
            raise ValueError(f"metric(s) {unknown} are not predicted by this checkpoint; known: {', '.join(self.rlm.metrics)}")
        self.metrics = tuple(dict.fromkeys((*self.objectives, *self.constraints)))
        self._pool_size, self._acquisition, self._num_samples = pool_size, acquisition, num_samples
        self._online_finetune, self._finetune_every, self._finetune_seconds = online_finetune, finetune_every, finetune_seconds
        self._seed = np.random.SeedSequence(seed).entropy if seed is None else seed
        self._independent_sampler = independent_sampler or RandomSampler(seed=seed)
        self._warn_independent_sampling = warn_independent_sampling
        # One lock for the model and the proposal: with n_jobs > 1 two threads must neither run
        # the model while it is fine-tuned nor pick the same candidate from the same storage view.
        self._lock = threading.RLock()
        self._finetuned_at = 0  # completed trials the last fine-tune saw (per process, on purpose)
        # Candidates scored so far and not yet evaluated: native string -> (genotype, samples
        # (metrics, num_samples)). Each trial scores only ``pool_size`` new ones and picks from all
        # of them, so the RLM (and text conversion, the slow part) runs once per candidate. A
        # per-process cache on purpose: "already evaluated" is always re-read from the storage.
        self._scored: dict[str, tuple[Any, np.ndarray]] = {}
        self._warned: set[str] = set()

    # --- public helpers -------------------------------------------------------------------------
    def predict(self, genotypes: Sequence[Any], num_samples: int | None = None, seed: int = 0, equivalents: int = 1):
        """The RLM's :class:`~rlm_nas.core.Prediction` of the sampler's metrics (thread-safe);
        ``equivalents`` as in :meth:`RLM.predict` (the sampler scores its candidates with 1: cheap)."""
        with self._lock:
            pred = self.rlm.predict(list(genotypes), list(self.metrics), space=self.space.name,
                                    num_samples=num_samples or self._num_samples, seed=seed, equivalents=equivalents)
        if np.any(pred.extrapolated) and "extrapolated" not in self._warned:
            self._warned.add("extrapolated")
            bad = [m for m, e in zip(pred.metrics, pred.extrapolated) if e]
            warnings.warn(f"the checkpoint has no training data for {self.space.name} on {bad}: those predictions are guesses")
        return pred

    # --- BaseSampler ----------------------------------------------------------------------------
    def reseed_rng(self) -> None:
        self._independent_sampler.reseed_rng()

    def infer_relative_search_space(self, study: "Study", trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self.space.distributions())

    def sample_relative(self, study: "Study", trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        if len(study.directions) != len(self.objectives):
            raise ValueError(
                f"the study has {len(study.directions)} objective(s) but RLMSampler(objectives=...) names "
                f"{len(self.objectives)}: {list(self.objectives)}; give one metric per study direction"
            )
        with self._lock:
            trials = study.get_trials(deepcopy=False)
            if self._online_finetune:
                self._maybe_finetune(study, trials)
            rng = np.random.default_rng([self._seed, trial.number])
            seen = {self._arch(t) for t in trials if t.state != TrialState.FAIL}
            for arch in seen & self._scored.keys():  # evaluated since, by any thread or process
                del self._scored[arch]
            new = self._new_candidates(study, trials, seen, rng)
            if new:
                pred = self.predict(new, seed=int(rng.integers(2**31)))
                self._scored.update((self.space.format(g), (g, pred.samples[i])) for i, g in enumerate(new))
            while len(self._scored) > MAX_SCORED:  # oldest first: bounds the selection's cost
                del self._scored[next(iter(self._scored))]
            if not self._scored:
                return {}  # every candidate drawn was already evaluated: fall back to independent
            archs = list(self._scored)
            pred = Prediction(self.metrics, np.stack([self._scored[a][1] for a in archs]))
            i = self._select(pred, study.directions, rng)
            best = self._scored.pop(archs[i])[0]  # popped: no other thread of this process gets it
            study._storage.set_trial_system_attr(trial._trial_id, ARCH_ATTR, archs[i])
            study._storage.set_trial_system_attr(trial._trial_id, PREDICTED_ATTR, _summary(pred, i))
        params = self.space.to_params(best)
        # Only what Optuna asked for: a wrapper (e.g. PartialFixedSampler) may have removed some.
        return {k: v for k, v in params.items() if k in search_space}

    def sample_independent(self, study: "Study", trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        if self._warn_independent_sampling and param_name not in self._warned:
            self._warned.add(param_name)
            why = ("it is not a parameter of the " + self.space.name + " space"
                   if param_name not in self.space.distributions()
                   else "the relative proposal did not cover it (space exhausted, or a different distribution)")
            warnings.warn(f"RLMSampler: parameter {param_name!r} is sampled by "
                          f"{type(self._independent_sampler).__name__} because {why}")
        return self._independent_sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: "Study", trial: FrozenTrial) -> None:
        self._independent_sampler.before_trial(study, trial)

    def after_trial(self, study: "Study", trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        if self.constraints and state in (TrialState.COMPLETE, TrialState.PRUNED):
            self._record_constraints(study, trial, values)
        self._independent_sampler.after_trial(study, trial, state, values)

    # --- internals ------------------------------------------------------------------------------
    def _arch(self, trial: FrozenTrial) -> str | None:
        """The trial's architecture (native string), from its params, or the proposal if unfinished."""
        arch = None
        dists = self.space.distributions()
        if all(k in trial.params for k in dists):
            try:
                arch = self.space.format(self.space.from_params({k: trial.params[k] for k in dists}))
            except ValueError:  # InvalidGenotype: e.g. params of an older version of the space
                arch = None
        elif not trial.state.is_finished():
            arch = trial.system_attrs.get(ARCH_ATTR)  # proposed, objective not yet asked for it
        return arch

    def _new_candidates(self, study: "Study", trials: list[FrozenTrial], seen: set, rng: np.random.Generator) -> list:
        """``pool_size`` new architectures: half mutations of the best trials (once there are any);
        with fixed ``candidates``, all of them not yet scored or evaluated."""
        if self._candidates is not None:
            known = seen | self._scored.keys()
            return [g for a, g in self._candidates if a not in known]
        parents = self._parents(study, trials)
        n_mut = self._pool_size // 2 if parents else 0
        cands = [self.space.mutate(parents[i], seed=int(rng.integers(2**31))) for i in rng.integers(len(parents), size=n_mut)]
        cands += self.space.sample(self._pool_size - n_mut, seed=int(rng.integers(2**31)))
        out, keys = [], seen | self._scored.keys()
        for g in cands:
            key = self.space.format(g)
            if key not in keys:
                keys.add(key)
                out.append(g)
        return out

    def _parents(self, study: "Study", trials: list[FrozenTrial], k: int = 5) -> list:
        """Genotypes of the best completed feasible trials (the Pareto front with several objectives)."""
        done = [t for t in trials if t.state == TrialState.COMPLETE and self._arch(t) and _feasible(t)]
        if not done:
            return []
        scores = np.array([[v if d == StudyDirection.MAXIMIZE else -v for v, d in zip(t.values, study.directions)] for t in done])
        scores = np.nan_to_num(scores, nan=-np.inf)
        if len(study.directions) == 1:
            best = np.argsort(-scores[:, 0])[:k]
        else:
            best = np.flatnonzero(pareto_mask(scores))
        return [self.space.parse(self._arch(done[i])) for i in best]

    def _select(self, pred, directions: Sequence[StudyDirection], rng: np.random.Generator) -> int:
        """Index of the pool candidate to propose."""
        n = pred.samples.shape[0]
        ok = np.ones(n, dtype=bool)
        if self.constraints:
            excess = np.stack([(pred.column(m)["median"] - b) / max(abs(b), 1e-12) for m, b in self.constraints.items()], 1)
            ok = (excess <= 0).all(1)
            if not ok.any():
                return int(np.argmin(np.clip(excess, 0, None).sum(1)))
        scores = np.empty((n, len(self.objectives)))
        for j, (metric, direction) in enumerate(zip(self.objectives, directions)):
            col, maximize = pred.column(metric), direction == StudyDirection.MAXIMIZE
            if self._acquisition == "thompson":
                v = col["samples"][np.arange(n), rng.integers(col["samples"].shape[1], size=n)]
            elif self._acquisition == "ucb":
                v = col["p90"] if maximize else col["p10"]
            else:
                v = col["median"]
            scores[:, j] = v if maximize else -v
        idx = np.flatnonzero(ok)
        front = idx[pareto_mask(scores[idx])]
        return int(rng.choice(front)) if len(self.objectives) > 1 else int(idx[np.argmax(scores[idx, 0])])

    def _record_constraints(self, study: "Study", trial: FrozenTrial, values: Sequence[float] | None) -> None:
        predicted = trial.system_attrs.get(PREDICTED_ATTR) or {}
        if predicted and trial.system_attrs.get(ARCH_ATTR) != self._arch(trial):
            predicted = {}  # the objective evaluated another architecture (e.g. enqueued params)
        out, sources = {}, {}
        for metric, budget in self.constraints.items():
            if metric in trial.user_attrs:
                v, src = trial.user_attrs[metric], "measured"
            elif values is not None and metric in self.objectives:
                v, src = values[self.objectives.index(metric)], "measured"
            elif metric in predicted:
                v, src = predicted[metric]["median"], "predicted"
            else:
                continue
            out[metric], sources[metric] = float(v) - budget, src
        if not out:
            return
        storage = study._storage
        if _NAMED_CONSTRAINTS:
            for metric, c in out.items():
                if f"constraints:{metric}" not in trial.system_attrs:  # the objective may have set it
                    storage.set_trial_system_attr(trial._trial_id, f"constraints:{metric}", c)
        elif "constraints" not in trial.system_attrs:
            storage.set_trial_system_attr(trial._trial_id, "constraints", [out.get(m, 0.0) for m in self.constraints])
        storage.set_trial_system_attr(trial._trial_id, "rlm:constraint_source", sources)

    def _maybe_finetune(self, study: "Study", trials: list[FrozenTrial]) -> None:
        done = [t for t in trials if t.state == TrialState.COMPLETE and self._arch(t)]
        if len(done) - self._finetuned_at < self._finetune_every:
            return
        self._finetuned_at = len(done)
        self._scored.clear()  # predictions of the old weights
        examples = []
        for t in done[-512:]:  # the most recent: a bounded update, whatever the study's length
            measured = dict(zip(self.objectives, t.values))
            measured.update({m: t.user_attrs[m] for m in self.constraints if m in t.user_attrs})
            for metric, v in measured.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    examples.append(Example(self.space.name, self._arch(t), metric, float(v)))
        if not examples:
            return
        from rlm_nas.finetune import finetune

        try:
            finetune(self.rlm, examples, max_seconds=self._finetune_seconds, seed=int(self._seed) % 2**31 + len(done))
        except Exception as e:  # adaptation is an optimization: a failure must not stop the study
            self._online_finetune = False
            warnings.warn(f"RLMSampler: online fine-tuning failed and is now off: {type(e).__name__}: {e}")


def load_rlm(checkpoint: Any):
    """An RLM from ``"default"``, a checkpoint path, or an object that already is one."""
    if hasattr(checkpoint, "predict") and hasattr(checkpoint, "metrics"):
        return checkpoint
    from rlm_nas.model import RLM

    return RLM.from_pretrained(str(checkpoint))


def pareto_mask(scores: np.ndarray) -> np.ndarray:
    """Rows of ``scores`` (larger is better in every column) that no other row dominates."""
    s = np.asarray(scores, dtype=float)
    dominated = ((s[None, :, :] >= s[:, None, :]).all(-1) & (s[None, :, :] > s[:, None, :]).any(-1)).any(1)
    return ~dominated


def arch_seed(arch: str, seed: int = 0) -> int:
    """A stable seed for one architecture (``hash`` is salted per process; crc32 is not)."""
    return (zlib.crc32(arch.encode()) + seed) % 2**31


def constraint_values(trial: FrozenTrial) -> list[float]:
    """The trial's constraint values in either storage format (4.x list, or 5's named keys)."""
    attrs = trial.system_attrs
    return list(attrs.get("constraints") or ()) + [v for k, v in attrs.items() if k.startswith("constraints:")]


def _feasible(trial: FrozenTrial) -> bool:
    return all(c <= 0 for c in constraint_values(trial))


def _summary(pred, i: int) -> dict[str, dict[str, float]]:
    """``{metric: {median, p10, p90}}`` of candidate ``i``, as plain floats for the storage."""
    return {m: {k: float(pred.column(m)[k][i]) for k in ("median", "p10", "p90")} for m in pred.metrics}
