"""Stage 1 end to end: calibration data in, a :class:`SelectionStrategy` out (what ``amoeba-select`` runs)."""
from __future__ import annotations

import dataclasses
import difflib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amoeba_search.data.multiple_choice import read_task_file
from amoeba_search.distributed import ShardedObjective, rank_world
from amoeba_search.errors import InputError
from amoeba_search.selection.calibration import (METRICS, MultipleChoiceMetric, PerplexityMetric, check_metric_name,
                                                 lm_eval_items, spread_blocks)
from amoeba_search.selection.depth_baselines import (angular_layers, drop_last_layers, hidden_similarity,
                                                     ppl_rank_layers, score_layer_sets, shortgpt_layers)
from amoeba_search.selection.depth_dp import DepthResult, DPCheckpoint, check_beam, check_depth_range, depth_dp
from amoeba_search.selection.objective import CACHE_MODES, ModelObjective
from amoeba_search.selection.width import STATISTICS_METRICS, WIDTH_METRICS, width_orders
from amoeba_search.strategy import SelectionStrategy

METHODS = ("dp", "shortgpt", "angular", "ppl-rank", "drop-last")

logger = logging.getLogger(__name__)


def _choose(kind: str, value: str, known) -> str:
    if value not in known:
        close = difflib.get_close_matches(value, list(known), n=1, cutoff=0.4)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InputError(f"unknown {kind} {value!r}; {hint}known: {', '.join(known)}")
    return value


@dataclass(frozen=True)
class SelectionSettings:
    """Everything that determines a strategy (besides the model)."""

    method: str = "dp"
    metric: str = "ppl"
    calib: str = "wiki"             # text source for ppl; a JSONL file of items for mc-acc / mc-loss
    split: str = "calib"
    samples: int = 4               # blocks of seq_len tokens, evenly spaced over the split (ppl); or items (mc)
    seq_len: int = 256
    min_depth: int | None = None    # default: half the layers
    keep_last: int = 0
    beam: int = 1                   # DP layer sets kept per cell: 1 is the paper's DP
    width_metric: str = "flap"
    seed: int = 0
    batch_size: int = 4
    cache: str = "tree"

    def check_names(self) -> None:
        """Everything checkable without the model: names (did-you-mean) and sizes."""
        _choose("method", self.method, METHODS)
        check_metric_name(self.metric)
        _choose("width metric", self.width_metric, WIDTH_METRICS)
        _choose("cache mode", self.cache, CACHE_MODES)
        check_beam(self.beam)
        if self.samples < 1 or self.batch_size < 1:
            raise InputError(f"samples and batch size must be positive, got {self.samples} and {self.batch_size}")
        if self.seq_len < 2:
            raise InputError(f"seq_len must be at least 2, got {self.seq_len}")

    def checked(self, num_layers: int) -> "SelectionSettings":
        """A copy with ``min_depth`` resolved, after checking every setting against a model of ``num_layers``."""
        self.check_names()
        min_depth = max(1, num_layers // 2) if self.min_depth is None else self.min_depth
        check_depth_range(num_layers, min_depth, self.keep_last)
        return dataclasses.replace(self, min_depth=min_depth)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def calibration_metric(settings: SelectionSettings, tokenizer):
    """The metric of ``settings`` on its calibration data (raises ``ValueError`` when there is too little)."""
    if settings.metric == "ppl":
        from amoeba_search.data import token_blocks

        kwargs = dict(split=settings.split, seq_len=settings.seq_len)
        token_blocks(settings.calib, tokenizer, max_blocks=settings.samples, **kwargs)  # enough text? (clear error)
        blocks = spread_blocks(token_blocks(settings.calib, tokenizer, **kwargs), settings.samples)
        return PerplexityMetric(blocks, batch_size=settings.batch_size)
    items = read_task_file(settings.calib)
    if len(items) < settings.samples:
        raise InputError(f"{settings.calib} holds {len(items)} multiple-choice items, {settings.samples} requested; "
                         f"ask for --samples {len(items)} or fewer")
    items = lm_eval_items(items[:settings.samples])
    return MultipleChoiceMetric(items, tokenizer, kind=settings.metric.split("-")[1],
                                batch_size=settings.batch_size)


BIAS_NOT_STORED = ("not stored: LLaMA projections have no bias; select with --bias-compensation to store "
                   "the channel means that the supernet turns into a bias at every width")
BIAS_STORED = ("stored as channel_means: at every reduced width the supernet adds the removed channels' mean "
               "output to down_proj / o_proj as a bias, and exports it as one")


def channel_means(stats) -> dict[str, list[list[float]]]:
    """The strategy's ``channel_means`` from channel statistics, at float32 precision (short JSON)."""
    return {kind: [[float(f"{v:.7g}") for v in row.tolist()] for row in rows]
            for kind, rows in (("ffn", stats.ffn_mean), ("attn", stats.attn_mean))}


@dataclass
class SelectionRun:
    strategy: SelectionStrategy
    depth: DepthResult
    report: dict[str, Any]          # timings and counters: not part of the (deterministic) strategy


def select_strategy(supernet, tokenizer, fingerprint: dict, settings: SelectionSettings, *,
                    checkpoint: str | Path | None = None, resume: bool = False, progress: bool = False,
                    command: str | None = None, bias_compensation: bool = False) -> SelectionRun:
    """Depth by ``settings.method`` and width orders by ``settings.width_metric``, as one strategy.

    ``bias_compensation``: also store the calibration mean of every down_proj / o_proj input, so that every
    reduced width of the strategy's supernet adds the removed channels' mean output as a bias (FLAP).
    """
    n = supernet.dims.num_layers
    settings = settings.checked(n)
    if bias_compensation and settings.width_metric not in STATISTICS_METRICS:
        raise InputError(f"bias compensation needs channel statistics, which width metric "
                         f"{settings.width_metric!r} does not collect; use width metric flap or activation")
    metric = calibration_metric(settings, tokenizer)
    logger.info("selecting a strategy: depth by %s on %s (%s), depths %d..%d, width by %s",
                settings.method, settings.metric, settings.calib, settings.min_depth, n, settings.width_metric)
    t0 = time.perf_counter()
    ffn_orders, head_orders, stats = width_orders(supernet, metric.batches(), settings.width_metric,
                                                  seed=settings.seed, progress=progress)
    t_width = time.perf_counter() - t0

    objective = ModelObjective(supernet, metric, cache=settings.cache)
    if settings.method == "dp" and rank_world()[1] > 1:
        objective = ShardedObjective(objective)  # torchrun: each process scores its share of every DP row
        logger.info("depth DP rows are split over %d processes", rank_world()[1])
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if settings.method == "dp":
        ckpt = None
        if checkpoint is not None:
            ckpt = DPCheckpoint(checkpoint, {"fingerprint": fingerprint.get("weights_sha256"),
                                             "dims": fingerprint.get("dims"), **settings.to_dict()})
        depth = depth_dp(objective, min_depth=settings.min_depth, keep_last=settings.keep_last, beam=settings.beam,
                         checkpoint=ckpt, resume=resume, progress=progress)
    else:
        if settings.method in ("shortgpt", "angular"):
            sims = hidden_similarity(supernet, metric.batches(), progress=progress)
            pick = shortgpt_layers if settings.method == "shortgpt" else angular_layers
            layers = pick(sims["cos" if settings.method == "shortgpt" else "angular"],
                          min_depth=settings.min_depth, keep_last=settings.keep_last)
            key = "block_influence" if settings.method == "shortgpt" else "angular_distance"
            extra[key] = ([1 - float(sims["cos"][i, i + 1]) for i in range(n)] if settings.method == "shortgpt"
                          else [[float(v) for v in row] for row in sims["angular"]])
        elif settings.method == "ppl-rank":
            layers, single = ppl_rank_layers(objective, min_depth=settings.min_depth, keep_last=settings.keep_last,
                                             progress=progress)
            extra["single_layer_removal"] = {str(k): v for k, v in single.items()}
        else:
            layers = drop_last_layers(n, min_depth=settings.min_depth, keep_last=settings.keep_last)
        metrics = score_layer_sets(objective, layers)
        depth = DepthResult(layers, metrics, objective.evaluations, objective.evaluations)
    t_depth = time.perf_counter() - t0
    logger.info("depth selection (%s) done: %d networks scored, %.1f s", settings.method, depth.evaluations, t_depth)

    calibration = {**settings.to_dict(), **{k: v for k, v in metric.describe().items() if k != "metric"},
                   "higher_is_better": metric.higher_is_better}
    if settings.metric == "ppl":
        calibration["block_selection"] = "evenly spaced over the split's blocks (first and last included)"
    else:
        calibration["choice_scoring"] = "as lm-eval: context + ' ' + choice, summed log-likelihood"
    if command:
        calibration["command"] = command
    strategy = SelectionStrategy(
        fingerprint=fingerprint, depth_layers=depth.depth_layers, depth_metric=depth.depth_metric,
        ffn_orders=ffn_orders, head_orders=head_orders, calibration=calibration,
        extra={"method": settings.method, "metric_description": METRICS[settings.metric],
               "evaluations": depth.evaluations,
               "width": {"metric": settings.width_metric, "tokens": None if stats is None else stats.tokens,
                         "bias_compensation": BIAS_STORED if bias_compensation else BIAS_NOT_STORED},
               **extra},
        channel_means=channel_means(stats) if bias_compensation else None)
    strategy.validate()
    report = {"width_seconds": t_width, "depth_seconds": t_depth, **objective.counters(),
              "evaluations_total": depth.evaluations, "resumed_from_row": depth.resumed_from_row}
    return SelectionRun(strategy, depth, report)
