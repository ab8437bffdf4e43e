"""The measure loop: measuring each planned shape (:mod:`~amoeba_search.profiling.design`) in a flow with random
weights, interleaved with a reference shape, appending one row per measurement, and resuming a killed run."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from amoeba_search.errors import InputError
from amoeba_search.profiling.design import PlannedShape, design_shapes, pending_measurements
from amoeba_search.profiling.devices import DeviceSpec
from amoeba_search.profiling.flows.base import Flow, Measurement, MeasureSettings
from amoeba_search.profiling.lut import LatencyTable
from amoeba_search.profiling.machine import MachineInfo, cpu_snapshot, other_load, wait_until_quiet
from amoeba_search.profiling.model_source import ModelSource, build_random_checkpoint, save_tokenizer
from amoeba_search.profiling.table_schema import (KEY_COLUMNS, SCHEMA_VERSION, LatencyTableError, append_row,
                                                  drop_partial_last_line, eval_path)
from amoeba_search.profiling.telemetry import PowerSampler, TelemetryUnavailable, open_power_source
from amoeba_search.shapes import SearchSpace, SubnetShape

logger = logging.getLogger(__name__)

def machine_label(spec: DeviceSpec, machine: MachineInfo) -> str:
    if spec.kind == "nvidia-gpu" and machine.gpus:
        want = spec.match.get("gpu_name", "").lower()
        return next((g for g in machine.gpus if want and want in g.lower()), machine.gpus[0])
    if spec.kind == "jetson" and machine.jetson_model:
        return machine.jetson_model
    return f"{machine.cpu_model} ({machine.cpu_cores} cores)"


@dataclass
class ProfileRequest:
    device: DeviceSpec
    machine: MachineInfo
    flow_name: str
    source: ModelSource
    out: Path
    settings: MeasureSettings = field(default_factory=MeasureSettings)
    flow_options: dict = field(default_factory=dict)
    plan: list[PlannedShape] | None = None   # default: design_shapes(SearchSpace.default(dims))
    holdout: int = 12
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    max_rounds: int = 3          # measure a shape again (up to this many times) while its spread is high
    target_spread: float = 0.05  # relative IQR of decode and prefill that is good enough
    max_other_load: float | None = None  # cores other processes may keep busy during a measurement
    max_attempts: int = 3        # measure again (keeping the least disturbed) while other load is above that
    wait_idle_s: float = 0.0     # before each attempt, wait up to this long for other load to drop below it
    passes: int = 1              # rows per shape, measured in separate passes over the plan
    compute_device: str | None = None  # the local device the flow runs on (e.g. cuda:1); default the backend's
    # drift-cancelled measurement: time each shape between rounds of this reference shape (R S R S ... R) and
    # store the ratios; None: absolute timings only. The reference model is loaded again every
    # ``reference_reload`` shapes, so that the table records its spread across loads (its noise floor).
    reference: SubnetShape | None = None
    reference_reload: int = 8

    def __post_init__(self):
        if self.reference_reload < 1:
            raise InputError(f"reference_reload must be at least 1 (shapes per load of the reference), "
                             f"got {self.reference_reload}")
        if isinstance(self.reference, str):
            self.reference = SubnetShape.parse(self.reference)

    def key(self) -> dict:
        return {"device": self.device.name, "machine": machine_label(self.device, self.machine),
                "flow": self.flow_name, "flow_options": json.dumps(self.flow_options, sort_keys=True),
                "dtype": self.settings.dtype, "batch": self.settings.batch, "prompt_len": self.settings.prompt_len,
                "context_len": self.settings.prompt_len + self.settings.decode_tokens,
                "threads": self.settings.threads or 0, "model_fingerprint": self.source.fingerprint()}

    def full_plan(self) -> list[PlannedShape]:
        if self.plan is not None:
            return list(self.plan)
        return design_shapes(SearchSpace.default(self.source.dims), holdout=self.holdout, seed=self.seed)


@dataclass
class ProfileSummary:
    out: Path
    planned: int
    skipped: int
    measured: int
    elapsed_s: float
    full_grid: int
    power: str | None
    eval_path: Path | None = None
    evaluation: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"out": str(self.out), "planned": self.planned, "skipped_already_measured": self.skipped,
                "measured_now": self.measured, "elapsed_s": round(self.elapsed_s, 1), "full_grid": self.full_grid,
                "power": self.power, "eval": str(self.eval_path) if self.eval_path else None,
                "evaluation": self.evaluation}


def existing_rows(request: ProfileRequest) -> Counter:
    """How many rows each ``(shape, role)`` already has in ``request.out``; checks that the table is
    this run's table."""
    out = request.out
    if not out.exists() or out.stat().st_size == 0:
        return Counter()
    if not request.resume and not request.overwrite:
        raise FileExistsError(f"{out} exists; pass --resume to continue it or --overwrite to start again")
    if request.overwrite:
        out.unlink()
        return Counter()
    drop_partial_last_line(out)
    with open(out) as handle:
        if sum(1 for _ in handle) <= 1:  # header only
            return Counter()
    table = LatencyTable.load(out)
    mine, theirs = request.key(), table.key
    for col in KEY_COLUMNS:
        if str(mine[col]) != str(theirs[col]):
            raise LatencyTableError(f"{out} holds {col}={theirs[col]!r} but this run has {col}={mine[col]!r}; "
                                    f"write to another --out")
    return Counter((r.shape, r.role) for r in table.rows.itertuples(index=False))


def _stats(values: list[float]) -> tuple[float, float, float]:
    arr = np.asarray(values, dtype=float)
    q1, med, q3 = np.percentile(arr, [25, 50, 75])
    return float(med), float(q3 - q1), float(arr.min())


def _merge(a: Measurement | None, b: Measurement) -> Measurement:
    if a is None:
        return b
    extra = dict(b.extra)
    for key in ("prefill_windows", "decode_windows"):
        if key in a.extra or key in b.extra:
            extra[key] = list(a.extra.get(key, [])) + list(b.extra.get(key, []))
    peaks = [p for p in (a.peak_memory_bytes, b.peak_memory_bytes) if p is not None]
    return Measurement(a.prefill_ms + b.prefill_ms, a.decode_ms_per_token + b.decode_ms_per_token,
                       max(peaks) if peaks else None, extra)


def _spread_ok(m: Measurement, target: float) -> bool:
    for values in (m.prefill_ms, m.decode_ms_per_token):
        if values:
            med, iqr, _ = _stats(values)
            if med > 0 and iqr / med > target:
                return False
    return True


@dataclass
class LoadedReference:
    """The reference shape, prepared in the flow, that shapes are timed against; ``load`` counts its loads."""
    shape: SubnetShape
    handle: object
    load: int = 0


def measure_shape(flow: Flow, checkpoint: Path, workdir: Path, settings: MeasureSettings, backend: str, *,
                  sampler: PowerSampler | None = None, max_rounds: int = 1, target_spread: float = 0.05,
                  reference: LoadedReference | None = None) -> tuple[Measurement, dict]:
    """Prepare and measure one checkpoint (again while the spread is above ``target_spread``, at most
    ``max_rounds`` times); returns the merged measurement and energy facts.

    With ``reference``, every round of the shape is bracketed by rounds of the reference (R S R S ... R) and
    the measurement's ``extra["reference"]`` holds the drift-cancelled ratios
    (:func:`~amoeba_search.profiling.interleave.interleaved_ratios`)."""
    from amoeba_search.profiling.interleave import interleaved_ratios

    Path(workdir).mkdir(parents=True, exist_ok=True)
    handle = flow.prepare(checkpoint, workdir, settings, backend)
    try:
        merged, calls, rounds = None, [], []
        reference_rounds = [flow.measure(reference.handle, settings)] if reference is not None else []
        for _ in range(max(1, max_rounds)):
            start = time.perf_counter()
            m = flow.measure(handle, settings)
            calls.append([start, time.perf_counter()])
            merged = _merge(merged, m)
            if reference is not None:
                rounds.append(m)
                reference_rounds.append(flow.measure(reference.handle, settings))
            if _spread_ok(merged, target_spread):
                break
    finally:
        flow.close(handle)
    if reference is not None:
        merged.extra["reference"] = {"shape": str(reference.shape), "load": reference.load,
                                     **interleaved_ratios(rounds, reference_rounds)}
    energy = {"prefill_energy_mj": None, "decode_energy_mj_per_token": None, "energy_scope": None}
    if sampler is not None:
        prefill_w, decode_w = merged.extra.get("prefill_windows"), merged.extra.get("decode_windows")
        tokens_per_window = max(1, settings.decode_tokens) * settings.batch
        if prefill_w and decode_w:
            e_pre, e_dec = sampler.energy_joules(prefill_w), sampler.energy_joules(decode_w)
            if e_pre is not None and e_dec is not None:
                energy.update(prefill_energy_mj=e_pre / len(prefill_w) * 1e3,
                              decode_energy_mj_per_token=e_dec / (len(decode_w) * tokens_per_window) * 1e3,
                              energy_scope="timed-windows")
        else:  # the flow gave no windows: mean power over its measure calls times the measured latency
            e_all = sampler.energy_joules(calls)
            seconds = sum(b - a for a, b in calls)
            if e_all is not None and seconds > 0:
                watts = e_all / seconds
                energy.update(prefill_energy_mj=watts * _stats(merged.prefill_ms)[0],
                              decode_energy_mj_per_token=watts * _stats(merged.decode_ms_per_token)[0] / settings.batch
                              if merged.decode_ms_per_token else None,
                              energy_scope="mean-power-x-latency")
    return merged, energy


def _measure_least_disturbed(request: ProfileRequest, flow: Flow, checkpoint: Path, workdir: Path, power_source,
                             reference: LoadedReference | None = None):
    """Measure; while other processes kept more than ``max_other_load`` cores busy, measure again (after
    waiting for quiet if asked), up to ``max_attempts`` times; keep the least disturbed measurement."""
    best, attempts = None, 0
    limit = request.max_other_load
    for attempts in range(1, (max(1, request.max_attempts) if limit is not None else 1) + 1):
        if limit is not None and request.wait_idle_s > 0:
            wait_until_quiet(limit, timeout=request.wait_idle_s)
        sampler = PowerSampler(power_source).start() if power_source is not None else None
        start = cpu_snapshot()
        try:
            m, energy = measure_shape(flow, checkpoint, workdir, request.settings,
                                      request.compute_device or request.device.backend,
                                      sampler=sampler, max_rounds=request.max_rounds,
                                      target_spread=request.target_spread, reference=reference)
        finally:
            if sampler is not None:
                sampler.stop()
        load = other_load(start, cpu_snapshot())
        if best is None or (load is not None and (best[2] is None or load < best[2])):
            best = (m, energy, load)
        if limit is None or load is None or load <= limit:
            break
    return (*best, attempts)


def _row(request: ProfileRequest, planned: PlannedShape, m: Measurement, energy: dict, versions: dict,
         elapsed: float, power: str | None) -> dict:
    from amoeba_search.profiling.roofline import param_counts

    dims, shape, s = request.source.dims, planned.shape, request.settings
    pre, dec = _stats(m.prefill_ms), _stats(m.decode_ms_per_token) if m.decode_ms_per_token else (None,) * 3
    extra = {k: v for k, v in m.extra.items()
             if k not in ("prefill_windows", "decode_windows", "memory_kind", "reference")}
    reference = m.extra.get("reference") or {}
    if reference:
        extra["reference_load"] = reference["load"]
    if energy.get("energy_scope"):
        extra["energy_scope"] = energy["energy_scope"]
    if request.machine.isa:
        extra["isa"] = list(request.machine.isa)  # compared by amoeba-search with the machine it runs on
    return {**request.key(), "schema_version": SCHEMA_VERSION, "decode_tokens": s.decode_tokens,
            "model": request.source.name, "shape": str(shape), "depth": shape.depth, "ffn_ratio": shape.ffn_ratio,
            "heads_ratio": shape.heads_ratio, "ffn_channels": shape.ffn_channels(dims),
            "num_heads": shape.num_heads(dims), "num_kv_heads": dims.num_kv_heads, "hidden_size": dims.hidden_size,
            "head_dim": dims.head_dim, "params": param_counts(request.source.config, shape)["total"],
            "role": planned.role,
            "prefill_ms_median": pre[0], "prefill_ms_iqr": pre[1], "prefill_ms_min": pre[2],
            "prefill_repeats": len(m.prefill_ms),
            "decode_ms_median": dec[0], "decode_ms_iqr": dec[1], "decode_ms_min": dec[2],
            "decode_repeats": len(m.decode_ms_per_token),
            "peak_memory_bytes": m.peak_memory_bytes, "memory_kind": m.extra.get("memory_kind"),
            "prefill_energy_mj": energy["prefill_energy_mj"],
            "decode_energy_mj_per_token": energy["decode_energy_mj_per_token"],
            "power_source": power if energy.get("energy_scope") else None,
            "versions": versions, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "elapsed_s": elapsed,
            "loadavg_1min": os.getloadavg()[0], "extra": extra,
            "reference_shape": reference.get("shape"), "decode_ratio": reference.get("decode_ratio"),
            "prefill_ratio": reference.get("prefill_ratio"),
            "reference_decode_ms": reference.get("reference_decode_ms"),
            "reference_prefill_ms": reference.get("reference_prefill_ms")}


def _effective_reference(request: ProfileRequest, done: Counter) -> SubnetShape | None:
    """The reference to interleave with: the request's, except when continuing a table measured without one
    (kept absolute, so that the table stays of one kind); a table measured against another reference is an error."""
    if request.reference is None:
        return None
    request.reference.check(request.source.dims)
    if not sum(done.values()):
        return request.reference
    have = LatencyTable.load(request.out).rows["reference_shape"].dropna()
    if have.empty:
        logger.warning("%s was measured without a reference shape; continuing it with absolute timings only",
                    request.out)
        return None
    if have.iloc[0] != str(request.reference):
        raise InputError(f"{request.out} holds ratios to reference {have.iloc[0]}, not {request.reference}; pass "
                         f"--reference {have.iloc[0]} to continue it")
    return request.reference


class _ReferenceModel:
    """The reference shape's checkpoint, prepared in the flow, loaded again every ``reload`` shapes."""

    def __init__(self, request: ProfileRequest, flow: Flow, shape: SubnetShape):
        self.request, self.flow, self.shape = request, flow, shape
        self.tmp = tempfile.TemporaryDirectory(prefix="amoeba-reference-")
        self.loaded: LoadedReference | None = None
        self.used = 0
        self.loads = 0
        self.checkpoint = build_random_checkpoint(request.source.config, shape, Path(self.tmp.name) / "checkpoint",
                                                  dtype=_checkpoint_dtype(request), seed=request.seed)
        if getattr(flow, "needs_tokenizer", True):
            save_tokenizer(request.source, self.checkpoint)

    def next(self) -> LoadedReference:
        if self.loaded is not None and self.used % max(1, self.request.reference_reload) == 0:
            self.flow.close(self.loaded.handle)
            self.loaded = None
        if self.loaded is None:
            workdir = Path(self.tmp.name) / f"work{self.loads}"
            workdir.mkdir(parents=True, exist_ok=True)
            handle = self.flow.prepare(self.checkpoint, workdir, self.request.settings,
                                       self.request.compute_device or self.request.device.backend)
            self.loaded = LoadedReference(self.shape, handle, load=self.loads)
            self.loads += 1
        self.used += 1
        return self.loaded

    def close(self) -> None:
        try:
            if self.loaded is not None:
                self.flow.close(self.loaded.handle)
        finally:
            self.tmp.cleanup()


def _checkpoint_dtype(request: ProfileRequest) -> str:
    return request.settings.dtype if request.settings.dtype in ("fp32", "bf16", "fp16") else "fp32"


def _overwrite_when_complete(request: ProfileRequest, flow: Flow, **kwargs) -> ProfileSummary:
    """``--overwrite``: measure the new table beside the old one (``<name>.new.csv``) and replace the old table
    only when the new one is complete; an interrupt leaves the old table as it was."""
    staged = request.out.with_name(request.out.stem + ".new.csv")
    staged.unlink(missing_ok=True)
    eval_path(staged).unlink(missing_ok=True)
    summary = run_profile(dataclasses.replace(request, out=staged, overwrite=False, resume=False), flow, **kwargs)
    if eval_path(staged).exists():
        os.replace(eval_path(staged), eval_path(request.out))
        summary.eval_path = eval_path(request.out)
    else:
        eval_path(request.out).unlink(missing_ok=True)  # the old evaluation described the old table
    os.replace(staged, request.out)
    summary.out = request.out
    return summary


def run_profile(request: ProfileRequest, flow: Flow, *,
                on_start: Callable[[list[PlannedShape], int], None] | None = None,
                on_row: Callable[[dict], None] | None = None,
                power_source=None) -> ProfileSummary:
    """Measure every planned shape not yet in ``request.out``, appending a row after each.

    ``power_source``: a telemetry source to use instead of the device's own (tests pass a fake).
    """
    if request.overwrite and request.out.exists() and request.out.stat().st_size:
        return _overwrite_when_complete(request, flow, on_start=on_start, on_row=on_row, power_source=power_source)
    started = time.perf_counter()
    if request.settings.decode_tokens < 1:
        raise InputError("context length must exceed the prompt length by at least one decode token")
    plan = request.full_plan()
    done = existing_rows(request)
    pending = pending_measurements(plan, done, passes=request.passes, seed=request.seed)
    reference_shape = _effective_reference(request, done)
    total = len(plan) * max(1, request.passes)
    if on_start:
        on_start(pending, total - len(pending))
    power_name = None
    if pending:
        reason = flow.unavailable_reason()
        if reason:
            from amoeba_search.profiling.flows.base import FlowUnavailable

            raise FlowUnavailable(f"flow {request.flow_name!r} cannot run here: {reason}")
        if power_source is None and request.device.power_source:
            try:
                power_source = open_power_source(request.device.power_source)
            except TelemetryUnavailable:
                power_source = None
        power_name = getattr(power_source, "name", None)
    import amoeba_search

    versions = {"amoeba_search": amoeba_search.__version__, "python": platform.python_version(), **flow.versions()}
    needs_tokenizer = getattr(flow, "needs_tokenizer", True)
    measured = 0
    reference = None
    try:
        if pending and reference_shape is not None:
            reference = _ReferenceModel(request, flow, reference_shape)
        for planned in pending:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="amoeba-profile-") as tmp:
                checkpoint = build_random_checkpoint(request.source.config, planned.shape, Path(tmp) / "checkpoint",
                                                     dtype=_checkpoint_dtype(request), seed=request.seed)
                if needs_tokenizer and not save_tokenizer(request.source, checkpoint):
                    if getattr(flow, "needs_tokenizer", False):
                        raise InputError(f"flow {request.flow_name!r} needs a tokenizer, and model "
                                         f"{request.source.spec!r} has none; pass --model with a tokenizer")
                m, energy, load, attempts = _measure_least_disturbed(
                    request, flow, checkpoint, Path(tmp) / "work", power_source,
                    reference=reference.next() if reference is not None else None)
            row = _row(request, planned, m, energy, versions, time.perf_counter() - t0, power_name)
            row["other_load"] = None if load is None else round(load, 3)
            if attempts > 1:
                row["extra"]["attempts"] = attempts
            append_row(request.out, row)
            measured += 1
            if on_row:
                on_row(row)
    finally:
        try:
            if reference is not None:
                reference.close()
        finally:
            if power_source is not None and hasattr(power_source, "close"):
                power_source.close()
    summary = ProfileSummary(out=request.out, planned=total, skipped=total - len(pending), measured=measured,
                             elapsed_s=time.perf_counter() - started,
                             full_grid=len(SearchSpace.default(request.source.dims)), power=power_name)
    table = LatencyTable.load(request.out)
    if (table.rows["role"] == "holdout").any():
        profiling_s = float(table.rows["elapsed_s"].fillna(0).sum())
        busy = table.rows["other_load"].dropna()
        summary.eval_path = table.write_eval(extra={
            "full_grid": summary.full_grid, "measurements": len(table), "profiling_time_s": round(profiling_s, 1),
            "other_load_median": round(float(busy.median()), 3) if len(busy) else None,
            "other_load_max": round(float(busy.max()), 3) if len(busy) else None,
            "reference_shape": str(table.reference_shape) if table.has_ratios else None,
            "noise_floor": table.noise_floor()})
        summary.evaluation = json.loads(eval_path(request.out).read_text())
    return summary
