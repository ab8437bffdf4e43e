"""Test doubles for profiling: a flow whose latency is a known additive function of the checkpoint's
shape, fake telemetry modules (pynvml, jtop), and helpers to build tables."""
from __future__ import annotations

import json
import types
from pathlib import Path

from amoeba_search.profiling.flows.base import Measurement, MeasureSettings
from amoeba_search.profiling.machine import MachineInfo
from amoeba_search.profiling.table_schema import COLUMNS, SCHEMA_VERSION


def additive_latency(depth: int, ffn_ratio: float, heads_ratio: float) -> tuple[float, float]:
    """(prefill ms, decode ms): a fixed part plus depth x a per-layer part that depends on the width."""
    per_layer = 0.2 + 0.5 * ffn_ratio + 0.3 * heads_ratio + 0.05 * ffn_ratio * heads_ratio
    return 40.0 + depth * 8 * per_layer, 3.0 + depth * per_layer


class FakeFlow:
    """Reads the cut checkpoint's config and returns :func:`additive_latency` exactly; counts calls."""

    name = "fake"
    needs_tokenizer = False

    def __init__(self, dims, *, fail_after: int | None = None, windows: bool = True):
        self.full_ffn, self.group = dims.ffn_size, dims.group_size
        self.fail_after = fail_after
        self.windows = windows
        self.prepared: list[Path] = []
        self.measure_calls = 0

    def unavailable_reason(self):
        return None

    def versions(self):
        return {"fake": "1.0"}

    def prepare(self, checkpoint, workdir, settings, device):
        config = json.loads((Path(checkpoint) / "config.json").read_text())
        self.prepared.append(Path(checkpoint))
        heads_per_group = config["num_attention_heads"] // config["num_key_value_heads"]
        return {"depth": config["num_hidden_layers"], "f": config["intermediate_size"] / self.full_ffn,
                "h": heads_per_group / self.group, "device": device}

    def measure(self, handle, settings: MeasureSettings) -> Measurement:
        self.measure_calls += 1
        if self.fail_after is not None and self.measure_calls > self.fail_after:
            raise KeyboardInterrupt  # as if the run were killed
        import time

        prefill, decode = additive_latency(handle["depth"], handle["f"], handle["h"])
        extra = {"memory_kind": "fake"}
        if self.windows:
            now = time.perf_counter()
            extra["prefill_windows"] = [[now, now + prefill / 1e3]] * settings.repeats
            extra["decode_windows"] = [[now + prefill / 1e3, now + prefill / 1e3 + decode * settings.decode_tokens / 1e3]] * settings.repeats
        return Measurement([prefill] * settings.repeats, [decode] * settings.repeats, peak_memory_bytes=1000,
                           extra=extra)

    def close(self, handle):
        pass


class ConstantPower:
    """A power source reading a constant number of watts."""

    name = "fake-power"

    def __init__(self, watts: float = 50.0):
        self.watts = watts
        self.closed = False

    def read_watts(self):
        return self.watts

    def close(self):
        self.closed = True


def fake_pynvml(names=("NVIDIA RTX A5000",), milliwatts: float = 120_000.0) -> types.ModuleType:
    """A stand-in for the ``pynvml`` module (nvidia-ml-py)."""
    mod = types.ModuleType("pynvml")
    mod.calls = {"init": 0, "power": 0, "shutdown": 0}

    def init():
        mod.calls["init"] += 1

    def power(handle):
        mod.calls["power"] += 1
        return milliwatts

    mod.nvmlInit = init
    mod.nvmlShutdown = lambda: mod.calls.__setitem__("shutdown", mod.calls["shutdown"] + 1)
    mod.nvmlDeviceGetCount = lambda: len(names)
    mod.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    mod.nvmlDeviceGetName = lambda h: names[h[1]]
    mod.nvmlDeviceGetPowerUsage = power
    return mod


def fake_jtop(milliwatts: float = 9_000.0, model: str = "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"):
    """A stand-in for the ``jtop`` module (jetson-stats >= 4)."""
    mod = types.ModuleType("jtop")

    class jtop:  # noqa: N801 - the real class is lower case
        def __init__(self, interval=0.5):
            self.power = {"rail": {}, "tot": {"power": milliwatts, "avg": milliwatts}}
            self.board = {"hardware": {"Model": model}}
            self.started = False

        def start(self):
            self.started = True

        def close(self):
            self.started = False

        def __enter__(self):
            self.start()
            return self

        def __exit__(self, *exc):
            self.close()

    mod.jtop = jtop
    return mod


def machine(**overrides) -> MachineInfo:
    base = dict(cpu_model="Test CPU 9000", cpu_cores=2, memory_bytes=8 * 2**30, gpus=(), jetson_model=None,
                probes={"nvml": "pynvml not installed", "jetson": "not a Jetson"})
    base.update(overrides)
    return MachineInfo(**base)


def table_row(shape: str, *, role: str = "design", prefill: float = 10.0, decode: float = 2.0, **overrides) -> dict:
    """One valid table row for ``shape`` (string form), every column filled."""
    from amoeba_search.shapes import SubnetShape

    s = SubnetShape.parse(shape)
    row = {col: "" for col in COLUMNS}
    row.update({
        "schema_version": SCHEMA_VERSION, "device": "cpu", "machine": "Test CPU 9000 (2 cores)", "flow": "torch",
        "flow_options": "{}", "dtype": "fp32", "batch": 1, "prompt_len": 16, "context_len": 24, "decode_tokens": 8,
        "threads": 2, "model": "tiny", "model_fingerprint": "tiny|llama-L6", "shape": str(s), "depth": s.depth,
        "ffn_ratio": s.ffn_ratio, "heads_ratio": s.heads_ratio, "ffn_channels": 24, "num_heads": 2,
        "num_kv_heads": 2, "hidden_size": 32, "head_dim": 8, "params": 1000, "role": role,
        "prefill_ms_median": prefill, "prefill_ms_iqr": 0.1, "prefill_ms_min": prefill, "prefill_repeats": 3,
        "decode_ms_median": decode, "decode_ms_iqr": 0.01, "decode_ms_min": decode, "decode_repeats": 3,
        "versions": "{}", "timestamp": "2026-01-01T00:00:00",
    })
    row.update(overrides)
    return row
