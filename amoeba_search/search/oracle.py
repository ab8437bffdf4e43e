"""Real metric evaluations of shapes on the supernet, remembered on disk so no shape is evaluated twice.

The cache file is JSON: the settings that make a number comparable (model fingerprint, strategy, data) and
one entry per evaluated shape, rewritten atomically after each evaluation, so a killed run resumes.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from amoeba_search.paths import atomic_write_text
from amoeba_search.shapes import SearchSpace, SubnetShape


class MetricOracle:
    """``oracle(shapes) -> np.ndarray`` of real metrics; ``evaluate_one`` does the actual work."""

    def __init__(self, evaluate_one: Callable[[SubnetShape], float], settings: dict[str, Any],
                 cache_path: str | Path | None = None):
        self.evaluate_one, self.settings = evaluate_one, settings
        self.cache_path = None if cache_path is None else Path(cache_path)
        self.values: dict[SubnetShape, float] = {}
        self.seconds: dict[SubnetShape, float] = {}
        self.evaluations = 0  # real evaluations done by this object (cache hits excluded)
        if self.cache_path is not None and self.cache_path.is_file():
            data = json.loads(self.cache_path.read_text())
            if data.get("settings") == settings:
                self.values = {SubnetShape.parse(k): v for k, v in data["metrics"].items()}
                self.seconds = {SubnetShape.parse(k): v for k, v in data.get("seconds", {}).items()}

    def __call__(self, shapes: Sequence[SubnetShape], progress: Callable[[SubnetShape], None] | None = None) -> np.ndarray:
        for shape in shapes:
            if shape not in self.values:
                start = time.perf_counter()
                self.values[shape] = float(self.evaluate_one(shape))
                self.seconds[shape] = time.perf_counter() - start
                self.evaluations += 1
                self._save()
            if progress is not None:
                progress(shape)
        return np.array([self.values[s] for s in shapes])

    def _save(self) -> None:
        if self.cache_path is not None:
            data = {"settings": self.settings, "metrics": {str(k): v for k, v in sorted(self.values.items())},
                    "seconds": {str(k): round(v, 3) for k, v in sorted(self.seconds.items())}}
            atomic_write_text(self.cache_path, json.dumps(data, indent=1))


def perplexity_oracle(loaded, blocks, *, data_settings: dict, cache_path=None, batch_size: int = 4) -> MetricOracle:
    """Held-out perplexity of shapes of ``loaded`` (a ``LoadedSupernet``) on ``blocks``."""
    from amoeba_search.evaluation.perplexity import perplexity

    def evaluate_one(shape: SubnetShape) -> float:
        loaded.activate(shape)
        return perplexity(loaded.supernet, blocks, batch_size=batch_size).ppl

    settings = {"metric": "ppl", "model": loaded.fingerprint, "strategy": loaded.strategy_path, **data_settings}
    if loaded.adapter is not None:
        settings["adapter"] = loaded.adapter.identity()
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
