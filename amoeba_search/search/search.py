"""Multi-objective search over subnet shapes: metric (lower is better) against latency, under a budget.

Three strategies over the same two objective functions (each maps a list of shapes to an array):
- ``exhaustive``: every shape of the space; the ground truth for small spaces.
- ``nsga2``: Optuna's NSGA-II over the whole space, the latency budget as a constraint.
- ``hierarchical``: depth first (coarse: each depth at its extreme widths), then Optuna over the widths of the
  promising depths only (those on the coarse front and the most accurate ones, with their neighbours), then a
  local refinement: the grid neighbours of every front point, until the front stops changing.
Studies live in an Optuna storage (``search/storage.py``: a journal file, or an RDB URL such as PostgreSQL for
several machines), so a search resumes after a crash and several ``amoeba-search --storage URL`` processes
work on one study. The trial count is global: N workers together run ``trials`` completed trials. The
hierarchical method stores each of its stages: ``<name>-coarse`` (the depth pass), ``<name>-widths-...``
(the Optuna study) and ``<name>-refine`` (the front's neighbours), each with named objectives and the
caller's ``study_attrs`` as user attributes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import optuna

from amoeba_search.errors import InputError
from amoeba_search.search.pareto import pareto_front
from amoeba_search.search.storage import describe_study, open_storage
from amoeba_search.shapes import SearchSpace, SubnetShape

ObjectiveFn = Callable[[Sequence[SubnetShape]], np.ndarray]
METHODS = ("hierarchical", "nsga2", "exhaustive")

logger = logging.getLogger(__name__)


@dataclass
class Point:
    shape: SubnetShape
    metric: float
    latency_ms: float
    memory_mb: float | None = None  # when a memory budget applies

    def to_dict(self) -> dict:
        return {"shape": str(self.shape), **self.shape.to_dict(), "metric": self.metric, "latency_ms": self.latency_ms,
                **({} if self.memory_mb is None else {"memory_mb": self.memory_mb})}


@dataclass
class SearchResult:
    points: list[Point]                  # every distinct shape the search looked at
    budget_ms: float
    method: str
    trials: int
    front: list[Point] = field(default_factory=list)  # feasible Pareto front, by latency
    memory_budget_mb: float | None = None

    def __post_init__(self):
        if not self.front:
            self.front = feasible_front(self.points, self.budget_ms, self.memory_budget_mb)

    def best(self) -> Point | None:
        """The most accurate feasible shape (ties broken by latency)."""
        return min(self.front, key=lambda p: (p.metric, p.latency_ms), default=None)


def feasible_front(points: Sequence[Point], budget_ms: float, memory_budget_mb: float | None = None) -> list[Point]:
    feasible = [p for p in points if p.latency_ms <= budget_ms
                and (memory_budget_mb is None or p.memory_mb is None or p.memory_mb <= memory_budget_mb)]
    if not feasible:
        return []
    idx = pareto_front([[p.latency_ms, p.metric] for p in feasible])
    return [feasible[i] for i in idx]


class _Objectives:
    """Evaluate shapes once each, however often a sampler proposes them."""

    def __init__(self, metric_fn: ObjectiveFn, latency_fn: ObjectiveFn, memory_fn: ObjectiveFn | None = None):
        self.metric_fn, self.latency_fn, self.memory_fn = metric_fn, latency_fn, memory_fn
        self.seen: dict[SubnetShape, Point] = {}

    def __call__(self, shapes: Sequence[SubnetShape]) -> list[Point]:
        new = [s for s in dict.fromkeys(shapes) if s not in self.seen]
        if new:
            memory = self.memory_fn(new) if self.memory_fn is not None else [None] * len(new)
            for s, m, l, mem in zip(new, self.metric_fn(new), self.latency_fn(new), memory):
                self.seen[s] = Point(s, float(m), float(l), None if mem is None else float(mem))
        return [self.seen[s] for s in shapes]


def _trial_shape(trial: optuna.Trial, depths, space: SearchSpace) -> SubnetShape:
    return SubnetShape(trial.suggest_categorical("depth", list(depths)),
                       trial.suggest_categorical("ffn_ratio", list(space.ffn_ratios)),
                       trial.suggest_categorical("heads_ratio", list(space.heads_ratios)))


def _distributions(space: SearchSpace, depths) -> dict[str, optuna.distributions.CategoricalDistribution]:
    return {"depth": optuna.distributions.CategoricalDistribution(list(depths)),
            "ffn_ratio": optuna.distributions.CategoricalDistribution(list(space.ffn_ratios)),
            "heads_ratio": optuna.distributions.CategoricalDistribution(list(space.heads_ratios))}


def _constraints(point: Point, budget_ms: float, memory_budget_mb: float | None) -> list[float]:
    """Optuna's constraint values (feasible when all <= 0): latency, then memory where it applies."""
    out = [point.latency_ms - budget_ms]
    if memory_budget_mb is not None and point.memory_mb is not None:
        out.append(point.memory_mb - memory_budget_mb)
    return out


def _frozen_point(frozen: optuna.trial.FrozenTrial) -> Point:
    shape = SubnetShape(frozen.params["depth"], frozen.params["ffn_ratio"], frozen.params["heads_ratio"])
    return Point(shape, frozen.values[0], frozen.values[1], frozen.user_attrs.get("memory_mb"))


def _optimize(objectives: _Objectives, space: SearchSpace, depths, budget_ms: float, trials: int, *,
              storage, study_name: str, sampler: optuna.samplers.BaseSampler,
              memory_budget_mb: float | None = None, metric_names=None, study_attrs=None) -> int:
    """Run the named study (resuming it) until it holds ``trials`` completed trials, counted over every
    worker; return how many it holds."""
    study = optuna.create_study(study_name=study_name, storage=storage, directions=["minimize", "minimize"],
                                sampler=sampler, load_if_exists=True)
    describe_study(study, metric_names, study_attrs)
    complete = (optuna.trial.TrialState.COMPLETE,)
    stored = study.get_trials(states=complete)
    for frozen in stored:
        point = _frozen_point(frozen)
        objectives.seen.setdefault(point.shape, point)
    if stored:
        logger.info("study %s resumed with %d of %d trials complete", study_name, len(stored), trials)
    live = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)

    def objective(trial: optuna.Trial):
        # MaxTrialsCallback stops a worker after its trial completes; another worker may have started one in
        # between. A trial with `trials` live ones before it is one too many: close it and stop.
        if trial.number >= trials and sum(t.number < trial.number for t in study.get_trials(deepcopy=False,
                                                                                          states=live)) >= trials:
            trial.set_user_attr("skipped", "the study already holds the trials asked for")
            study.stop()
            raise optuna.TrialPruned()
        point = objectives([_trial_shape(trial, depths, space)])[0]
        trial.set_constraint("latency_budget", point.latency_ms - budget_ms)  # feasible when <= 0
        if memory_budget_mb is not None and point.memory_mb is not None:
            trial.set_constraint("memory_budget", point.memory_mb - memory_budget_mb)
        trial.set_user_attr("shape", str(point.shape))
        if point.memory_mb is not None:
            trial.set_user_attr("memory_mb", point.memory_mb)
        return point.metric, point.latency_ms

    done = len(study.get_trials(deepcopy=False, states=complete))
    if trials > done:  # n_trials caps this worker; the callback stops it when all workers together are done
        study.optimize(objective, n_trials=trials - done, gc_after_trial=False,
                       callbacks=[optuna.study.MaxTrialsCallback(trials, states=complete)])
    return len(study.get_trials(deepcopy=False, states=complete))


def _record_stage(storage, study_name: str, points: Sequence[Point], space: SearchSpace, budget_ms: float,
                  memory_budget_mb: float | None, stage: str, metric_names=None, study_attrs=None,
                  once: bool = False) -> None:
    """Store ``points`` (evaluated outside Optuna's samplers) as completed trials of the named study, so the
    stage is on record and a resumed search starts from it.

    ``once``: the stage is the same for every worker (the coarse pass: the same predictor, the same shapes),
    so only the worker that creates the study records it; creating a study is atomic in every storage (a
    second creation raises ``DuplicatedStudyError``). Otherwise (the refinement, which differs between
    workers) shapes already stored are skipped; two workers finishing at the same instant may both store a
    shape, and readers take its first record."""
    if storage is None:  # in memory: nothing outlives the search, nothing to record
        return
    directions = ["minimize", "minimize"]
    if once:
        try:
            study = optuna.create_study(study_name=study_name, storage=storage, directions=directions)
        except optuna.exceptions.DuplicatedStudyError:
            return
    else:
        study = optuna.create_study(study_name=study_name, storage=storage, directions=directions,
                                    load_if_exists=True)
    describe_study(study, metric_names, {**(study_attrs or {}), "stage": stage})
    present = {t.user_attrs.get("shape") for t in study.get_trials(deepcopy=False)}
    distributions = _distributions(space, space.depths)
    new = [optuna.trial.create_trial(
        params={"depth": p.shape.depth, "ffn_ratio": p.shape.ffn_ratio, "heads_ratio": p.shape.heads_ratio},
        distributions=distributions, values=[p.metric, p.latency_ms],
        user_attrs={"shape": str(p.shape), "stage": stage,
                    **({} if p.memory_mb is None else {"memory_mb": p.memory_mb})},
        system_attrs={"constraints": _constraints(p, budget_ms, memory_budget_mb)})
        for p in dict((p.shape, p) for p in points).values() if str(p.shape) not in present]
    if new:
        study.add_trials(new)


def _load_stage(storage, study_name: str, objectives: _Objectives) -> None:
    """The points a stage stored earlier (a resumed search), into ``objectives``."""
    if storage is None:
        return
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # not stored yet
        return
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        point = _frozen_point(frozen)
        objectives.seen.setdefault(point.shape, point)


def search(space: SearchSpace, metric_fn: ObjectiveFn, latency_fn: ObjectiveFn, *, budget_ms: float,
           method: str = "hierarchical", trials: int = 120, storage=None,
           study_name: str = "amoeba-search", seed: int = 0, top_depths: int | None = None,
           memory_fn: ObjectiveFn | None = None, memory_budget_mb: float | None = None,
           metric_names: Sequence[str] = ("metric", "latency_ms"), study_attrs: dict | None = None) -> SearchResult:
    """Search ``space`` for the feasible Pareto front of (metric, latency) within ``budget_ms`` (and, with
    ``memory_fn``, within ``memory_budget_mb`` of memory: a second constraint).

    ``storage``: None (in memory), an Optuna storage, an Optuna URL or a journal file path (see
    ``search.storage.open_storage``); workers that share it share the studies and their trial count.
    ``metric_names`` name the two objectives in the stored studies; ``study_attrs`` (model, device, flow,
    budget, ...) are set as the studies' user attributes."""
    if method not in METHODS:
        raise InputError(f"unknown search method {method!r}; choose one of {', '.join(METHODS)}")
    if not budget_ms > 0:
        raise InputError(f"the latency budget must be positive, got {budget_ms}")
    if (memory_fn is None) != (memory_budget_mb is None):
        raise InputError("a memory budget needs a memory function and the other way round")
    storage = open_storage(storage)
    objectives = _Objectives(metric_fn, latency_fn, memory_fn)
    mem = memory_budget_mb
    described = {"metric_names": list(metric_names), "study_attrs": {**(study_attrs or {}), "method": method}}
    if method == "exhaustive":
        points = objectives(list(space))
        return _done(SearchResult(points, budget_ms, method, len(points), memory_budget_mb=mem))
    if method == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=seed,
                                                population_size=max(8, min(50, trials // 6)))
        used = _optimize(objectives, space, space.depths, budget_ms, trials, storage=storage,
                         study_name=study_name, sampler=sampler, memory_budget_mb=mem, **described)
        return _done(SearchResult(list(objectives.seen.values()), budget_ms, method, used, memory_budget_mb=mem))
    # Hierarchical. Coarse: every depth at its narrowest and widest, which bounds what the depth can reach.
    extremes = [SubnetShape(d, f, h) for d in space.depths
                for f, h in ((space.ffn_ratios[0], space.heads_ratios[0]), (space.ffn_ratios[-1], space.heads_ratios[-1]))]
    coarse = objectives(extremes)
    _record_stage(storage, f"{study_name}-coarse", coarse, space, budget_ms, mem, "coarse", once=True, **described)
    # Any point under the latency budget counts here: a narrower width may still fit the memory budget.
    feasible = [p for p in coarse if p.latency_ms <= budget_ms]
    logger.info("coarse stage done: %d shapes (every depth at its extreme widths), %d within the budget",
                len(coarse), len(feasible))
    if not feasible:
        logger.info("no coarse shape is within the budget: the search stops after the coarse stage")
        return _done(SearchResult(list(objectives.seen.values()), budget_ms, method, len(coarse),
                                  memory_budget_mb=mem))
    keep = top_depths or max(3, len(space.depths) // 3)
    best_per_depth: dict[int, float] = {}
    for p in feasible:
        best_per_depth[p.shape.depth] = min(p.metric, best_per_depth.get(p.shape.depth, np.inf))
    ranked = sorted(best_per_depth, key=best_per_depth.get)[:keep]
    # Depths on the coarse front cover the fast end; the most accurate ones the slow end. A shallower depth may
    # reach the budget only at widths the coarse pass did not try: keep the neighbours.
    promising = set(ranked) | {p.shape.depth for p in feasible_front(coarse, budget_ms, mem)}
    depths = sorted({d for r in promising for d in space.depths if abs(d - r) <= 1})
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                         n_startup_trials=min(20, max(5, trials // 4)))
    used = _optimize(objectives, space, depths, budget_ms, max(1, trials - len(coarse)), storage=storage,
                     study_name=f"{study_name}-widths-{'-'.join(map(str, depths))}", sampler=sampler,
                     memory_budget_mb=mem, **described)
    logger.info("width stage done: %d trials over depths %s, %d shapes seen so far", used,
                ",".join(map(str, depths)), len(objectives.seen))
    _load_stage(storage, f"{study_name}-refine", objectives)  # a resumed search: the refinement stored before
    refined = _refine_front(objectives, space, budget_ms, mem)
    _record_stage(storage, f"{study_name}-refine", [objectives.seen[s] for s in refined], space, budget_ms, mem,
                  "refine", **described)
    logger.info("refinement stage done: %d neighbours of the front evaluated", len(refined))
    return _done(SearchResult(list(objectives.seen.values()), budget_ms, method, len(coarse) + used + len(refined),
                              memory_budget_mb=mem))


def _done(result: SearchResult) -> SearchResult:
    logger.info("%s search done: %d trials, %d shapes seen, %d on the feasible front (budget %g)", result.method,
                result.trials, len(result.points), len(result.front), result.budget_ms)
    return result


def _neighbours(shape: SubnetShape, space: SearchSpace) -> list[SubnetShape]:
    """Shapes one step away in one of depth, FFN ratio or heads ratio."""
    out = []
    for axis, choices in enumerate((space.depths, space.ffn_ratios, space.heads_ratios)):
        values = [shape.depth, shape.ffn_ratio, shape.heads_ratio]
        i = choices.index(values[axis])
        for j in (i - 1, i + 1):
            if 0 <= j < len(choices):
                values[axis] = choices[j]
                out.append(SubnetShape(*values))
    return out


def _refine_front(objectives: _Objectives, space: SearchSpace, budget_ms: float,
                  memory_budget_mb: float | None = None, max_rounds: int = 10) -> list[SubnetShape]:
    """Evaluate the unseen grid neighbours of the feasible front until it stops changing; return them."""
    evaluated: list[SubnetShape] = []
    for _ in range(max_rounds):
        front = feasible_front(list(objectives.seen.values()), budget_ms, memory_budget_mb)
        fresh = list(dict.fromkeys(n for p in front for n in _neighbours(p.shape, space) if n not in objectives.seen))
        if not fresh:
            break
        objectives(fresh)
        evaluated += fresh
    return evaluated
