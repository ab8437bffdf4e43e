"""Flow-aware latency estimates for devices without a measured table.

    estimate = scale x max(bytes / bandwidth, FLOPs / peak) + per_layer_ms x kept layers + per_call_ms

The roofline term comes from the device's spec sheet (:mod:`amoeba_search.profiling.roofline`); the overhead
terms (and ``scale``, the inverse of the bandwidth efficiency the flow reaches) are fitted per flow by non-negative
least squares on measured tables (:func:`fit_flow_overheads`) and committed as ``profiles/flow-overheads.json``
(:func:`write_flow_overheads`, which records the source tables and the fit residuals). The fitted terms come from
CPU tables; on a GPU, where no table of that device kind was fitted, a flow's per-layer overhead is its kernel
launches (:data:`GPU_LAUNCH_DEFAULTS`), and the output says so. Every result is labelled an estimate.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from amoeba_search.errors import InputError
from amoeba_search.profiling.devices import DeviceSpec
from amoeba_search.profiling.roofline import _bytes_per, param_counts, roofline_estimate
from amoeba_search.shapes import SubnetShape

SOURCE = "estimate"
OVERHEADS_FILE = "flow-overheads.json"
METRICS = ("decode", "prefill")

# Eager PyTorch on a GPU at batch 1 is launch-bound: every op is one (or a few) kernel launches, each costing the
# CPU-side dispatch plus the CUDA launch, of the order of 5-10 us (NVIDIA Technical Blog, "Getting Started with
# CUDA Graphs", A. Gray, 2019, https://developer.nvidia.com/blog/cuda-graphs/ : launch overheads of a few
# microseconds per kernel, comparable to short kernels; PyTorch Blog, "Accelerating PyTorch with CUDA Graphs",
# 2021, https://pytorch.org/blog/accelerating-pytorch-with-cuda-graphs/ : CPU launch overhead dominates small
# eager workloads). Kernels per decoder layer of transformers' eager LLaMA, counted from its forward: 2 RMSNorms
# (~6 each: pow, mean, add, rsqrt, mul, mul), q/k/v/o projections (4), rotary embedding on q and k (~10), KV cache
# update (2), attention (SDPA, ~3), residual adds (2), gate/up/down projections (3), SiLU and product (2): ~40.
# Outside the layers: embedding, final norm, LM head, sampling and generate() bookkeeping: ~20 per token.
GPU_LAUNCH_DEFAULTS = {
    "torch": {"launch_us": 7.5, "kernels_per_layer": 40, "kernels_per_call": 20,
              "source": "default: eager torch on a GPU is launch-bound; 7.5 us (of 5-10 us) per kernel launch x ~40 "
                        "kernels per decoder layer, ~20 per token outside them (NVIDIA 'Getting Started with CUDA "
                        "Graphs'; PyTorch 'Accelerating PyTorch with CUDA Graphs')"},
}


def _kind_group(spec: DeviceSpec) -> str:
    return "cpu" if spec.kind == "cpu" else "gpu"


# -- the roofline term from a table row or a (config, shape) ----------------------------------------------

def _roof_ms(weight_count: float, flops: float, kv: float, bandwidth_gbs: float, peak_tflops: float | None,
             dtype: str) -> float:
    memory_ms = (weight_count * _bytes_per(dtype) + kv) / (bandwidth_gbs * 1e9) * 1e3
    compute_ms = flops / (peak_tflops * 1e12) * 1e3 if peak_tflops else 0.0
    return max(memory_ms, compute_ms)


def row_roofline_ms(row, spec: DeviceSpec, metric: str = "decode") -> float:
    """The roofline term of one table row (columns params, depth, num_heads, num_kv_heads, head_dim, dtype,
    batch, prompt_len, context_len) on ``spec``: the same bound as :func:`roofline_estimate`, from the row alone
    (``params`` counts every weight of the cut model once, which is what one decode step reads when the
    embeddings are tied)."""
    dtype = str(row["dtype"])
    kv_dtype = dtype if dtype in ("fp32", "fp16", "bf16") else "fp16"
    peak = spec.peak_tflops.get(dtype) or spec.peak_tflops.get("fp32")
    depth, heads, head_dim = float(row["depth"]), float(row["num_heads"]), float(row["head_dim"])
    kv_per_token = 2 * depth * float(row["num_kv_heads"]) * head_dim * _bytes_per(kv_dtype)
    batch, prompt, context = float(row["batch"]), float(row["prompt_len"]), float(row["context_len"])
    params = float(row["params"])
    if metric == "decode":
        mean_context = prompt + max(0.0, context - prompt) / 2
        flops = batch * (2 * params + 4 * heads * head_dim * mean_context * depth)
        return _roof_ms(params, flops, batch * kv_per_token * mean_context, spec.memory_bandwidth_gbs, peak, dtype)
    flops = batch * prompt * (2 * params + 4 * heads * head_dim * prompt / 2 * depth)
    return _roof_ms(params, flops, batch * kv_per_token * prompt, spec.memory_bandwidth_gbs, peak, dtype)


# -- the fit ---------------------------------------------------------------------------------------------

def fit_overheads(roof_ms, layers, measured_ms) -> dict:
    """Non-negative least squares of ``measured = scale x roof + per_layer x layers + per_call``, weighted by
    1/measured (relative error). Returns the three terms and the residuals (relative, in %)."""
    from scipy.optimize import nnls

    roof, layers, y = (np.asarray(v, dtype=float) for v in (roof_ms, layers, measured_ms))
    if len(y) < 3:
        raise InputError(f"fitting overheads needs at least 3 measured rows, got {len(y)}")
    x = np.column_stack([roof, layers, np.ones_like(y)])
    w = 1.0 / y
    coef, _ = nnls(x * w[:, None], y * w)
    fitted = x @ coef
    rel = (fitted - y) / y
    return {"scale": float(coef[0]), "per_layer_ms": float(coef[1]), "per_call_ms": float(coef[2]),
            "bandwidth_efficiency": float(1 / coef[0]) if coef[0] > 0 else None, "rows": int(len(y)),
            "residual_rms_pct": float(100 * np.sqrt(np.mean(rel ** 2))), "residual_max_pct": float(100 * np.max(np.abs(rel)))}


def fit_flow_overheads(frame, spec: DeviceSpec) -> dict:
    """Fit the overhead terms of one measured table (a DataFrame of a ``LatencyTable``'s rows) on ``spec``, the
    device it was measured on, for decode and prefill."""
    if not spec.memory_bandwidth_gbs:
        raise InputError(f"device {spec.name!r} has no memory bandwidth in its spec; cannot fit overheads")
    out = {}
    for metric in METRICS:
        roof = [row_roofline_ms(row, spec, metric) for _, row in frame.iterrows()]
        out[metric] = fit_overheads(roof, frame["depth"].to_numpy(float), frame[f"{metric}_ms_median"].to_numpy(float))
    return out


def fit_committed_tables(tables, spec: DeviceSpec, *, root: Path | None = None) -> dict:
    """The overheads document for measured ``tables`` (paths of ``LatencyTable`` CSVs, all measured on
    ``spec``): per flow and device kind, the fitted terms, the table and the dtype they came from."""
    from amoeba_search.profiling.lut import LatencyTable

    flows: dict = {}
    for path in tables:
        table = LatencyTable.load(path)
        fit = fit_flow_overheads(table.rows, spec)
        shown = os.path.relpath(path, root) if root is not None else str(path)
        flows.setdefault(table.flow, {})[_kind_group(spec)] = {
            **fit, "dtype": table.dtype, "source_table": shown, "device": table.device, "machine": table.machine,
            "device_spec": {"name": spec.name, "memory_bandwidth_gbs": spec.memory_bandwidth_gbs,
                            "peak_tflops": dict(spec.peak_tflops), "provenance": spec.provenance}}
    return {"schema_version": 1,
            "model": "estimate = scale x max(bytes/bandwidth, FLOPs/peak) + per_layer_ms x layers + per_call_ms; "
                     "non-negative least squares, weighted by 1/measured",
            "notes": "scale is 1/bandwidth_efficiency against the spec's bandwidth; a scale below 1 means the flow "
                     "ran faster than that bound (a CPU's bandwidth is measured with one torch reduction, which "
                     "multi-threaded runtimes can exceed). Fitted on CPU tables: on a GPU the terms do not apply "
                     "(see GPU_LAUNCH_DEFAULTS in amoeba_search/profiling/estimate.py). Rewrite with "
                     "amoeba_search.profiling.estimate.refit_committed().",
            "flows": flows}


def write_flow_overheads(path: str | os.PathLike, tables, spec: DeviceSpec, *, root: Path | None = None) -> dict:
    """Fit ``tables`` (see :func:`fit_committed_tables`) and write the document to ``path``; returns it."""
    from amoeba_search.paths import atomic_write_text

    doc = fit_committed_tables(tables, spec, root=root)
    atomic_write_text(Path(path), json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def refit_committed(model: str = "smollm2-135m", device: str = "cpu", *, profiles: Path | None = None) -> dict:
    """Refit ``profiles/<model>/<device>/*.csv`` on the spec in that folder's ``device.json`` and rewrite
    ``profiles/flow-overheads.json`` (the committed file): what to run after re-profiling."""
    from amoeba_search.profiling import CHECKOUT_PROFILES
    from amoeba_search.profiling.devices import load_spec_file

    root = Path(profiles or CHECKOUT_PROFILES)
    folder = root / model / device
    tables = sorted(folder.glob("*.csv"))
    if not tables:
        raise InputError(f"no measured tables in {folder}; profile some with amoeba-profile first")
    return write_flow_overheads(root / OVERHEADS_FILE, tables, load_spec_file(folder / "device.json"), root=root.parent)


def load_flow_overheads(path: str | os.PathLike | None = None) -> tuple[dict, str | None]:
    """The committed overheads document and where it was read; ``({}, None)`` when there is none."""
    from amoeba_search.profiling import CHECKOUT_PROFILES, profiles_dir

    candidates = [Path(path)] if path is not None else [profiles_dir() / OVERHEADS_FILE, CHECKOUT_PROFILES / OVERHEADS_FILE]
    for candidate in candidates:
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text()), str(candidate)
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"cannot read the flow overheads {candidate}: {exc}") from None
    return {}, None


# -- the estimate -----------------------------------------------------------------------------------------

def flow_dtype(spec: DeviceSpec, flow: str, overheads: dict | None = None) -> str:
    """The dtype a flow deploys in on ``spec``: fp16 on GPUs; on a CPU the dtype of the flow's fitted table
    (fp32 when there is none)."""
    if spec.kind != "cpu":
        return "fp16"
    fit = ((overheads or {}).get("flows", {}).get(flow) or {}).get("cpu") or {}
    return fit.get("dtype", "fp32")


def flow_terms(spec: DeviceSpec, flow: str, overheads: dict) -> dict:
    """The overhead terms for ``flow`` on ``spec``'s kind of device, per metric, with where they came from."""
    kind = _kind_group(spec)
    fitted = (overheads.get("flows", {}).get(flow) or {}).get(kind)
    if fitted:
        where = f"{flow} overheads fitted on {fitted.get('source_table')} ({fitted.get('machine')})"
        return {m: {k: fitted[m][k] for k in ("scale", "per_layer_ms", "per_call_ms")} for m in METRICS} | {
            "source": where, "fitted": True}
    if kind == "gpu" and flow in GPU_LAUNCH_DEFAULTS:
        d = GPU_LAUNCH_DEFAULTS[flow]
        terms = {"scale": 1.0, "per_layer_ms": d["launch_us"] * d["kernels_per_layer"] / 1e3,
                 "per_call_ms": d["launch_us"] * d["kernels_per_call"] / 1e3}
        return {"decode": terms, "prefill": dict(terms), "fitted": False,
                "source": f"{flow} overheads: {d['source']}; no measured table of a GPU was fitted"}
    zero = {"scale": 1.0, "per_layer_ms": 0.0, "per_call_ms": 0.0}
    return {"decode": zero, "prefill": dict(zero), "fitted": False,
            "source": f"no overheads known for {flow} on a {kind}: roofline only, a lower bound"}


def flow_estimate(spec: DeviceSpec, config, shape: SubnetShape | None = None, *, flow: str = "torch",
                  overheads: dict | None = None, dtype: str | None = None, batch: int = 1, prompt_len: int = 128,
                  context_len: int = 160) -> dict:
    """Roofline plus ``flow``'s overheads for ``shape`` on ``spec`` (ms), labelled as an estimate."""
    overheads = overheads or {}
    dtype = dtype or flow_dtype(spec, flow, overheads)
    base = roofline_estimate(spec, config, shape, dtype=dtype, batch=batch, prompt_len=prompt_len,
                             context_len=context_len)
    terms = flow_terms(spec, flow, overheads)
    layers = param_counts(config, shape)["layers"]
    out = {}
    for metric in METRICS:
        t = terms[metric]
        out[f"{metric}_ms"] = t["scale"] * base[f"{metric}_ms"] + t["per_layer_ms"] * layers + t["per_call_ms"]
    decode_tokens = max(0, context_len - prompt_len)
    return {**base, **out, "e2e_ms": out["prefill_ms"] + decode_tokens * out["decode_ms"], "source": SOURCE,
            "flow": flow, "roofline_decode_ms": base["decode_ms"], "roofline_prefill_ms": base["prefill_ms"],
            "overheads": {m: terms[m] for m in METRICS}, "overheads_source": terms["source"],
            "overheads_fitted": terms["fitted"],
            "note": f"estimate: roofline from the {spec.name} spec sheet ({dtype}) + {terms['source']}; not a measurement"}


class FlowEstimator:
    """The ``predict(shape, metric=...)`` interface of ``LatencyTable``, from a spec sheet and flow overheads."""

    source = SOURCE

    def __init__(self, spec: DeviceSpec, config, *, flow: str = "torch", overheads: dict | None = None,
                 overheads_path: str | None = None, dtype: str | None = None, batch: int = 1, prompt_len: int = 128,
                 context_len: int = 160):
        if overheads is None:
            overheads, overheads_path = load_flow_overheads()
        self.spec, self.config, self.flow, self.overheads = spec, config, flow, overheads
        self.overheads_path = overheads_path
        self.settings = {"dtype": dtype or flow_dtype(spec, flow, overheads), "batch": batch,
                         "prompt_len": prompt_len, "context_len": context_len}
        self.terms = flow_terms(spec, flow, overheads)

    @property
    def label(self) -> str:
        """``latency_source`` of a search on this estimator: what it is made of, in one line."""
        return (f"estimate: roofline ({self.spec.name} spec sheet, {self.settings['dtype']}) + "
                f"{self.terms['source']} (not a measurement)")

    def predict_detail(self, shape: SubnetShape | str, *, metric: str = "decode") -> dict:
        shape = SubnetShape.parse(shape) if isinstance(shape, str) else shape
        if metric not in ("decode", "prefill", "e2e"):
            raise InputError(f"unknown metric {metric!r}; choose from decode, prefill, e2e")
        detail = flow_estimate(self.spec, self.config, shape, flow=self.flow, overheads=self.overheads,
                               **self.settings)
        return {**detail, "metric": metric, "latency_ms": detail[f"{metric}_ms"]}

    def predict(self, shape: SubnetShape | str, *, metric: str = "decode") -> float:
        return self.predict_detail(shape, metric=metric)["latency_ms"]
