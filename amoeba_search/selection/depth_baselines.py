"""Depth baselines: other ways to pick which layers a depth keeps, compared with the DP on the same data.

- ``shortgpt``: ShortGPT's block influence ``BI_l = 1 - cos(h_l, h_{l+1})`` (a layer's input vs output hidden
  state, mean over calibration tokens); remove the layers of lowest influence.
- ``angular``: Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers": for ``n`` layers to
  remove, the contiguous block starting at the ``l`` that minimises ``arccos(cos(h_l, h_{l+n})) / pi``. The
  paper measures the last token of each sequence; here the distance is averaged over every calibration token.
- ``ppl-rank``: Shortened LLaMA's one-shot ranking: remove each single layer, score the metric, remove the
  least harmful ``k``.
- ``drop-last``: keep the first layers (below any ``keep_last`` top layers).

Each returns ``{depth: kept layer indices}`` for every depth from ``min_depth`` to ``N``.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import torch
from tqdm.auto import tqdm

from amoeba_search.selection.depth_dp import check_depth_range
from amoeba_search.selection.layer_runner import LayerRunner

BASELINES = ("shortgpt", "angular", "ppl-rank", "drop-last")


def _removable(num_layers: int, keep_last: int) -> list[int]:
    return list(range(num_layers - keep_last))


def _remove_ranked(num_layers: int, ranked: Sequence[int], min_depth: int) -> dict[int, list[int]]:
    out = {}
    for depth in range(min_depth, num_layers + 1):
        gone = set(ranked[:num_layers - depth])
        out[depth] = [i for i in range(num_layers) if i not in gone]
    return out


@torch.inference_mode()
def hidden_similarity(supernet, batches: Sequence[torch.Tensor], *, progress: bool = False) -> dict[str, torch.Tensor]:
    """Mean cosine and mean angular distance (arccos/pi) between residual states ``h_i`` and ``h_j``.

    ``h_i`` is the hidden state entering layer ``i`` (``h_N`` leaves the last layer, before the final norm);
    both matrices are ``(N+1, N+1)``, averaged over every calibration token.
    """
    supernet.set_active(supernet.full_shape())
    runner = LayerRunner(supernet)
    n = supernet.dims.num_layers
    cos_sum = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    ang_sum = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    tokens = 0
    for ids in tqdm(batches, desc="hidden states", unit="batch", disable=not progress):
        hidden = runner.embed(ids)
        states = [hidden]
        for i in range(n):
            hidden = runner.layer(i, hidden)
            states.append(hidden)
        unit = torch.stack([torch.nn.functional.normalize(s.double(), dim=-1) for s in states])  # (N+1, B, T, C)
        flat = unit.reshape(n + 1, -1, unit.shape[-1])                                            # (N+1, BT, C)
        for i in range(n + 1):
            cos = torch.einsum("tc,jtc->jt", flat[i], flat).clamp(-1, 1)                          # (N+1, BT)
            cos_sum[i] += cos.sum(1)
            ang_sum[i] += (torch.arccos(cos) / math.pi).sum(1)
        tokens += flat.shape[1]
    return {"cos": cos_sum / tokens, "angular": ang_sum / tokens}


def shortgpt_layers(cos: torch.Tensor, *, min_depth: int, keep_last: int = 0) -> dict[int, list[int]]:
    """Remove the layers of lowest block influence ``1 - cos(h_l, h_{l+1})``."""
    n = cos.shape[0] - 1
    check_depth_range(n, min_depth, keep_last)
    influence = {l: 1.0 - float(cos[l, l + 1]) for l in _removable(n, keep_last)}
    ranked = sorted(influence, key=lambda l: (influence[l], l))
    return _remove_ranked(n, ranked, min_depth)


def angular_layers(angular: torch.Tensor, *, min_depth: int, keep_last: int = 0) -> dict[int, list[int]]:
    """For each depth, remove the contiguous block whose ends are closest in angular distance."""
    n = angular.shape[0] - 1
    check_depth_range(n, min_depth, keep_last)
    out = {}
    for depth in range(min_depth, n + 1):
        size = n - depth
        if size == 0:
            out[depth] = list(range(n))
            continue
        starts = range(0, n - keep_last - size + 1)
        start = min(starts, key=lambda l: (float(angular[l, l + size]), l))
        out[depth] = [i for i in range(n) if not start <= i < start + size]
    return out


def ppl_rank_layers(objective, *, min_depth: int, keep_last: int = 0, progress: bool = False
                    ) -> tuple[dict[int, list[int]], dict[int, float]]:
    """Score removing each single layer, remove the least harmful ones; also return the single scores."""
    n = objective.num_layers
    check_depth_range(n, min_depth, keep_last)
    single = {}
    for layer in tqdm(_removable(n, keep_last), desc="single-layer removals", unit="layer", disable=not progress):
        single[layer] = objective.evaluate(layer, [tuple(range(layer + 1, n))])[0]
    sign = -1.0 if objective.higher_is_better else 1.0
    ranked = sorted(single, key=lambda l: (sign * single[l] if not math.isnan(single[l]) else math.inf, l))
    return _remove_ranked(n, ranked, min_depth), single


def drop_last_layers(num_layers: int, *, min_depth: int, keep_last: int = 0) -> dict[int, list[int]]:
    """Remove the layers just below the ``keep_last`` top layers (the last layers when it is 0)."""
    check_depth_range(num_layers, min_depth, keep_last)
    top = num_layers - keep_last
    ranked = list(range(top - 1, -1, -1))
    return _remove_ranked(num_layers, ranked, min_depth)


def score_layer_sets(objective, depth_layers: dict[int, Sequence[int]]) -> dict[int, float]:
    """The objective's metric of each depth's layer set, sharing prefixes: sets are grouped by their first gap."""
    n = objective.num_layers
    groups: dict[int, list[tuple[int, tuple[int, ...]]]] = defaultdict(list)
    out = {}
    for depth, layers in depth_layers.items():
        layers = sorted(layers)
        if len(layers) == n:
            continue
        below = next(i for i in range(n) if i >= len(layers) or layers[i] != i)  # first removed layer
        groups[below].append((depth, tuple(l for l in layers if l > below)))
    if any(len(v) == n for v in depth_layers.values()):
        full = objective.full()
        out.update({d: full for d, v in depth_layers.items() if len(v) == n})
    for below in sorted(groups, reverse=True):
        depths, tails = zip(*groups[below])
        out.update(zip(depths, objective.evaluate(below, list(tails))))
    return dict(sorted(out.items()))
