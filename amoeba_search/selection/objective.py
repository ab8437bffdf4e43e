"""What depth selection optimizes: the metric of a network that keeps some layers.

Every network the depth methods score keeps all layers below some layer ``below`` and then a *tail* of
higher layers. ``evaluate(below, tails)`` scores several such networks that share ``below``, which is what
makes caching possible:

- ``cache="none"``: each network runs from scratch through the model's own forward (the reference way);
- ``cache="row"``: the hidden state entering layer ``below`` is computed once and shared, only tails run;
- ``cache="tree"``: tails are also merged into a prefix tree, so a layer sequence that several tails start
  with runs once (depth-first, one batch at a time, so memory stays at one path of hidden states).

The prefix states come from one full pass over the calibration set that stores the input of every layer
(or of every k-th layer, recomputing the rest, when they would not fit in ``memory_limit`` bytes).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Protocol, Sequence

import torch

from amoeba_search.errors import InputError
from amoeba_search.selection.calibration import CalibrationMetric
from amoeba_search.selection.layer_runner import LayerRunner
from amoeba_search.shapes import SubnetShape

CACHE_MODES = ("tree", "row", "none")

logger = logging.getLogger(__name__)


class DepthObjective(Protocol):
    num_layers: int
    higher_is_better: bool
    evaluations: int

    def full(self) -> float:
        """The metric of the whole network."""

    def evaluate(self, below: int, tails: Sequence[Sequence[int]]) -> list[float]:
        """The metric of each network ``range(below) + tail``."""


class FunctionObjective:
    """A metric given as a plain function of the kept layer indices (for tests and toy problems)."""

    def __init__(self, num_layers: int, fn: Callable[[tuple[int, ...]], float], *, higher_is_better: bool = False):
        self.num_layers, self.fn, self.higher_is_better = num_layers, fn, higher_is_better
        self.evaluations = 0

    def full(self) -> float:
        self.evaluations += 1
        return float(self.fn(tuple(range(self.num_layers))))

    def evaluate(self, below, tails):
        self.evaluations += len(tails)
        return [float(self.fn(tuple(range(below)) + tuple(tail))) for tail in tails]


class _Node:
    __slots__ = ("children", "ends")

    def __init__(self):
        self.children: dict[int, _Node] = {}
        self.ends: list[int] = []


def prefix_tree(tails: Sequence[Sequence[int]]) -> tuple[_Node, int]:
    """A trie of ``tails`` (each ends at the node where it stops) and its number of edges."""
    root, edges = _Node(), 0
    for c, tail in enumerate(tails):
        node = root
        for layer in tail:
            if layer not in node.children:
                node.children[layer] = _Node()
                edges += 1
            node = node.children[layer]
        node.ends.append(c)
    return root, edges


class ModelObjective:
    """The metric of subnets of ``supernet`` (at full width) on a calibration metric."""

    def __init__(self, supernet, metric, *, cache: str = "tree", memory_limit: int = 4 << 30):
        if cache not in CACHE_MODES:
            raise InputError(f"cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
        structured = isinstance(metric, CalibrationMetric)
        if cache != "none" and not structured:
            raise InputError("prefix caching needs a CalibrationMetric (batches + batch_stats); "
                             "use cache='none' for a plain callable metric")
        self.supernet, self.metric, self.cache = supernet, metric, cache
        self.num_layers = supernet.dims.num_layers
        self.higher_is_better = bool(getattr(metric, "higher_is_better", False))
        self.memory_limit = memory_limit
        self.runner = LayerRunner(supernet)
        self.evaluations = 0
        self._none_layer_calls = self._none_head_calls = 0
        self._batches = metric.batches() if structured else []
        self._stored: dict[int, list[torch.Tensor]] | None = None
        self._last: tuple[int, list[torch.Tensor]] | None = None
        self._full: float | None = None
        supernet.set_active(supernet.full_shape())

    # -- accounting ----------------------------------------------------------------------------------

    def counters(self) -> dict:
        """Networks scored, and layer / head passes over the whole calibration set (incl. the prefix pass)."""
        n = max(1, len(self._batches))
        return {"evaluations": self.evaluations,
                "layer_passes": (self.runner.layer_calls + self._none_layer_calls) / n,
                "head_passes": (self.runner.head_calls + self._none_head_calls) / n}

    # -- prefix states -------------------------------------------------------------------------------

    def _store_prefix(self) -> None:
        """One full pass: keep the input of every ``stride``-th layer per batch, and score the full network."""
        started = time.perf_counter()
        n = self.num_layers
        per_layer = (sum(b.numel() for b in self._batches) * self.supernet.dims.hidden_size
                     * next(self.supernet.model.parameters()).element_size())
        self.stride = max(1, math.ceil(n * per_layer / self.memory_limit))
        if self.stride > 1:
            logger.info("prefix cache: every layer's input would need %.0f MiB, over the %.0f MiB limit; storing "
                        "every %d-th layer's and recomputing the rest", n * per_layer / 2 ** 20,
                        self.memory_limit / 2 ** 20, self.stride)
        stored = {i: [] for i in range(0, n, self.stride)}
        stats = []
        for b, ids in enumerate(self._batches):
            hidden = self.runner.embed(ids)
            for i in range(n):
                if i in stored:
                    stored[i].append(hidden)
                hidden = self.runner.layer(i, hidden)
            stats.append(self.runner.score(self.metric, b, hidden))
        self._stored = stored
        self._full = self.metric.finish(stats)
        logger.debug("prefix pass: %d batches, %d layer inputs stored, full network %.4g, %.1f s",
                     len(self._batches), len(stored), self._full, time.perf_counter() - started)

    def prefix(self, below: int) -> list[torch.Tensor]:
        """Per batch, the hidden state entering layer ``below`` when every lower layer is kept."""
        if self._stored is None:
            self._store_prefix()
        if below in self._stored:
            return self._stored[below]
        if self._last is not None and self._last[0] == below:
            return self._last[1]
        start = below - below % self.stride
        states = [self.runner.run(h, range(start, below)) for h in self._stored[start]]
        self._last = (below, states)
        return states

    # -- the objective -------------------------------------------------------------------------------

    def full(self) -> float:
        if self.cache == "none":
            self.evaluations += 1
            return self._score_forward(tuple(range(self.num_layers)))
        if self._full is None:
            self._store_prefix()
        self.evaluations += 1
        return self._full

    def evaluate(self, below: int, tails: Sequence[Sequence[int]]) -> list[float]:
        tails = [tuple(int(i) for i in t) for t in tails]
        for tail in tails:
            if any(i < below for i in tail) or list(tail) != sorted(set(tail)) or any(i >= self.num_layers for i in tail):
                raise InputError(f"tail {list(tail)} must be ascending layer indices in {below}..{self.num_layers - 1}")
        self.evaluations += len(tails)
        if not tails:
            return []
        if self.cache == "none":
            return [self._score_forward(tuple(range(below)) + tail) for tail in tails]
        states = self.prefix(below)
        stats: list[list[torch.Tensor]] = [[] for _ in tails]
        if self.cache == "row":
            for b, h0 in enumerate(states):
                for c, tail in enumerate(tails):
                    stats[c].append(self.runner.score(self.metric, b, self.runner.run(h0, tail)))
        else:
            root, _ = prefix_tree(tails)
            for b, h0 in enumerate(states):
                self._walk(root, h0, b, stats)
        return [self.metric.finish(s) for s in stats]

    def _walk(self, node: _Node, hidden: torch.Tensor, batch: int, stats) -> None:
        if node.ends:
            result = self.runner.score(self.metric, batch, hidden)
            for c in node.ends:
                stats[c].append(result)
        for layer in sorted(node.children):
            self._walk(node.children[layer], self.runner.layer(layer, hidden), batch, stats)

    def _score_forward(self, kept: tuple[int, ...]) -> float:
        if not kept:
            raise InputError("a network needs at least one layer")
        supernet = self.supernet
        supernet.set_active(SubnetShape(len(kept)), kept)
        try:
            with torch.inference_mode():
                value = float(self.metric(supernet))
        finally:
            supernet.set_active(supernet.full_shape())
        self._none_layer_calls += len(kept) * max(1, len(self._batches))
        self._none_head_calls += max(1, len(self._batches))
        return value
