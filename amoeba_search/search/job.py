"""The whole search as one job: accuracy predictor (fit or reused) × latency table → front → verification.

The CLI (``amoeba-search``) and the benchmark both call ``run_job``; it never prints, it reports progress
through a callback and returns everything it found.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.stats import spearmanr

from amoeba_search.distributed import from_rank0, rank_world
from amoeba_search.quality import quality_floor
from amoeba_search.search.oracle import MetricOracle, design_sample
from amoeba_search.search.predictors import Predictor, fit_best, load_predictor, save_predictor
from amoeba_search.search.search import SearchResult, search
from amoeba_search.shapes import SearchSpace, SubnetShape

Progress = Callable[[str, int, int], None]  # (stage, done, total)
VERIFY_MODES = ("decisive", "all", "none")


class BudgetError(ValueError):
    """No shape of the space can meet the latency budget."""


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
        return predictor, PredictorReport(**{**data["report"], "reused": True})
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
                       speedup_basis="latency table, both shapes",
                       metric_change_vs_full_pct=100 * (chosen["metric"] / ref["metric"] - 1))
        return out

    def to_dict(self) -> dict:
        best = self.best_shape()
        return {"settings": self.settings, "budget_ms": self.result.budget_ms,
                "memory_budget_mb": self.result.memory_budget_mb, "method": self.result.method,
                "trials": self.result.trials, "shapes_seen": len(self.result.points),
                "real_metric_evaluations": self.real_evaluations, "predictor": self.predictor.to_dict(),
                "best": None if best is None else str(best),
                "best_rule": "most accurate usable shape within the budget, on verified numbers where measured",
                "max_metric": self.max_metric, "reference": self.reference, "explanation": self.explanation(),
                "front": self.front_records(),
                "seconds": self.seconds}


def run_job(space: SearchSpace, oracle: MetricOracle, latency_fn: Callable[[SubnetShape], float], *,
            budget_ms: float, predictor_path: Path | None = None, method: str = "hierarchical", trials: int = 120,
            storage: str | None = None, study_name: str = "amoeba-search", seed: int = 0,
            verify: str | bool = "decisive", verify_count: int = 4, max_metric: float | str | None = None,
            measure_latency: Callable[[SubnetShape], float] | None = None,
            layers_for: Callable[[SubnetShape], list[int] | None] | None = None,
            settings: dict | None = None, progress: Progress | None = None,
            memory_fn: Callable[[SubnetShape], float] | None = None, memory_budget_mb: float | None = None) -> JobResult:
    """Fit (or reuse) the accuracy predictor, search under ``budget_ms`` (and ``memory_budget_mb`` of
    ``memory_fn``, when given), verify the front for real.

    ``verify``: ``decisive`` (default) evaluates front shapes for real, most accurate first, until
    ``verify_count`` of them are usable and within the budget: the chosen shape and the alternatives nearest
    the budget, which are what decides the answer; ``all`` the whole front; ``none`` nothing (True and False
    mean all and none). ``max_metric``: the quality floor, a number or ``"<k>x"`` (k times the full model's
    metric); front shapes above it are marked unusable and never chosen.
    """
    mode = {True: "all", False: "none"}.get(verify, verify)
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    seconds: dict[str, float] = {}
    latencies = {s: float(latency_fn(s)) for s in space}
    fastest = min(latencies, key=latencies.get)
    if latencies[fastest] > budget_ms:
        raise BudgetError(f"no shape meets {budget_ms:g} ms: the fastest, {fastest}, is predicted at "
                          f"{latencies[fastest]:.1f} ms; raise --budget-ms or use a faster flow")
    memory = {s: float(memory_fn(s)) for s in space} if memory_fn is not None else None
    if memory is not None:
        smallest = min(memory, key=memory.get)
        if memory[smallest] > memory_budget_mb:
            raise BudgetError(f"no shape fits {memory_budget_mb:g} MB: the smallest, {smallest}, needs "
                              f"{memory[smallest]:.0f} MB; raise --memory-budget-mb")
        if not any(latencies[s] <= budget_ms and memory[s] <= memory_budget_mb for s in space):
            raise BudgetError(f"no shape meets both {budget_ms:g} ms and {memory_budget_mb:g} MB; raise a budget")
    start = time.perf_counter()
    before = oracle.evaluations
    predictor, report = fit_or_load_predictor(space, oracle, predictor_path, seed=seed, progress=progress)
    seconds["predictor"] = time.perf_counter() - start

    start = time.perf_counter()
    # one study (in one database) under torchrun: rank 0 searches, every process gets the front
    result = from_rank0(lambda: search(
        space, predictor.predict, lambda shapes: np.array([latencies[s] for s in shapes]),
        budget_ms=budget_ms, method=method, trials=trials, storage=storage, study_name=study_name, seed=seed,
        memory_budget_mb=memory_budget_mb,
        memory_fn=None if memory is None else (lambda shapes: np.array([memory[s] for s in shapes]))))
    seconds["search"] = time.perf_counter() - start

    start = time.perf_counter()
    rank, world = rank_world()
    largest = space.largest()
    reference = {"shape": str(largest), "latency_ms": latencies[largest], "latency_source": "latency table"}
    if mode == "none":
        reference.update(metric=float(predictor.predict([largest])[0]), metric_source="accuracy predictor")
    else:
        reference.update(metric=float(oracle([largest])[0]),
                         metric_source=f"measured ({oracle.settings.get('metric')} on the supernet)")
    floor = quality_floor(max_metric, reference["metric"])
    order = sorted(result.front, key=lambda p: (p.metric, p.latency_ms))  # most accurate first
    if mode != "none" and world > 1:  # the likely evaluations, split over the processes
        oracle([p.shape for p in (order if mode == "all" else order[:verify_count])])
    verified, decisive = [], 0
    for point in order if mode != "none" else []:
        if mode == "decisive" and decisive >= verify_count:
            break
        if progress:
            progress("verifying the front", len(verified) + 1, len(order) if mode == "all" else verify_count)
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
    if progress and mode == "decisive":
        progress("verifying the front", verify_count, verify_count)
    seconds["verify"] = time.perf_counter() - start
    layers = {str(p.shape): layers_for(p.shape) for p in result.front} if layers_for else {}
    settings = {**(settings or {}), "verify": mode, **({"verify_count": verify_count} if mode == "decisive" else {}),
                "max_metric_rule": None if max_metric is None else str(max_metric)}
    return JobResult(result, report, verified, seconds, settings, oracle.evaluations - before, layers,
                     reference, floor)


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
                            max_metric=job.max_metric)
    render_pareto(info, paths["plot"])
    return paths
