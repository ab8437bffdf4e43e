"""What a select, finetune or search job will cost, before running it (``--dry-run``), from the config alone.

Every number comes from ``models.footprint`` (exact parameter counts, approximate FLOPs) and the job's
settings; nothing is loaded or run. Each plan lists the assumptions its numbers rest on. The time is
``max(FLOPs / peak FLOP/s, bytes / bandwidth)`` at the device's spec-sheet peaks: a lower bound.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from amoeba_search.errors import InputError
from amoeba_search.finetune.smol import TARGETS, default_rank
from amoeba_search.models import footprint as fp
from amoeba_search.profiling.devices import DeviceSpec, get_device
from amoeba_search.selection.calibration import _HEAD_ROWS  # rows of logits perplexity scores at once
from amoeba_search.selection.depth_baselines import BASELINES
from amoeba_search.selection.depth_dp import check_beam, check_depth_range, dp_evaluation_count
from amoeba_search.selection.width import GRADIENT_METRICS, STATISTICS_METRICS, WIDTH_METRICS
from amoeba_search.shapes import ModelDims, SearchSpace, SubnetShape

SELECT_METHODS = ("dp",) + BASELINES
TIME_LABEL = "at spec-sheet peak: a lower bound"


@dataclass(frozen=True)
class JobPlan:
    """The cost of one job. ``flops`` and ``bytes_moved`` are totals; ``estimated_seconds`` is None when the
    device's spec lacks the peak for ``dtype`` or its bandwidth (the assumptions say which)."""

    job: str
    evaluations: int
    tokens: int
    flops: int
    bytes_moved: int
    peak_memory_bytes: int
    device: str
    dtype: str
    estimated_seconds: float | None
    parameters: int
    weight_bytes: int
    kv_cache_bytes_per_token: int
    trainable_parameters: int = 0
    memory_breakdown: dict = field(default_factory=dict)   # part -> bytes, summing to peak_memory_bytes
    assumptions: tuple[str, ...] = ()

    @property
    def estimated_hours(self) -> float | None:
        return None if self.estimated_seconds is None else self.estimated_seconds / 3600

    def to_dict(self) -> dict:
        return {"job": self.job, "evaluations": self.evaluations, "tokens": self.tokens, "flops": self.flops,
                "bytes_moved": self.bytes_moved, "peak_memory_bytes": self.peak_memory_bytes,
                "device": self.device, "dtype": self.dtype, "estimated_seconds": self.estimated_seconds,
                "estimated_hours": self.estimated_hours, "time_label": TIME_LABEL, "parameters": self.parameters,
                "weight_bytes": self.weight_bytes, "kv_cache_bytes_per_token": self.kv_cache_bytes_per_token,
                "trainable_parameters": self.trainable_parameters,
                "memory_breakdown": dict(self.memory_breakdown), "assumptions": list(self.assumptions)}


# -- shared pieces -----------------------------------------------------------------------------------

def _at_least(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _spec(device_spec: DeviceSpec | str) -> DeviceSpec:
    return get_device(device_spec) if isinstance(device_spec, str) else device_spec


def estimate_seconds(flops: float, bytes_moved: float, spec: DeviceSpec, dtype: str) -> tuple[float | None, str]:
    """``max(flops / peak, bytes / bandwidth)`` on ``spec``, and the sentence saying how (or why not)."""
    peak, bandwidth = spec.peak_tflops.get(dtype), spec.memory_bandwidth_gbs
    if not peak or not bandwidth:
        missing = " and no ".join(m for m, ok in ((f"{dtype} peak TFLOP/s", peak), ("memory bandwidth", bandwidth))
                                  if not ok)
        hint = " (measure this CPU first, e.g. amoeba-profile, or pass --device-spec FILE.json)" \
            if spec.kind == "cpu" else " (add it with --device-spec FILE.json)"
        return None, f"no time estimate: device {spec.name!r} has no {missing} in its spec{hint}"
    seconds = max(flops / (peak * 1e12), bytes_moved / (bandwidth * 1e9))
    return seconds, (f"time = max(FLOPs / {peak} TFLOP/s, bytes / {bandwidth} GB/s) on {spec.name} "
                     f"({spec.provenance}), {TIME_LABEL}")


def _plan(job, *, config, spec, dtype, evaluations, tokens, flops, bytes_moved, memory, assumptions,
          check_meta, trainable=0) -> JobPlan:
    params = fp.param_count(config).total
    notes = []
    if check_meta:
        try:
            fp.check_param_count(config)
            notes.append(f"parameter count {params:,} checked against the model built on the meta device")
        except ValueError as err:
            notes.append(f"WARNING: {err}; the plan uses the analytic count")
    seconds, how = estimate_seconds(flops, bytes_moved, spec, dtype)
    peak = sum(memory.values())
    if spec.memory_gb and peak > spec.memory_gb * 1e9:
        notes.append(f"WARNING: peak memory {peak / 1e9:.1f} GB exceeds {spec.name}'s {spec.memory_gb} GB")
    return JobPlan(job=job, evaluations=evaluations, tokens=tokens, flops=flops, bytes_moved=bytes_moved,
                   peak_memory_bytes=peak, device=spec.name, dtype=dtype, estimated_seconds=seconds,
                   parameters=params, weight_bytes=fp.weight_bytes(config, dtype=dtype),
                   kv_cache_bytes_per_token=fp.kv_cache_bytes_per_token(config, dtype=dtype),
                   trainable_parameters=trainable, memory_breakdown=dict(memory),
                   assumptions=tuple(assumptions + notes + [how]))


def _layer_activation_bytes(dims: ModelDims, tokens: int, nbytes: int) -> int:
    """Transient activations of one decoder layer in inference: about 4 hidden-size and 3 FFN-size tensors."""
    return tokens * (4 * dims.hidden_size + 3 * dims.ffn_size) * nbytes


def _logit_bytes(config, tokens: int, nbytes: int) -> int:
    """Logits of ``tokens`` positions: in the dtype, a float32 copy and the cross-entropy's float32 log-softmax."""
    return tokens * config.vocab_size * (nbytes + 8)


# -- select ------------------------------------------------------------------------------------------

def _select_forwards(n: int, method: str, min_depth: int, keep_last: int, beam: int) -> tuple[int, dict[int, int]]:
    """(evaluations as the run reports them, {depth: full forward passes over the calibration set})."""
    if method == "dp":
        # dp_evaluation_count(min_depth=d) - (min_depth=d+1): the evaluations whose networks have depth d
        passes = {d: dp_evaluation_count(n, d, keep_last, beam) - dp_evaluation_count(n, d + 1, keep_last, beam)
                  for d in range(min_depth, n)}
        passes[n] = 1
        return dp_evaluation_count(n, min_depth, keep_last, beam), passes
    passes = {d: 1 for d in range(min_depth, n + 1)}                # score_layer_sets: one per depth
    if method == "ppl-rank":
        passes[n - 1] = passes.get(n - 1, 0) + (n - keep_last)     # one single-layer removal per layer
    evaluations = sum(passes.values())
    if method in ("shortgpt", "angular"):
        passes[n] += 1                                              # the hidden-similarity pass, not an evaluation
    return evaluations, passes


def plan_select(config, *, samples: int, seq_len: int, min_depth: int | None, keep_last: int = 0, beam: int = 1,
                method: str = "dp", dtype: str, device_spec: DeviceSpec | str, batch_size: int = 4,
                width_metric: str = "flap", memory_limit: int = 4 << 30, check_meta: bool = True) -> JobPlan:
    """The plan of ``amoeba-select`` with a perplexity metric on ``samples`` blocks of ``seq_len`` tokens
    (``min_depth=None``: half the layers, as the selection settings default)."""
    _at_least("samples", samples, 1)
    _at_least("seq_len", seq_len, 2)
    _at_least("batch_size", batch_size, 1)
    _at_least("memory_limit", memory_limit, 1)
    if method not in SELECT_METHODS:
        raise InputError(f"unknown selection method {method!r}; choose from {', '.join(SELECT_METHODS)}")
    if width_metric not in WIDTH_METRICS:
        raise InputError(f"unknown width metric {width_metric!r}; choose from {', '.join(WIDTH_METRICS)}")
    nbytes, spec = fp.dtype_bytes(dtype), _spec(device_spec)
    dims = ModelDims.from_config(config)
    n = dims.num_layers
    min_depth = max(1, n // 2) if min_depth is None else min_depth
    check_depth_range(n, min_depth, keep_last)
    check_beam(beam)
    evaluations, passes = _select_forwards(n, method, min_depth, keep_last, beam)
    if width_metric in STATISTICS_METRICS:
        passes[n] += 1                                              # the width-statistics pass
    if width_metric in GRADIENT_METRICS:
        passes[n] += 3                                              # forward + backward, ~3 forwards
    batches = math.ceil(samples / batch_size)
    flops = sum(k * samples * fp.sequence_flops(config, SubnetShape(d), seq_len=seq_len) for d, k in passes.items())
    bytes_moved = sum(k * batches * fp.forward_read_bytes(config, SubnetShape(d), dtype=dtype)
                      for d, k in passes.items())

    tokens_all, batch_tokens = samples * seq_len, min(batch_size, samples) * seq_len
    # objective.py's stride: the input of every stride-th layer is kept, within memory_limit
    stride = max(1, math.ceil(n * tokens_all * dims.hidden_size * nbytes / memory_limit))
    kept_states = math.ceil(n / stride) + (1 if stride > 1 else 0)  # + the recomputed row it caches
    memory = {"weights": fp.weight_bytes(config, dtype=dtype),
              "calibration_states": kept_states * tokens_all * dims.hidden_size * nbytes,
              "tree_path": n * batch_tokens * dims.hidden_size * nbytes,
              "layer_activations": _layer_activation_bytes(dims, batch_tokens, nbytes),
              "logits": _logit_bytes(config, min(_HEAD_ROWS, samples) * seq_len, nbytes)}
    if width_metric in GRADIENT_METRICS:  # gradients of gate/up/down/q/o + one batch's saved activations and logits
        cut = dims.num_layers * dims.hidden_size * (3 * dims.ffn_size + 2 * dims.num_heads * dims.head_dim)
        memory["width_gradients"] = (cut * nbytes + n * _layer_activation_bytes(dims, batch_tokens, nbytes)
                                     + _logit_bytes(config, batch_tokens, nbytes))
    if width_metric in STATISTICS_METRICS:
        width_pass = "FLOPs and bytes include one full pass for the width statistics"
    elif width_metric in GRADIENT_METRICS:
        width_pass = "FLOPs and bytes include the width gradients' forward and backward pass (3 forwards)"
    else:
        width_pass = f"width metric {width_metric} reads only weights: no calibration pass"
    assumptions = [
        f"{method}: {evaluations} evaluations"
        + (" (dp_evaluation_count)" if method == "dp" else
           " (one per reduced depth and the full network" + (", plus one per removable layer)" if method == "ppl-rank"
                                                             else ")")),
        f"tokens = evaluations x {samples} samples x {seq_len} tokens (perplexity metric; multiple-choice items vary)",
        "FLOPs: an upper bound, every evaluation a full forward over the calibration set at its depth; the prefix "
        "cache of selection/objective.py runs shared lower layers once, so the run does less",
        width_pass,
        f"bytes moved: the weights at each evaluation's depth read once per forward of a batch "
        f"({batches} batches of {batch_size}); activation traffic not counted",
        f"peak memory = weights + calibration hidden states ({kept_states} of {n} layers' inputs kept, "
        f"memory_limit {memory_limit / 2**30:g} GiB) + one batch's path of hidden states + one layer's "
        f"activations (4 x hidden + 3 x FFN per token) + {_HEAD_ROWS} rows of logits (dtype + 2 x fp32)",
    ]
    if method in ("shortgpt", "angular"):
        assumptions.append("FLOPs include the hidden-similarity pass; its float64 states are not in peak memory")
    if width_metric in GRADIENT_METRICS:
        assumptions.append("width gradients: the five cut projections' gradients, every layer's activations of one "
                           "batch (4 x hidden + 3 x FFN per token) and its logits, added to the DP's memory though the "
                           "two phases do not overlap (an upper bound)")
    return _plan("select", config=config, spec=spec, dtype=dtype, evaluations=evaluations,
                 tokens=evaluations * samples * seq_len, flops=flops, bytes_moved=bytes_moved, memory=memory,
                 assumptions=assumptions, check_meta=check_meta)


# -- finetune ----------------------------------------------------------------------------------------

def adapter_param_count(config, *, rank: int, experts: int) -> int:
    """Trainable parameters of the SMoL adapter (finetune/smol.py): ``experts`` LoRA pairs of ``rank`` on
    every target linear (q/k/v/o, gate/up/down) of every layer at full width, plus the shape gate's two
    ``Linear(layers + 2, experts)``."""
    d = ModelDims.from_config(config)
    h, q, kv, f = d.hidden_size, d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim, d.ffn_size
    in_out = {"q_proj": h + q, "k_proj": h + kv, "v_proj": h + kv, "o_proj": q + h,
              "gate_proj": h + f, "up_proj": h + f, "down_proj": f + h}
    lora = d.num_layers * experts * rank * sum(in_out[name] for name in TARGETS)
    gate = 2 * ((d.num_layers + 2) * experts + experts)
    return lora + gate


def plan_finetune(config, *, steps: int, batch_size: int, seq_len: int, random_shapes: int, rank: int | None,
                  experts: int, dtype: str, device_spec: DeviceSpec | str, top_k: int = 2,
                  space: SearchSpace | None = None, check_meta: bool = True) -> JobPlan:
    """The plan of ``amoeba-finetune``: ``steps`` sandwich steps of ``batch_size`` x ``seq_len`` tokens."""
    _at_least("steps", steps, 1)
    _at_least("batch_size", batch_size, 1)
    _at_least("seq_len", seq_len, 2)
    _at_least("random_shapes", random_shapes, 0)
    _at_least("experts", experts, 1)
    if not 1 <= top_k <= experts:
        raise InputError(f"top_k must lie in 1..experts ({experts}), got {top_k}")
    nbytes, spec = fp.dtype_bytes(dtype), _spec(device_spec)
    dims = ModelDims.from_config(config)
    rank = default_rank(dims) if rank is None else _at_least("rank", rank, 1)
    space = space or SearchSpace.default(dims)
    largest, smallest = space.largest(), space.smallest()
    fixed = [largest] + ([smallest] if smallest != largest else [])
    shapes_per_step = len(fixed) + random_shapes
    tokens_per_shape = batch_size * seq_len
    lora_flops = 2 * top_k * rank * (7 * dims.hidden_size + 2 * dims.num_heads * dims.head_dim
                                     + 2 * dims.num_kv_heads * dims.head_dim + 3 * dims.ffn_size)

    def fwd(shape):  # forward FLOPs of one batch at ``shape``, LoRA experts included (at full width)
        return (batch_size * fp.sequence_flops(config, shape, seq_len=seq_len)
                + tokens_per_shape * shape.depth * lora_flops)

    every = list(space)
    random_flops = sum(fwd(s) for s in every) / len(every)         # a random shape costs the space's mean
    random_read = sum(fp.forward_read_bytes(config, s, dtype=dtype) for s in every) / len(every)
    step_flops = 3 * (sum(fwd(s) for s in fixed) + random_shapes * random_flops)
    trainable = adapter_param_count(config, rank=rank, experts=experts)
    adapter_state = 16 * trainable                                 # fp32 weights, grads, two AdamW moments
    step_bytes = 2 * (sum(fp.forward_read_bytes(config, s, dtype=dtype) for s in fixed)
                      + random_shapes * random_read) + 2 * adapter_state

    per_token_layer = (6 * dims.hidden_size + 2 * dims.num_heads * dims.head_dim
                       + 2 * dims.num_kv_heads * dims.head_dim + 4 * dims.ffn_size + 7 * top_k * rank)
    memory = {"weights": fp.weight_bytes(config, dtype=dtype),
              "adapter_and_optimizer": adapter_state,
              "saved_activations": tokens_per_shape * dims.num_layers * per_token_layer * nbytes,
              "kv_cache": fp.kv_cache_bytes(config, context=seq_len, batch=batch_size, dtype=dtype),
              "logits": tokens_per_shape * config.vocab_size * (nbytes + 16)}
    assumptions = [
        f"{shapes_per_step} shapes per step (sandwich: largest, smallest, {random_shapes} random); the largest "
        "is trained too and its detached logits are the teacher, so there is no extra teacher forward",
        "FLOPs per shape = 3 x forward (backward ~ 2 x forward); an upper bound, since the frozen base weights "
        "get no gradient; LoRA experts counted at full width; a random shape costs the search space's mean",
        f"adapter: {experts} experts of rank {rank} on {', '.join(TARGETS)} of every layer, plus the gate: "
        f"{trainable:,} parameters, kept in fp32 (16-bit base weights train under autocast) with AdamW: "
        "weights, grads and 2 moments = 16 bytes per parameter",
        "bytes moved: per shape the base weights are read twice (forward and backward), plus the adapter state "
        "read and written once per step; activation traffic not counted",
        "peak memory = weights + adapter/optimizer + saved activations of one shape (shapes backpropagate one at a "
        "time): layers x tokens x (6 x hidden + 2 x q + 2 x kv + 4 x FFN + 7 x top_k x rank) in the dtype, "
        "attention kernels that keep no T x T scores (SDPA/flash) + the KV cache the forward builds + "
        "logits (the model's output in the dtype, its fp32 copy, the fp32 teacher, 2 fp32 tensors in the loss)",
    ]
    return _plan("finetune", config=config, spec=spec, dtype=dtype, evaluations=steps * shapes_per_step,
                 tokens=steps * shapes_per_step * tokens_per_shape, flops=int(steps * step_flops),
                 bytes_moved=int(steps * step_bytes), memory=memory, assumptions=assumptions,
                 check_meta=check_meta, trainable=trainable)


# -- search ------------------------------------------------------------------------------------------

def plan_search(config, *, predictor_samples: int, verify_shapes: int, blocks: int, seq_len: int, dtype: str,
                device_spec: DeviceSpec | str, batch_size: int = 4, check_meta: bool = True) -> JobPlan:
    """The plan of ``amoeba-search``: perplexity of ``predictor_samples`` + ``verify_shapes`` subnets, each on
    ``blocks`` blocks of ``seq_len`` tokens; latency comes from a table, at no device cost."""
    _at_least("predictor_samples", predictor_samples, 0)
    _at_least("verify_shapes", verify_shapes, 0)
    _at_least("blocks", blocks, 1)
    _at_least("seq_len", seq_len, 2)
    _at_least("batch_size", batch_size, 1)
    evaluations = predictor_samples + verify_shapes
    if evaluations < 1:
        raise InputError("nothing to evaluate: predictor_samples + verify_shapes must be >= 1")
    nbytes, spec = fp.dtype_bytes(dtype), _spec(device_spec)
    dims = ModelDims.from_config(config)
    batches, batch = math.ceil(blocks / batch_size), min(batch_size, blocks)
    memory = {"weights": fp.weight_bytes(config, dtype=dtype),
              "kv_cache": fp.kv_cache_bytes(config, context=seq_len, batch=batch, dtype=dtype),
              "layer_activations": _layer_activation_bytes(dims, batch * seq_len, nbytes),
              "logits": _logit_bytes(config, batch * seq_len, nbytes)}
    assumptions = [
        f"{evaluations} evaluations = {predictor_samples} predictor samples + {verify_shapes} verified shapes, "
        "each fit afresh (a reused predictor or cached oracle values cost nothing)",
        f"every evaluation is a forward of the full model (an upper bound) over {blocks} blocks of {seq_len} tokens",
        f"bytes moved: the full weights read once per forward of a batch ({batches} batches of {batch_size})",
        "peak memory = weights + the KV cache the forward builds + one layer's activations (4 x hidden + "
        "3 x FFN per token) + one batch of logits (dtype + 2 x fp32)",
    ]
    return _plan("search", config=config, spec=spec, dtype=dtype, evaluations=evaluations,
                 tokens=evaluations * blocks * seq_len,
                 flops=evaluations * blocks * fp.sequence_flops(config, seq_len=seq_len),
                 bytes_moved=evaluations * batches * fp.forward_read_bytes(config, dtype=dtype), memory=memory,
                 assumptions=assumptions, check_meta=check_meta)
