"""Importance width shrinking: a per-layer order of FFN channels and of attention heads.

A channel is what a consuming projection reads: an FFN channel is a ``down_proj`` input, a head is
``head_dim`` consecutive ``o_proj`` inputs. Metrics (higher = more important):

- ``flap`` (FLAP, An et al. 2024, "fluctuation"): the variance over calibration tokens of the channel's input
  times the squared norm of the weight column that consumes it; heads sum their ``head_dim`` channels. FLAP then
  standardizes scores per layer ((s - mean) / std) to compare layers; we do the same, though within a layer,
  where our orders live, it changes nothing.
- ``magnitude``: squared norm of every weight tied to the channel (gate and up rows + down column; q rows + o
  columns for a head).
- ``activation``: mean square of the channel's input (``||X_j||^2 / tokens``).
- ``taylor`` (LLM-Pruner, Ma et al. 2023, element-wise first-order Taylor, "param_first"): ``|w * dL/dw|`` of the
  LM loss on the calibration batches, summed over every weight the channel's removal deletes (gate and up rows +
  down column; q rows + o columns for a head; k and v stay, GQA shares them). Needs one backward pass and
  gradients of those projections (as much memory again as their weights).
- ``random``: a seeded random order.

Heads are ranked WITHIN their KV group (``head_orders[l][k]`` ranks the group's heads by their index in the
group), so keeping the top g of every group is always valid grouped-query attention.

Everything is in the ORIGINAL model's indices, whatever order the supernet is in now (``Supernet.ffn_index``
and ``head_index`` map its current positions back).

Bias compensation (FLAP): a strategy made with ``amoeba-select --bias-compensation`` stores the calibration
mean of every down_proj / o_proj input channel, and the Supernet view adds the removed channels' mean output as a
bias at every reduced width (``Supernet.set_channel_means``) and exports it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from amoeba_search.errors import InputError
from amoeba_search.selection.calibration import causal_lm

WIDTH_METRICS = ("flap", "magnitude", "activation", "taylor", "random")
STATISTICS_METRICS = ("flap", "activation")  # need channel_statistics
GRADIENT_METRICS = ("taylor",)  # need taylor_scores

logger = logging.getLogger(__name__)


@dataclass
class ChannelStats:
    """Per layer, per input channel of down_proj (``ffn_*``) and o_proj (``attn_*``), ORIGINAL indices."""

    ffn_mean: list[torch.Tensor]     # (F,) float64
    ffn_var: list[torch.Tensor]      # (F,) population variance over tokens
    attn_mean: list[torch.Tensor]    # (H*hd,) channel h*hd + d = dim d of original head h
    attn_var: list[torch.Tensor]
    tokens: int

    @staticmethod
    def mean_square(mean, var):
        return var + mean ** 2


class _Moments:
    """Mean and M2 merged batch by batch (Chan et al.), in float64."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor) -> None:  # x: (tokens, channels)
        x = x.double()
        nb, mb = x.shape[0], x.mean(0)
        m2b = ((x - mb) ** 2).sum(0)
        if self.n == 0:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * nb / n
        self.m2 = self.m2 + m2b + delta ** 2 * self.n * nb / n
        self.n = n

    def var(self):
        return self.m2 / self.n


def _ffn_positions(supernet, layer: int) -> torch.Tensor:
    """Original FFN channel at each current position."""
    return supernet.ffn_index[layer]


def _attn_positions(supernet, layer: int) -> torch.Tensor:
    """Original o_proj input channel (head * hd + d) at each current position."""
    hd = supernet.dims.head_dim
    return (supernet.head_index[layer][:, None] * hd + torch.arange(hd)).reshape(-1)


def _to_original(values: torch.Tensor, positions: torch.Tensor, dim: int = -1) -> torch.Tensor:
    out = torch.empty_like(values)
    index = [slice(None)] * values.dim()
    index[dim] = positions
    out[tuple(index)] = values
    return out


@torch.inference_mode()
def channel_statistics(supernet, batches: Sequence[torch.Tensor], *, progress: bool = False) -> ChannelStats:
    """Run the full-width, full-depth model on ``batches`` and collect projection-input moments."""
    previous = (supernet.active_shape, supernet.active_layers)
    supernet.set_active(supernet.full_shape())
    n = supernet.dims.num_layers
    ffn, attn = [_Moments() for _ in range(n)], [_Moments() for _ in range(n)]
    handles = []
    for i, layer in enumerate(supernet.layers):
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(
            lambda mod, args, acc=ffn[i]: acc.add(args[0].reshape(-1, args[0].shape[-1]))))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(
            lambda mod, args, acc=attn[i]: acc.add(args[0].reshape(-1, args[0].shape[-1]))))
    try:
        decoder = causal_lm(supernet).model
        for ids in tqdm(batches, desc="channel statistics", unit="batch", disable=not progress):
            decoder(input_ids=ids.to(decoder.embed_tokens.weight.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        supernet.set_active(*previous)
    return ChannelStats(  # on the CPU, in float64, whatever device the model ran on
        ffn_mean=[_to_original(a.mean.cpu(), _ffn_positions(supernet, i)) for i, a in enumerate(ffn)],
        ffn_var=[_to_original(a.var().cpu(), _ffn_positions(supernet, i)) for i, a in enumerate(ffn)],
        attn_mean=[_to_original(a.mean.cpu(), _attn_positions(supernet, i)) for i, a in enumerate(attn)],
        attn_var=[_to_original(a.var().cpu(), _attn_positions(supernet, i)) for i, a in enumerate(attn)],
        tokens=ffn[0].n,
    )


def original_weights(supernet, layer: int) -> dict[str, torch.Tensor]:
    """The layer's projection weights with channels and heads back in original order (CPU float64 copies)."""
    mod = supernet.layers[layer]
    f, a = _ffn_positions(supernet, layer), _attn_positions(supernet, layer)
    return {
        "down": _to_original(mod.mlp.down_proj.weight.detach().cpu().double(), f, dim=1),   # (C, F)
        "gate": _to_original(mod.mlp.gate_proj.weight.detach().cpu().double(), f, dim=0),   # (F, C)
        "up": _to_original(mod.mlp.up_proj.weight.detach().cpu().double(), f, dim=0),       # (F, C)
        "o": _to_original(mod.self_attn.o_proj.weight.detach().cpu().double(), a, dim=1),   # (C, H*hd)
        "q": _to_original(mod.self_attn.q_proj.weight.detach().cpu().double(), a, dim=0),   # (H*hd, C)
    }


_TAYLOR_WEIGHTS = {"gate": ("mlp", "gate_proj", 1), "up": ("mlp", "up_proj", 1), "down": ("mlp", "down_proj", 0),
                   "q": ("self_attn", "q_proj", 1), "o": ("self_attn", "o_proj", 0)}  # sum over dim -> per channel


def taylor_scores(supernet, batches: Sequence[torch.Tensor], *, progress: bool = False
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, LLM-Pruner's first-order Taylor importance of every FFN channel ``(F,)`` and query head ``(H,)``.

    The mean LM loss of the full model over ``batches`` is back-propagated once into the five projections a width
    reduction cuts; nothing else gets a gradient, and the model's ``requires_grad`` flags and active shape are put
    back afterwards. Scores are float64, on the CPU, in ORIGINAL indices.
    """
    if not batches:
        raise InputError("width metric 'taylor' needs calibration batches")
    previous = (supernet.active_shape, supernet.active_layers)
    supernet.set_active(supernet.full_shape())
    model = causal_lm(supernet)
    flags = {p: p.requires_grad for p in model.parameters()}
    weights = [{name: getattr(getattr(layer, block), proj).weight
                for name, (block, proj, _) in _TAYLOR_WEIGHTS.items()} for layer in supernet.layers]
    try:
        model.requires_grad_(False)
        for layer in weights:
            for w in layer.values():
                w.requires_grad_(True)
                w.grad = None
        device = model.get_input_embeddings().weight.device
        with torch.enable_grad():
            for ids in tqdm(batches, desc="taylor gradients", unit="batch", disable=not progress):
                ids = ids.to(device)
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                (loss / len(batches)).backward()
        hd, heads = supernet.dims.head_dim, supernet.dims.num_heads
        ffn_scores, head_scores = [], []
        for i, layer in enumerate(weights):
            part = {name: (w.detach().double() * w.grad.double()).abs().sum(_TAYLOR_WEIGHTS[name][2]).cpu()
                    for name, w in layer.items()}
            ffn = _to_original(part["gate"] + part["up"] + part["down"], _ffn_positions(supernet, i))
            attn = _to_original(part["q"] + part["o"], _attn_positions(supernet, i))
            ffn_scores.append(ffn)
            head_scores.append(attn.view(heads, hd).sum(1))
    finally:
        for layer in weights:
            for w in layer.values():
                w.grad = None
        for p, flag in flags.items():
            p.requires_grad_(flag)
        supernet.set_active(*previous)
    return ffn_scores, head_scores


def _standardize(scores: torch.Tensor) -> torch.Tensor:
    std = scores.std()
    if not torch.isfinite(std) or std == 0:
        return torch.zeros_like(scores)
    return (scores - scores.mean()) / std


def importance_scores(supernet, stats: ChannelStats | None, metric: str = "flap", *, seed: int = 0
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, a score for every FFN channel ``(F,)`` and every query head ``(H,)``; higher = keep."""
    if metric not in WIDTH_METRICS:
        import difflib

        close = difflib.get_close_matches(metric, WIDTH_METRICS, n=1, cutoff=0.4)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InputError(f"unknown width metric {metric!r}; {hint}known: {', '.join(WIDTH_METRICS)}")
    if stats is None and metric in STATISTICS_METRICS:
        raise InputError(f"width metric {metric!r} needs calibration statistics")
    if metric in GRADIENT_METRICS:
        raise InputError(f"width metric {metric!r} needs gradients, not statistics: call taylor_scores")
    dims = supernet.dims
    heads, hd = dims.num_heads, dims.head_dim
    ffn_scores, head_scores = [], []
    for i in range(dims.num_layers):
        if metric == "random":
            g = torch.Generator().manual_seed(seed * 100_003 + i)
            ffn_scores.append(torch.rand(dims.ffn_size, generator=g, dtype=torch.float64))
            head_scores.append(torch.rand(heads, generator=g, dtype=torch.float64))
            continue
        if metric == "activation":
            ffn = ChannelStats.mean_square(stats.ffn_mean[i], stats.ffn_var[i])
            attn = ChannelStats.mean_square(stats.attn_mean[i], stats.attn_var[i])
        else:
            w = original_weights(supernet, i)
            if metric == "flap":
                ffn = stats.ffn_var[i] * w["down"].pow(2).sum(0)
                attn = stats.attn_var[i] * w["o"].pow(2).sum(0)
            else:  # magnitude
                ffn = w["gate"].pow(2).sum(1) + w["up"].pow(2).sum(1) + w["down"].pow(2).sum(0)
                attn = w["q"].pow(2).sum(1) + w["o"].pow(2).sum(0)
        head = attn.view(heads, hd).sum(1)
        if metric == "flap":
            ffn, head = _standardize(ffn), _standardize(head)
        ffn_scores.append(ffn)
        head_scores.append(head)
    return ffn_scores, head_scores


def _rank(scores: torch.Tensor) -> list[int]:
    """Indices by descending score; ties keep index order (deterministic)."""
    return torch.argsort(-scores, stable=True).tolist()


def orders_from_scores(ffn_scores: Sequence[torch.Tensor], head_scores: Sequence[torch.Tensor], dims
                       ) -> tuple[list[list[int]], list[list[list[int]]]]:
    """FFN orders (original channel indices) and GQA-valid head orders (ranks within each KV group)."""
    group = dims.group_size
    ffn_orders = [_rank(s) for s in ffn_scores]
    head_orders = [[_rank(s[k * group:(k + 1) * group]) for k in range(dims.num_kv_heads)] for s in head_scores]
    return ffn_orders, head_orders


def width_orders(supernet, batches: Sequence[torch.Tensor] | None, metric: str = "flap", *, seed: int = 0,
                 progress: bool = False) -> tuple[list[list[int]], list[list[list[int]]], ChannelStats | None]:
    """Collect statistics (when the metric needs them) and return ``(ffn_orders, head_orders, stats)``."""
    started = time.perf_counter()
    stats = None
    if metric in STATISTICS_METRICS:
        if not batches:
            raise InputError(f"width metric {metric!r} needs calibration batches")
        stats = channel_statistics(supernet, batches, progress=progress)
        logger.debug("channel statistics: %d tokens in %d batches, %.1f s", stats.tokens, len(batches),
                     time.perf_counter() - started)
    if metric in GRADIENT_METRICS:
        ffn_scores, head_scores = taylor_scores(supernet, batches, progress=progress)
    else:
        ffn_scores, head_scores = importance_scores(supernet, stats, metric, seed=seed)
    ffn_orders, head_orders = orders_from_scores(ffn_scores, head_scores, supernet.dims)
    logger.info("width ranking computed: %s over %d layers (%d FFN channels, %d heads each), %.1f s",
                metric, supernet.dims.num_layers, supernet.dims.ffn_size, supernet.dims.num_heads,
                time.perf_counter() - started)
    return ffn_orders, head_orders, stats
