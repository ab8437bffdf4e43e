"""Roofline estimates from a device's spec sheet, for devices that have no measured table.

Every output is labelled ``source="roofline-estimate"``: a lower bound from bytes moved / bandwidth and
FLOPs / peak, never a measurement. Decode streams every weight once per token (plus the KV cache read);
prefill is usually compute-bound.
"""
from __future__ import annotations

from amoeba_search.errors import InputError
from amoeba_search.models.config import subnet_config
from amoeba_search.profiling.devices import DeviceSpec
from amoeba_search.shapes import ModelDims, SubnetShape

SOURCE = "roofline-estimate"

# bytes per weight; GGUF block formats include their per-block scales
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "q8_0": 34 / 32,
                    "q4_0": 18 / 32, "q4_1": 20 / 32, "q4_k_m": 4.85 / 8, "int4": 0.5}


def _bytes_per(dtype: str) -> float:
    try:
        return BYTES_PER_WEIGHT[dtype.lower()]
    except KeyError:
        raise InputError(f"no byte size for dtype {dtype!r}; known: {', '.join(BYTES_PER_WEIGHT)}") from None


def param_counts(config, shape: SubnetShape | None = None) -> dict:
    """Parameters of the (cut) model: per layer (attention, mlp, norms), embedding and LM head."""
    cut = subnet_config(config, shape) if shape is not None else config
    d = ModelDims.from_config(cut)
    qo = 2 * d.hidden_size * d.num_heads * d.head_dim
    kv = 2 * d.hidden_size * d.num_kv_heads * d.head_dim
    has_bias = getattr(cut, "attention_bias", False) or getattr(cut, "model_type", "") == "qwen2"  # qwen2: q/k/v bias
    bias = (d.num_heads + 2 * d.num_kv_heads) * d.head_dim if has_bias else 0
    mlp = 3 * d.hidden_size * d.ffn_size
    per_layer = qo + kv + bias + mlp + 2 * d.hidden_size
    embed = cut.vocab_size * d.hidden_size
    tied = bool(getattr(cut, "tie_word_embeddings", False))
    return {"per_layer": per_layer, "layers": d.num_layers, "embedding": embed, "lm_head": 0 if tied else embed,
            "final_norm": d.hidden_size, "tied": tied,
            "total": per_layer * d.num_layers + embed + (0 if tied else embed) + d.hidden_size}


def weight_bytes_per_token(config, shape: SubnetShape | None = None, dtype: str = "fp32") -> float:
    """Weight bytes one decode step must read: every layer, the final norm and the LM head matrix
    (the embedding lookup reads one row; with tied embeddings the LM head *is* the embedding)."""
    p = param_counts(config, shape)
    read = p["per_layer"] * p["layers"] + p["final_norm"] + p["embedding"]  # LM head reads vocab x hidden
    return read * _bytes_per(dtype)


def flops_per_token(config, shape: SubnetShape | None, context: int) -> float:
    """Forward FLOPs for one token attending to ``context`` earlier tokens (2 per multiply-add)."""
    p = param_counts(config, shape)
    cut = subnet_config(config, shape) if shape is not None else config
    d = ModelDims.from_config(cut)
    matmul = p["per_layer"] * p["layers"] + p["embedding"]  # LM head: vocab x hidden
    attention = 2 * 2 * d.num_heads * d.head_dim * context * d.num_layers  # QK^T and PV
    return 2.0 * matmul + attention


def kv_bytes(config, shape: SubnetShape | None, context: int, dtype: str) -> float:
    cut = subnet_config(config, shape) if shape is not None else config
    d = ModelDims.from_config(cut)
    return 2 * d.num_layers * d.num_kv_heads * d.head_dim * context * _bytes_per(dtype)


def memory_footprint_bytes(config, shape: SubnetShape | None = None, *, dtype: str = "fp32", context: int = 160,
                           batch: int = 1) -> float:
    """Weights of the cut model plus its KV cache for ``batch`` sequences of ``context`` tokens (activations,
    runtime and allocator overheads excluded): what a subnet needs resident to serve."""
    weights = param_counts(config, shape)["total"] * _bytes_per(dtype)
    return weights + batch * kv_bytes(config, shape, context, dtype)


def roofline_estimate(spec: DeviceSpec, config, shape: SubnetShape | None = None, *, dtype: str = "fp32",
                      batch: int = 1, prompt_len: int = 128, context_len: int = 160) -> dict:
    """Lower-bound prefill and decode latency (ms) of ``shape`` on ``spec``, labelled as an estimate."""
    if not spec.memory_bandwidth_gbs:
        raise InputError(f"device {spec.name!r} has no memory bandwidth in its spec; cannot estimate")
    peak = spec.peak_tflops.get(dtype) or spec.peak_tflops.get("fp32")
    bandwidth = spec.memory_bandwidth_gbs * 1e9
    weights = weight_bytes_per_token(config, shape, dtype)
    decode_tokens = max(0, context_len - prompt_len)
    mean_context = prompt_len + decode_tokens / 2
    kv_dtype = dtype if dtype in ("fp32", "fp16", "bf16") else "fp16"
    decode_bytes = weights + batch * kv_bytes(config, shape, mean_context, kv_dtype)
    decode_flops = batch * flops_per_token(config, shape, int(mean_context))
    decode_mem_ms = decode_bytes / bandwidth * 1e3
    decode_cmp_ms = decode_flops / (peak * 1e12) * 1e3 if peak else 0.0
    # every prompt position runs the layers; only the last one runs the LM head (logits_to_keep=1)
    lm_head_flops = 2.0 * param_counts(config, shape)["embedding"]
    per_position = (flops_per_token(config, shape, 0) + flops_per_token(config, shape, prompt_len)) / 2
    prefill_flops = batch * (prompt_len * (per_position - lm_head_flops) + lm_head_flops)
    prefill_mem_ms = (weights + batch * kv_bytes(config, shape, prompt_len, kv_dtype)) / bandwidth * 1e3
    prefill_cmp_ms = prefill_flops / (peak * 1e12) * 1e3 if peak else 0.0
    decode_ms = max(decode_mem_ms, decode_cmp_ms)
    prefill_ms = max(prefill_mem_ms, prefill_cmp_ms)
    return {"source": SOURCE, "device": spec.name, "shape": str(shape) if shape else "full", "dtype": dtype,
            "batch": batch, "prompt_len": prompt_len, "context_len": context_len,
            "decode_ms": decode_ms, "prefill_ms": prefill_ms, "e2e_ms": prefill_ms + decode_tokens * decode_ms,
            "decode_bound": "memory" if decode_mem_ms >= decode_cmp_ms else "compute",
            "prefill_bound": "memory" if prefill_mem_ms >= prefill_cmp_ms else "compute",
            "weight_bytes_per_token": weights, "bandwidth_gbs": spec.memory_bandwidth_gbs, "peak_tflops": peak,
            "spec_provenance": spec.provenance,
            "note": "lower bound from the spec sheet (bytes/bandwidth, FLOPs/peak); not a measurement"}


class RooflineEstimator:
    """The same ``predict(shape, metric=...)`` interface as ``LatencyTable``, from a spec sheet."""

    source = SOURCE

    def __init__(self, spec: DeviceSpec, config, *, dtype: str = "fp32", batch: int = 1, prompt_len: int = 128,
                 context_len: int = 160):
        self.spec, self.config = spec, config
        self.settings = {"dtype": dtype, "batch": batch, "prompt_len": prompt_len, "context_len": context_len}

    def predict_detail(self, shape: SubnetShape | str, *, metric: str = "decode") -> dict:
        shape = SubnetShape.parse(shape) if isinstance(shape, str) else shape
        if metric not in ("decode", "prefill", "e2e"):
            raise InputError(f"unknown metric {metric!r}; choose from decode, prefill, e2e")
        estimate = roofline_estimate(self.spec, self.config, shape, **self.settings)
        return {**estimate, "metric": metric, "latency_ms": estimate[f"{metric}_ms"]}

    def predict(self, shape: SubnetShape | str, *, metric: str = "decode") -> float:
        return self.predict_detail(shape, metric=metric)["latency_ms"]
