"""Measure single shapes now, with exactly the settings of an existing lookup table.

The search uses this to verify its Pareto front: predicted latencies come from the table, verified ones from
a fresh measurement in the same flow, on the same kind of machine, with the same prompt and decode lengths.
"""
from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Callable

from amoeba_search.profiling.devices import get_device, matches
from amoeba_search.profiling.flows import get_flow
from amoeba_search.profiling.flows.base import MeasureSettings
from amoeba_search.profiling.lut import LatencyTable
from amoeba_search.profiling.machine import detect_machine
from amoeba_search.profiling.model_source import build_random_checkpoint
from amoeba_search.profiling.profiler import measure_shape
from amoeba_search.shapes import SubnetShape


def latency_meter(table: LatencyTable, config, *, metric: str = "decode", repeats: int = 5
                  ) -> tuple[Callable[[SubnetShape], float] | None, str]:
    """``(measure, why)``: ``measure(shape) -> ms`` when the table's device and flow are here, else ``None``."""
    try:
        spec = get_device(table.device)
    except ValueError as err:
        return None, str(err)
    ok, why = matches(spec, detect_machine())
    if not ok:
        return None, f"this machine is not {table.device}: {why}"
    flow = get_flow(table.flow, **json.loads(table.flow_options or "{}"))
    reason = flow.unavailable_reason()
    if reason:
        return None, reason
    settings = MeasureSettings(dtype=table.dtype, batch=int(table.batch), prompt_len=int(table.prompt_len),
                               decode_tokens=int(table.decode_tokens), repeats=repeats,
                               threads=int(table.threads) or None)

    def measure(shape: SubnetShape) -> float:
        with tempfile.TemporaryDirectory(prefix="amoeba-verify-") as tmp:
            checkpoint = build_random_checkpoint(config, shape, Path(tmp) / "checkpoint", dtype=settings.dtype)
            result, _ = measure_shape(flow, checkpoint, Path(tmp) / "work", settings, spec.backend)
        decode = statistics.median(result.decode_ms_per_token) if result.decode_ms_per_token else 0.0
        prefill = statistics.median(result.prefill_ms)
        return {"decode": decode, "prefill": prefill, "e2e": prefill + settings.decode_tokens * decode}[metric]

    return measure, f"{table.flow} on {spec.name}, measured now"
