"""Real metric evaluations of shapes on the supernet, remembered on disk so no shape is evaluated twice.

The cache file is JSON: the settings that make a number comparable (model fingerprint, strategy, data) and
one entry per evaluated shape, rewritten atomically after each evaluation, so a killed run resumes. Several
processes may share one file: each write reads the file again under a lock (``<file>.lock``) and merges, so
no process drops another's entries. Workers on several machines share evaluations through the Optuna
storage instead (``MetricOracle.shared``, see ``search/storage.py``).

Objectives (all lower is better, since the search minimizes): ``ppl``, held-out perplexity
(``perplexity_oracle``), or a local multiple-choice task's answer cross-entropy (``task_oracle``).
"""
from __future__ import annotations

import fcntl
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from amoeba_search.distributed import rank_world, shard_map
from amoeba_search.errors import InputError
from amoeba_search.paths import atomic_write_text
from amoeba_search.shapes import SearchSpace, SubnetShape

logger = logging.getLogger(__name__)


class MetricOracle:
    """``oracle(shapes) -> np.ndarray`` of real metrics; ``evaluate_one`` does the actual work.

    ``evaluate_one`` returns the metric, or ``(metric, details)`` with a dict of side numbers kept beside it.
    """

    def __init__(self, evaluate_one: Callable[[SubnetShape], float], settings: dict[str, Any],
                 cache_path: str | Path | None = None):
        self.evaluate_one, self.settings = evaluate_one, settings
        self.cache_path = None if cache_path is None else Path(cache_path)
        self.values: dict[SubnetShape, float] = {}
        self.seconds: dict[SubnetShape, float] = {}
        self.details: dict[SubnetShape, dict] = {}  # side numbers per shape (e.g. task accuracy), if any
        self.evaluations = 0  # real evaluations done by this object (cache hits excluded)
        # when set (run_job does, given a storage), shapes not known here are claimed, evaluated and shared
        # through it, so several workers split them (a ``search.storage.SharedEvaluations``)
        self.shared = None
        if self.cache_path is not None and (self.cache_path.is_file() or self.cache_path.is_dir()):
            self._read_cache(settings)

    def _read_cache(self, settings: dict[str, Any]) -> None:
        """The evaluations cached with the same settings; a broken cache file is a one-line ``ValueError``."""
        values, seconds, details = self._cached(settings, warn=True)
        self.values, self.seconds, self.details = values, seconds, details
        if values:
            logger.info("evaluation cache %s: %d shapes already evaluated", self.cache_path, len(values))

    def _cached(self, settings: dict[str, Any], *, warn: bool = False) -> tuple[dict, dict, dict]:
        """(metrics, seconds, details) in the cache file under ``settings``; empty for other settings (which
        ``warn`` reports: the next write replaces them)."""
        from amoeba_search.jsonfile import read_json

        fix = "delete it to evaluate again, or choose another --out"
        data = read_json(self.cache_path, what="evaluation cache", fix=fix)
        if data.get("settings") != settings:
            if warn:
                entries = data.get("metrics")
                logger.warning("evaluation cache %s was made with other settings (model, strategy, adapter or data); "
                               "its %d entries are ignored and will be replaced", self.cache_path,
                               len(entries) if isinstance(entries, dict) else 0)
            return {}, {}, {}
        try:
            return ({SubnetShape.parse(k): float(v) for k, v in data["metrics"].items()},
                    {SubnetShape.parse(k): float(v) for k, v in data.get("seconds", {}).items()},
                    {SubnetShape.parse(k): dict(v) for k, v in data.get("details", {}).items()})
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            what = f"no {err.args[0]!r} entry" if isinstance(err, KeyError) and err.args else str(err)
            raise InputError(f"evaluation cache {self.cache_path} is malformed ({what}); {fix}") from err

    def __call__(self, shapes: Sequence[SubnetShape], progress: Callable[[SubnetShape], None] | None = None) -> np.ndarray:
        """The metrics of ``shapes``. Under ``torchrun`` every process must call this with the same shapes: the
        shapes not known yet are split over the processes and every process gets all the metrics."""
        if logger.isEnabledFor(logging.DEBUG) and len(shapes):
            distinct = list(dict.fromkeys(shapes))
            hits = sum(s in self.values for s in distinct)
            logger.debug("evaluation cache: %d hits, %d misses of %d shapes", hits, len(distinct) - hits, len(distinct))
        if self.shared is not None:
            missing = [s for s in dict.fromkeys(shapes) if s not in self.values]
            if missing:
                for shape, (value, seconds, details, here) in self.shared.evaluate(missing, self._evaluate).items():
                    self._store(shape, value, seconds, details)
                    self.evaluations += here
                self._save()
        elif rank_world()[1] > 1:
            missing = [s for s in dict.fromkeys(shapes) if s not in self.values]
            for shape, result in zip(missing, shard_map(lambda part: [self._evaluate(s) for s in part], missing)):
                self._store(shape, *result)
            self.evaluations += len(missing)
            if missing:
                self._save()
        for shape in shapes:
            if shape not in self.values:
                self._store(shape, *self._evaluate(shape))
                self.evaluations += 1
                self._save()
            if progress is not None:
                progress(shape)
        return np.array([self.values[s] for s in shapes])

    def _evaluate(self, shape: SubnetShape) -> tuple[float, float, dict | None]:
        """(metric, seconds, details or None) of one real evaluation."""
        start = time.perf_counter()
        result = self.evaluate_one(shape)
        seconds = time.perf_counter() - start
        result, details = result if isinstance(result, tuple) else (result, None)
        logger.debug("evaluated %s: metric %.4g, %.2f s", shape, float(result), seconds)
        return float(result), seconds, details

    def _store(self, shape: SubnetShape, value: float, seconds: float, details: dict | None) -> None:
        self.values[shape], self.seconds[shape] = value, seconds
        if details is not None:
            self.details[shape] = details

    def _save(self) -> None:
        """Merge this object's evaluations into the cache file: read it again under an exclusive lock on a
        sidecar file, add what it lacks (and take what another process added), replace it atomically."""
        if self.cache_path is None or rank_world()[0] != 0:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.cache_path.with_name(self.cache_path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if self.cache_path.is_file():
                values, seconds, details = self._cached(self.settings)
                for shape, value in values.items():
                    if shape not in self.values:
                        self._store(shape, value, seconds.get(shape, 0.0), details.get(shape))
            data = {"settings": self.settings, "metrics": {str(k): v for k, v in sorted(self.values.items())},
                    "seconds": {str(k): round(v, 3) for k, v in sorted(self.seconds.items())}}
            if self.details:
                data["details"] = {str(k): v for k, v in sorted(self.details.items())}
            atomic_write_text(self.cache_path, json.dumps(data, indent=1))


def perplexity_oracle(loaded, blocks, *, data_settings: dict, cache_path=None, batch_size: int = 4) -> MetricOracle:
    """Held-out perplexity of shapes of ``loaded`` (a ``LoadedSupernet``) on ``blocks``."""
    from amoeba_search.evaluation.perplexity import perplexity

    def evaluate_one(shape: SubnetShape) -> float:
        loaded.activate(shape)
        return perplexity(loaded.supernet, blocks, batch_size=batch_size).ppl

    return MetricOracle(evaluate_one, {"metric": "ppl", **_supernet_identity(loaded), **data_settings}, cache_path)


def _supernet_identity(loaded) -> dict:
    """What makes numbers of ``loaded``'s subnets comparable: model, strategy and adapter, by content (a
    strategy moved to another checkout is still the same strategy)."""
    identity = {"model": loaded.fingerprint, "strategy": None if loaded.strategy is None else loaded.strategy.digest()}
    if loaded.adapter is not None:
        identity["adapter"] = loaded.adapter.identity()
    return identity


def check_objective(spec: str, *, task_dir=None) -> Path | None:
    """None for ``ppl``, else the JSONL file of local task ``spec`` (a name or a path).

    An unknown name raises ``ValueError`` (one line, with close matches); a BIG-bench task that is not
    prepared yet raises ``MissingDependency`` saying how to prepare it.
    """
    if spec == "ppl":
        return None
    from amoeba_search.evaluation import local_tasks

    path = local_tasks.task_file(spec, task_dir)
    if path is not None:
        return path
    try:
        local_tasks.task_items(spec, directory=task_dir)  # raises MissingDependency for an unprepared task
    except KeyError:
        pass
    known = local_tasks.local_task_names(task_dir)
    hint = local_tasks.did_you_mean(spec, ["ppl", *known])
    if not known:
        hint += "; no local tasks are prepared (run `amoeba-eval --prepare-tasks`)"
    raise InputError(f"unknown objective {spec!r}; {hint} (an objective is ppl, a local task name or a .jsonl "
                     f"task file)")


def task_oracle(loaded, task: str, *, limit: int | None = 100, task_dir=None, cache_path=None,
                batch_size: int = 8) -> MetricOracle:
    """Multiple-choice task ``task`` (a local task name or .jsonl path) on shapes of ``loaded``.

    The metric is the task's *answer cross-entropy*: per item, ``-log softmax(choice log-likelihoods)[answer]``,
    averaged over the first ``limit`` items (lower is better; the formula of selection's ``mc-loss``).
    Accuracy on a hundred items moves in steps of 0.01 and ties across many shapes, so a predictor fit on it
    cannot rank them; the cross-entropy is continuous, always above zero (the predictor's relative error
    divides by it) and falls as the answer's share of the choices' probability rises. The accuracy, from the
    same forward pass, is kept beside it (``details``: ``accuracy``) and shown with the verified front.
    Choices are scored as lm-eval scores local tasks: ``context + " " + choice``, summed (not per-token)
    log-likelihoods, so ``accuracy`` matches ``amoeba-eval``'s ``acc`` for a subnet.
    """
    from amoeba_search.data.multiple_choice import read_task_file
    from amoeba_search.evaluation.local_tasks import file_sha256, task_name
    from amoeba_search.selection.calibration import MultipleChoiceMetric, lm_eval_items

    path = check_objective(task, task_dir=task_dir)
    if path is None:
        raise InputError("task_oracle needs a task; use perplexity_oracle for ppl")
    if limit is not None and limit < 1:
        raise InputError(f"task limit must be positive, got {limit}")
    items = read_task_file(path)[:limit]
    metric = MultipleChoiceMetric(lm_eval_items(items), loaded.tokenizer, kind="loss", batch_size=batch_size)

    def evaluate_one(shape: SubnetShape):
        loaded.activate(shape)
        accuracy, loss = metric.accuracy_and_loss(metric.statistics(loaded.supernet))
        return loss, {"accuracy": accuracy}

    name = task_name(task)
    settings = {"metric": f"task-loss:{name}", **_supernet_identity(loaded), "task": name,
                "task_sha256": file_sha256(path), "limit": limit, "items": len(items),
                "scoring": "answer cross-entropy among choices, summed log-likelihood of ' ' + choice"}
    return MetricOracle(evaluate_one, settings, cache_path)


def design_sample(space: SearchSpace, n: int, *, seed: int = 0, exclude: Sequence[SubnetShape] = (),
                  extremes: bool = True) -> list[SubnetShape]:
    """``n`` shapes spread over the space: its two extremes, then a stratified pass over depths and widths.

    Each depth, FFN ratio and heads ratio appears about equally often (a Latin-hypercube-like design), so a
    predictor sees the whole range of every feature even from few points.
    """
    rng = random.Random(seed)
    chosen: list[SubnetShape] = []
    excluded = set(exclude)
    for shape in (space.largest(), space.smallest()) if extremes else ():
        if shape not in excluded and len(chosen) < n:
            chosen.append(shape)
    taken = set(chosen) | excluded
    cycles = [list(space.depths), list(space.ffn_ratios), list(space.heads_ratios)]
    pools = [[] for _ in cycles]
    attempts = 0
    while len(chosen) < min(n, len(space) - len(excluded)) and attempts < 100 * n:
        attempts += 1
        parts = []
        for pool, values in zip(pools, cycles):
            if not pool:
                pool.extend(rng.sample(values, len(values)))
            parts.append(pool.pop())
        shape = SubnetShape(*parts)
        if shape not in taken:
            chosen.append(shape)
            taken.add(shape)
    return chosen
