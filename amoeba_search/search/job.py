"""The whole search as one job: accuracy predictor (fit or reused) × latency table → front → verification.

The CLI (``amoeba-search``) and the benchmark both call ``run_job``; it never prints, it reports progress
through a callback and returns everything it found.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.stats import spearmanr

from amoeba_search.distributed import from_rank0, rank_world
from amoeba_search.errors import InputError
from amoeba_search.quality import quality_floor
from amoeba_search.search.oracle import MetricOracle, design_sample
from amoeba_search.search.predictors import Predictor, fit_best, load_predictor, save_predictor
from amoeba_search.search.search import Point, SearchResult, feasible_front, search
from amoeba_search.search.storage import SharedEvaluations, describe_storage, evaluations_study_name, open_storage
from amoeba_search.shapes import SearchSpace, SubnetShape

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)
VERIFY_MODES = ("decisive", "all", "none")


class BudgetError(InputError):
    """No shape of the space can meet the latency budget."""


# the cost a search budgets: latency (ms) or energy (mJ per token); the JSON key suffix and the budget flag
COSTS = {"ms": {"key": "ms", "flag": "--budget-ms", "noun": "latency"},
         "mJ": {"key": "mj", "flag": "--budget-mj", "noun": "energy"}}


def budget_slack(costs: dict, budget: float, *, unit: str = "ms", source_kind: str = "measured") -> dict | None:
    """The fact that ``budget`` is looser than every shape's cost (so it constrains nothing), or None.

    ``costs``: shape -> cost; ``source_kind``: where the costs come from, in a word (measured, estimate).
    Returns the slowest shape, its cost and a one-line message for the CLI to print."""
    if not costs:
        return None
    slowest = max(costs, key=costs.get)
    if costs[slowest] > budget:
        return None
    noun, flag = COSTS[unit]["noun"], COSTS[unit]["flag"]
    message = (f"budget {budget:g} {unit} is above every shape's {noun} (slowest: {costs[slowest]:.1f} {unit}, "
               f"{source_kind}): every shape fits, so the choice is the most accurate one; pass a tighter {flag}")
    return {"budget": budget, "unit": unit, "slowest_shape": str(slowest), "slowest": float(costs[slowest]),
            "source": source_kind, "message": message}


@dataclass
class PredictorReport:
    kind: str
    train_shapes: int
    holdout_shapes: int
    holdout_spearman: float
    holdout_mare: float
    cross_validation: list[dict]
    reused: bool

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def predictor_matches(path: Path, space: SearchSpace, oracle: MetricOracle) -> bool:
    """Whether the predictor file at ``path`` was fit with ``oracle``'s settings over ``space``."""
    if not path.is_file():
        return False
    _, data = load_predictor(path)
    return data.get("oracle_settings") == oracle.settings and SearchSpace.from_dict(data["space"]) == space


def fit_or_load_predictor(space: SearchSpace, oracle: MetricOracle, path: Path | None, *, n_train: int = 40,
                          n_holdout: int = 12, seed: int = 0, progress: Progress | None = None
                          ) -> tuple[Predictor, PredictorReport]:
    """Reuse the predictor at ``path`` if it was fit with the same oracle settings, else fit and save one."""
    if path is not None and predictor_matches(path, space, oracle):
        predictor, data = load_predictor(path)
        try:
            report = PredictorReport(**{**data["report"], "reused": True})
        except (KeyError, TypeError) as err:
            raise InputError(f"predictor file {path} has no usable report ({err}); delete it (amoeba-search fits "
                             "a new one) or pass another --predictor") from err
        logger.info("predictor reused from %s: %s on %d shapes, held-out Spearman %.3f", path, report.kind,
                    report.train_shapes, report.holdout_spearman)
        return predictor, report
    if path is not None and path.is_file():
        logger.info("predictor %s was fit with other settings or another space: fitting a new one", path)
    train = design_sample(space, n_train, seed=seed)
    holdout = design_sample(space, n_holdout, seed=seed + 1, exclude=train, extremes=False)
    total = len(train) + len(holdout)
    counter = iter(range(1, total + 1))
    tick = (lambda shape: progress("evaluating shapes", next(counter), total)) if progress else None
    y_train = list(oracle(train, tick))
    y_holdout = oracle(holdout, tick)
    predictor, cv = from_rank0(lambda: fit_best(space, train, y_train, seed=seed))
    predicted = predictor.predict(holdout)
    report = PredictorReport(kind=predictor.kind, train_shapes=len(train), holdout_shapes=len(holdout),
                             holdout_spearman=float(spearmanr(predicted, y_holdout).statistic),
                             holdout_mare=float(np.mean(np.abs(predicted / y_holdout - 1))),
                             cross_validation=cv, reused=False)
    logger.info("predictor %s checked on %d held-out shapes: Spearman %.3f, mean relative error %.1f%%",
                report.kind, report.holdout_shapes, report.holdout_spearman, 100 * report.holdout_mare)
    if path is not None and rank_world()[0] == 0:
        report_dict = report.to_dict()
        report_dict.pop("reused")
        save_predictor(predictor, path, oracle_settings=oracle.settings, report=report_dict,
                       holdout=[{"shape": str(s), "metric": float(m)} for s, m in zip(holdout, y_holdout)])
    return predictor, report


@dataclass
class JobResult:
    result: SearchResult
    predictor: PredictorReport
    verified: list[dict]
    seconds: dict[str, float]
    settings: dict[str, Any]
    real_evaluations: int
    layers: dict[str, list[int]] = field(default_factory=dict)
    reference: dict | None = None       # the full model: shape, metric, latency and their sources
    max_metric: float | None = None     # the quality floor: a shape whose metric is above it is unusable
    budget_warning: dict | None = None  # budget_slack(): the budget is looser than every shape
    cost_unit: str = "ms"               # what latency_ms holds: ms (latency) or mJ (energy per token)

    def front_records(self) -> list[dict]:
        by_shape = {v["shape"]: v for v in self.verified}
        rows = []
        for p in self.result.front:
            v = by_shape.get(str(p.shape), {})
            rows.append({
                "shape": str(p.shape), **p.shape.to_dict(), "kept_layers": self.layers.get(str(p.shape)),
                "predicted_metric": p.metric, "metric_source": "accuracy predictor",
                "verified_metric": v.get("metric"), "verified_metric_source": v.get("metric_source"),
                "predicted_latency_ms": p.latency_ms, "latency_source": self.settings.get("latency_source"),
                "verified_latency_ms": v.get("latency_ms"), "verified_latency_source": v.get("latency_source"),
                **({} if p.memory_mb is None else {"memory_mb": p.memory_mb}),
                **{f"verified_{k}": x for k, x in v.get("details", {}).items()},  # e.g. verified_accuracy
            })
            metric = rows[-1]["verified_metric"] if v else p.metric
            rows[-1]["usable"] = self.max_metric is None or metric <= self.max_metric
        return rows

    def best_shape(self) -> SubnetShape | None:
        """The most accurate front shape within the budget, judged on verified numbers where there are some
        (a shape measured over the budget is passed over) and on predicted ones otherwise; if verification
        puts every shape over the budget, the predicted best."""
        budget, memory_budget, candidates = self.result.budget_ms, self.result.memory_budget_mb, []
        for row in self.front_records():
            if memory_budget is not None and row.get("memory_mb", 0.0) > memory_budget:
                continue
            if not row["usable"]:
                continue
            metric = row["verified_metric"] if row["verified_metric"] is not None else row["predicted_metric"]
            latency = row["verified_latency_ms"] if row["verified_latency_ms"] is not None else row["predicted_latency_ms"]
            if latency <= budget:
                candidates.append((metric, latency, row["shape"]))
        if candidates:
            return SubnetShape.parse(min(candidates)[2])
        usable = [p for p in self.result.front if self.max_metric is None or p.metric <= self.max_metric]
        best = min(usable, key=lambda p: (p.metric, p.latency_ms), default=None)
        return None if best is None else best.shape

    def explanation(self) -> dict | None:
        """Why the chosen shape: its speed-up and metric change against the full model, the margin to the
        budget, and the next alternatives (verified numbers where measured, predicted otherwise)."""
        best = self.best_shape()
        if best is None:
            return None
        rows = []
        for row in self.front_records():
            metric = row["verified_metric"] if row["verified_metric"] is not None else row["predicted_metric"]
            latency = row["verified_latency_ms"] if row["verified_latency_ms"] is not None else row["predicted_latency_ms"]
            rows.append({"shape": row["shape"], "metric": metric, "latency_ms": latency, "usable": row["usable"],
                         "verified": row["verified_metric"] is not None})
        chosen = next(r for r in rows if r["shape"] == str(best))
        budget = self.result.budget_ms
        others = sorted((r for r in rows if r["shape"] != chosen["shape"] and r["usable"] and r["latency_ms"] <= budget),
                        key=lambda r: (r["metric"], r["latency_ms"]))
        out = {**chosen, "budget_ms": budget, "budget_margin_ms": budget - chosen["latency_ms"],
               "budget_margin_pct": 100 * (budget - chosen["latency_ms"]) / budget, "alternatives": others[:3]}
        ref = self.reference
        if ref is not None:  # like against like: both latencies from the table, both metrics measured if possible
            predicted = next(r for r in self.result.front if r.shape == best).latency_ms
            out.update(full_model=ref["shape"], speedup_vs_full=ref["latency_ms"] / predicted,
                       speedup_basis=f"{COSTS[self.cost_unit]['noun']} table, both shapes",
                       metric_change_vs_full_pct=100 * (chosen["metric"] / ref["metric"] - 1))
        return out

    def to_dict(self) -> dict:
        best = self.best_shape()
        key = COSTS[self.cost_unit]["key"]
        front, explanation = self.front_records(), self.explanation()
        if key != "ms":  # an energy search: its cost keys say so
            front, explanation = _energy_keys(front, self.cost_unit), _energy_keys(explanation, self.cost_unit)
        return {"settings": self.settings, f"budget_{key}": self.result.budget_ms, "budget_unit": self.cost_unit,
                "budget_warning": self.budget_warning,
                "memory_budget_mb": self.result.memory_budget_mb, "method": self.result.method,
                "trials": self.result.trials, "shapes_seen": len(self.result.points),
                "real_metric_evaluations": self.real_evaluations, "predictor": self.predictor.to_dict(),
                "best": None if best is None else str(best),
                "best_rule": "most accurate usable shape within the budget, on verified numbers where measured",
                "max_metric": self.max_metric, "reference": self.reference, "explanation": explanation,
                "front": front,
                "seconds": self.seconds}


def cost_key(name: str, unit: str) -> str:
    """What a search in ``unit`` (a key of :data:`COSTS`) calls the output key ``name`` of a latency search: in
    mJ, ``latency_ms`` is ``energy_mj``, ``budget_ms`` ``budget_mj``, ``budget_margin_ms`` ``budget_margin_mj``
    and the full model's ``speedup_vs_full`` ``energy_ratio_vs_full``; other keys keep their names."""
    key = COSTS[unit]["key"]
    if key == "ms":
        return name
    names = {"budget_ms": f"budget_{key}", "budget_margin_ms": f"budget_margin_{key}",
             "speedup_vs_full": "energy_ratio_vs_full"}
    return names.get(name, name.replace("latency_ms", f"energy_{key}"))


def _energy_keys(value, unit: str):
    """``value`` (a record, a list of them or None) with every key named by :func:`cost_key`."""
    if isinstance(value, list):
        return [_energy_keys(v, unit) for v in value]
    if not isinstance(value, dict):
        return value
    return {cost_key(k, unit): _energy_keys(v, unit) for k, v in value.items()}


def run_job(space: SearchSpace, oracle: MetricOracle, latency_fn: Callable[[SubnetShape], float], *,
            budget_ms: float, predictor_path: Path | None = None, method: str = "hierarchical", trials: int = 120,
            storage: str | None = None, study_name: str = "amoeba-search", seed: int = 0,
            verify: str | bool = "decisive", verify_count: int = 4, verify_band: float | None = None,
            max_metric: float | str | None = None, measure_latency: Callable[[SubnetShape], float] | None = None,
            layers_for: Callable[[SubnetShape], list[int] | None] | None = None,
            settings: dict | None = None, progress: Progress | None = None,
            memory_fn: Callable[[SubnetShape], float] | None = None, memory_budget_mb: float | None = None,
            cost_unit: str = "ms", source_kind: str = "measured") -> JobResult:
    """Fit (or reuse) the accuracy predictor, search under ``budget_ms`` (and ``memory_budget_mb`` of
    ``memory_fn``, when given), verify the front for real.

    ``verify``: ``decisive`` (default) evaluates front shapes for real, most accurate first, until
    ``verify_count`` of them are usable and within the budget: the chosen shape and the alternatives nearest
    the budget, which are what decides the answer; ``all`` the whole front and every shape within the budget
    that the predictor puts within ``verify_band`` of it (default: twice the predictor's held-out error), and
    the front is then rebuilt from the measured metrics, so a shape the predictor underrated still makes it;
    ``none`` nothing (True and False mean all and none). ``max_metric``: the quality floor, a number or ``"<k>x"`` (k times the full model's
    metric); front shapes above it are marked unusable and never chosen. ``cost_unit``: what ``latency_fn``
    and ``budget_ms`` are in, ``ms`` or ``mJ`` (energy per token); ``source_kind`` (measured, estimate) words
    where the costs come from in the budget warning (``JobResult.budget_warning``).

    ``storage`` (an Optuna URL, a journal file path or a storage; None keeps everything in memory) holds the
    studies, and the real evaluations too: every worker running this job on the same storage claims shapes
    there (``search.storage.SharedEvaluations``), so N workers split the predictor's sample and the
    verification, and together run ``trials`` trials. The study is ``study_name`` plus the predictor's
    identity (a digest of its predictions over the space): another predictor never resumes a stale study.
    """
    if predictor_path is not None and Path(predictor_path).is_file():
        load_predictor(predictor_path)  # a bad file is one clear error before the storage (a journal file) exists
    store = open_storage(storage)
    # under torchrun the processes split the evaluations among themselves (distributed.shard_map)
    shared = store is not None and rank_world()[1] == 1 and getattr(oracle, "shared", False) is None
    if shared:
        oracle.shared = SharedEvaluations(store, evaluations_study_name(oracle.settings),
                                          attrs={"settings": json.dumps(oracle.settings, sort_keys=True, default=str)})
    try:
        return _run_job(space, oracle, latency_fn, budget_ms=budget_ms, predictor_path=predictor_path,
                        method=method, trials=trials, storage=store, study_name=study_name, seed=seed,
                        verify=verify, verify_count=verify_count, verify_band=verify_band, max_metric=max_metric,
                        measure_latency=measure_latency, layers_for=layers_for, settings=settings,
                        progress=progress, memory_fn=memory_fn, memory_budget_mb=memory_budget_mb,
                        cost_unit=cost_unit, source_kind=source_kind, storage_name=describe_storage(storage))
    finally:
        if shared:
            oracle.shared = None


def predictor_digest(predictor: Predictor, space: SearchSpace) -> str:
    """What the search sees of ``predictor``: its predictions over ``space`` (6 significant digits), hashed."""
    values = [f"{float(v):.6g}" for v in predictor.predict(list(space))]
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:8]


def _run_job(space, oracle, latency_fn, *, budget_ms, predictor_path, method, trials, storage, study_name, seed,
             verify, verify_count, verify_band, max_metric, measure_latency, layers_for, settings, progress, memory_fn,
             memory_budget_mb, cost_unit, source_kind, storage_name) -> JobResult:
    if cost_unit not in COSTS:
        raise InputError(f"cost_unit must be one of {', '.join(COSTS)}, got {cost_unit!r}")
    flag = COSTS[cost_unit]["flag"]
    mode = {True: "all", False: "none"}.get(verify, verify)
    if mode not in VERIFY_MODES:
        raise InputError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    seconds: dict[str, float] = {}
    latencies = {s: float(latency_fn(s)) for s in space}
    fastest = min(latencies, key=latencies.get)
    if latencies[fastest] > budget_ms:
        raise BudgetError(f"no shape meets {budget_ms:g} {cost_unit}: the fastest, {fastest}, is predicted at "
                          f"{latencies[fastest]:.1f} {cost_unit}; raise {flag} or use a faster flow")
    slack = budget_slack(latencies, budget_ms, unit=cost_unit, source_kind=source_kind)
    memory = {s: float(memory_fn(s)) for s in space} if memory_fn is not None else None
    if memory is not None:
        smallest = min(memory, key=memory.get)
        if memory[smallest] > memory_budget_mb:
            raise BudgetError(f"no shape fits {memory_budget_mb:g} MB: the smallest, {smallest}, needs "
                              f"{memory[smallest]:.0f} MB; raise --memory-budget-mb")
        if not any(latencies[s] <= budget_ms and memory[s] <= memory_budget_mb for s in space):
            raise BudgetError(f"no shape meets both {budget_ms:g} {cost_unit} and {memory_budget_mb:g} MB; raise a budget")
    start = time.perf_counter()
    before = oracle.evaluations
    predictor, report = fit_or_load_predictor(space, oracle, predictor_path, seed=seed, progress=progress)
    seconds["predictor"] = time.perf_counter() - start
    logger.info("predictor stage done: %d real evaluations, %.1f s", oracle.evaluations - before,
                seconds["predictor"])

    start = time.perf_counter()
    study_name = f"{study_name}-p{predictor_digest(predictor, space)}"
    metric_names = ["metric", "energy_mj" if cost_unit == "mJ" else "latency_ms"]
    study_attrs = {**{k: (settings or {}).get(k) for k in ("model", "device", "flow", "table", "strategy", "adapter",
                                                           "objective", "metric")},
                   "budget": f"{budget_ms:g} {cost_unit}", "predictor": (settings or {}).get("predictor"),
                   "predictor_kind": predictor.kind}
    # one study (in one database) under torchrun: rank 0 searches, every process gets the front
    result = from_rank0(lambda: search(
        space, predictor.predict, lambda shapes: np.array([latencies[s] for s in shapes]),
        budget_ms=budget_ms, method=method, trials=trials, storage=storage, study_name=study_name, seed=seed,
        memory_budget_mb=memory_budget_mb, metric_names=metric_names, study_attrs=study_attrs,
        memory_fn=None if memory is None else (lambda shapes: np.array([memory[s] for s in shapes]))))
    seconds["search"] = time.perf_counter() - start
    logger.info("search stage done: study %s, %d trials, front of %d, %.1f s", study_name, result.trials,
                len(result.front), seconds["search"])

    start = time.perf_counter()
    rank, world = rank_world()
    largest = space.largest()
    reference = {"shape": str(largest), "latency_ms": latencies[largest], "latency_source": (settings or {}).get("latency_source", "latency table")}
    if mode == "none":
        reference.update(metric=float(predictor.predict([largest])[0]), metric_source="accuracy predictor")
    else:
        reference.update(metric=float(oracle([largest])[0]),
                         metric_source=f"measured ({oracle.settings.get('metric')} on the supernet)")
    logger.info("full model %s: metric %.4g (%s), %.1f %s", largest, reference["metric"],
                "predicted" if mode == "none" else "measured", reference["latency_ms"], cost_unit)
    floor = quality_floor(max_metric, reference["metric"])
    order = sorted(result.front, key=lambda p: (p.metric, p.latency_ms))  # most accurate first
    band, near = None, []
    if mode == "all":
        band = verify_band if verify_band is not None else min(0.25, max(0.02, 2 * report.holdout_mare))
        near = near_front(space, predictor, latencies, result, band, memory)
        logger.info("verifying %d front shapes and %d more within %.1f%% of the predicted front", len(order),
                    len(near), 100 * band)
        order += near
    if mode != "none" and (world > 1 or getattr(oracle, "shared", None) is not None):  # split over the workers
        oracle([p.shape for p in (order if mode == "all" else order[:verify_count])])
    verified, decisive = [], 0
    for point in order if mode != "none" else []:
        if mode == "decisive" and decisive >= verify_count:
            break
        if progress:
            progress("verifying the front", len(verified) + 1, len(order) if mode == "all" else verify_count)
        shape_start = time.perf_counter()
        record = {"shape": str(point.shape), "metric": float(oracle([point.shape])[0]),
                  "metric_source": f"measured ({oracle.settings.get('metric')} on the supernet)"}
        if point.shape in oracle.details:
            record["details"] = oracle.details[point.shape]
        if measure_latency is not None and rank == 0:  # one process times, so none disturbs another
            record["latency_ms"] = float(measure_latency(point.shape))
            record["latency_source"] = "measured now"
        verified.append(record)
        usable = floor is None or record["metric"] <= floor
        decisive += usable and record.get("latency_ms", point.latency_ms) <= budget_ms
        logger.info("verified %s: metric %.4g (predicted %.4g), %.1f %s (%s)%s, %.1f s", point.shape,
                    record["metric"], point.metric, record.get("latency_ms", point.latency_ms), cost_unit,
                    "measured now" if "latency_ms" in record else "predicted",
                    "" if usable else ", above the quality floor", time.perf_counter() - shape_start)
    if progress and mode == "decisive":
        progress("verifying the front", verify_count, verify_count)
    seconds["verify"] = time.perf_counter() - start
    if mode == "all":
        result = _front_from_verified(result, order, verified)
    if mode != "none":
        logger.info("verification done (%s): %d front shapes measured, %.1f s", mode, len(verified), seconds["verify"])
    layers = {str(p.shape): layers_for(p.shape) for p in result.front} if layers_for else {}
    settings = {**(settings or {}), "study": study_name, "storage": storage_name, "verify": mode,
                **({"verify_count": verify_count} if mode == "decisive" else {}),
                **({"verify_band": band, "verified_near_front": len(near),
                    "front_from": "measured metrics of the front and of the shapes near it"} if mode == "all" else {}),
                "max_metric_rule": None if max_metric is None else str(max_metric)}
    return JobResult(result, report, verified, seconds, settings, oracle.evaluations - before, layers,
                     reference, floor, slack, cost_unit)


def near_front(space: SearchSpace, predictor: Predictor, latencies: dict, result: SearchResult, band: float,
               memory: dict | None = None) -> list[Point]:
    """Shapes within the budget, off the predicted front, that the predictor puts within ``band`` (relative) of
    it: no front shape at most as slow is better by more than that margin. The predictor's error could hide a
    front shape among them, so ``verify="all"`` measures them too."""
    on_front = {p.shape for p in result.front}
    shapes = [s for s in space if s not in on_front and latencies[s] <= result.budget_ms
              and (memory is None or result.memory_budget_mb is None or memory[s] <= result.memory_budget_mb)]
    if not shapes or not result.front:
        return []
    predicted = predictor.predict(shapes)
    front = sorted(result.front, key=lambda p: p.latency_ms)
    near = []
    for shape, metric in zip(shapes, predicted):
        best = min((p.metric for p in front if p.latency_ms <= latencies[shape]), default=float("inf"))
        if metric <= best * (1 + band):
            near.append(Point(shape, float(metric), latencies[shape],
                              None if memory is None else memory[shape]))
    return sorted(near, key=lambda p: (p.metric, p.latency_ms))


def _front_from_verified(result: SearchResult, candidates: list[Point], verified: list[dict]) -> SearchResult:
    """``result`` with its front rebuilt from the measured metrics (and latencies, where measured) of the
    verified ``candidates``; the front's points keep their predicted metrics, and every candidate joins
    ``points``."""
    measured = {v["shape"]: v for v in verified}
    real = [Point(p.shape, measured[str(p.shape)]["metric"], measured[str(p.shape)].get("latency_ms", p.latency_ms),
                  p.memory_mb) for p in candidates if str(p.shape) in measured]
    kept = {p.shape for p in feasible_front(real, result.budget_ms, result.memory_budget_mb)}
    if not kept:
        return result
    seen = {p.shape for p in result.points}
    points = result.points + [p for p in candidates if p.shape not in seen]
    front = sorted((p for p in candidates if p.shape in kept), key=lambda p: p.latency_ms)
    return replace(result, points=points, front=front)


def write_outputs(job: JobResult, out_dir: str | Path, *, title: str = "") -> dict[str, Path]:
    """front.json, front.csv, points.csv and pareto.png in ``out_dir``; returns their paths."""
    import pandas as pd

    from amoeba_search.paths import atomic_write_text
    from amoeba_search.plots import pareto_plot_info, render_pareto

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"front_json": out / "front.json", "front_csv": out / "front.csv", "points_csv": out / "points.csv",
             "plot": out / "pareto.png"}
    atomic_write_text(paths["front_json"], json.dumps(job.to_dict(), indent=2, default=str))
    atomic_write_text(paths["front_csv"], pd.DataFrame(job.front_records()).to_csv(index=False))
    atomic_write_text(paths["points_csv"], pd.DataFrame([p.to_dict() for p in job.result.points]).to_csv(index=False))
    best = job.best_shape()
    info = pareto_plot_info(job.result.points, job.result.front, job.result.budget_ms, verified=job.verified,
                            title=title, metric_name=job.settings.get("objective_label", "perplexity"),
                            latency_name=job.settings.get("latency_label", "latency (ms)"),
                            chosen=None if best is None else str(best), reference=job.reference,
                            max_metric=job.max_metric, latency_source=job.settings.get("latency_source"))
    render_pareto(info, paths["plot"])
    return paths
