"""Power telemetry: read board power through NVML (NVIDIA GPUs) or jtop (Jetson), sample it in a
background thread, and integrate it over timed windows into energy.

Timed windows come from the flow: a flow that puts ``extra["prefill_windows"]`` and
``extra["decode_windows"]`` (lists of ``[start, end]`` in ``time.perf_counter()`` seconds) into its
``Measurement`` gets energy for exactly those windows; otherwise the whole ``measure`` call is used.
"""
from __future__ import annotations

import threading
import time
from bisect import bisect_left
from typing import Protocol, Sequence


class TelemetryUnavailable(RuntimeError):
    """No power reading on this machine; the message says why."""


class PowerSource(Protocol):
    name: str

    def read_watts(self) -> float: ...

    def close(self) -> None: ...


class NvmlPower:
    """Board power of one NVIDIA GPU via ``pynvml`` (``nvmlDeviceGetPowerUsage``, milliwatts)."""

    name = "nvml"

    def __init__(self, index: int = 0):
        try:
            import pynvml
        except ImportError:
            raise TelemetryUnavailable("pynvml is not installed (pip install nvidia-ml-py)") from None
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:
            raise TelemetryUnavailable(f"NVML unavailable: {exc}") from None
        self._nvml = pynvml

    def read_watts(self) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass


def _jtop_total_mw(power) -> float:
    """Total board power in mW from ``jtop.power`` (jtop >= 4: dict with 'tot'; jtop 3: (total, rails))."""
    if isinstance(power, dict):
        total = power.get("tot") or power.get("total")
        if isinstance(total, dict):
            return float(total.get("power", total.get("cur")))
        raise TelemetryUnavailable("jtop reports no total power ('tot') on this board")
    if isinstance(power, (tuple, list)) and power and isinstance(power[0], dict):
        return float(power[0].get("cur", power[0].get("power")))
    raise TelemetryUnavailable(f"cannot read jtop power of type {type(power).__name__}")


class JtopPower:
    """Total module power of a Jetson via ``jtop`` (jetson-stats), milliwatts."""

    name = "jtop"

    def __init__(self, interval: float = 0.1):
        try:
            from jtop import jtop
        except ImportError:
            raise TelemetryUnavailable("jtop is not installed (pip install jetson-stats)") from None
        try:
            try:
                self._jetson = jtop(interval=interval)
            except TypeError:
                self._jetson = jtop()
            self._jetson.start()
        except Exception as exc:
            raise TelemetryUnavailable(f"jtop failed to start: {exc}") from None

    def read_watts(self) -> float:
        return _jtop_total_mw(self._jetson.power) / 1000.0

    def close(self) -> None:
        try:
            self._jetson.close()
        except Exception:
            pass


def open_power_source(kind: str | None, *, index: int = 0) -> PowerSource:
    """The power source for a device's ``power_source`` ("nvml", "jtop"); raises TelemetryUnavailable."""
    if kind == "nvml":
        return NvmlPower(index)
    if kind == "jtop":
        return JtopPower()
    raise TelemetryUnavailable("this device reports no power (CPU energy counters are not read)")


class PowerSampler:
    """Samples ``source`` every ``interval`` seconds in a daemon thread while running.

    ``with PowerSampler(src) as sampler: ...`` then ``sampler.energy_joules(windows)``.
    """

    def __init__(self, source: PowerSource, *, interval: float = 0.02, clock=time.perf_counter):
        self.source = source
        self.interval = interval
        self.clock = clock
        self.samples: list[tuple[float, float]] = []  # (time s, watts), time-ordered
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample_once(self) -> None:
        try:
            watts = float(self.source.read_watts())
        except Exception:
            self.errors += 1
            return
        self.samples.append((self.clock(), watts))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval)

    def start(self) -> "PowerSampler":
        self.sample_once()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="power-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample_once()

    def __enter__(self) -> "PowerSampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def energy_joules(self, windows: Sequence[Sequence[float]]) -> float | None:
        """Energy over the union of ``windows`` ([start, end] seconds); None without two samples."""
        return integrate_energy(self.samples, windows)


def _power_at(samples: Sequence[tuple[float, float]], times: list[float], t: float) -> float:
    i = bisect_left(times, t)
    if i <= 0:
        return samples[0][1]
    if i >= len(samples):
        return samples[-1][1]
    (t0, p0), (t1, p1) = samples[i - 1], samples[i]
    return p0 if t1 == t0 else p0 + (p1 - p0) * (t - t0) / (t1 - t0)


def integrate_energy(samples: Sequence[tuple[float, float]], windows: Sequence[Sequence[float]]) -> float | None:
    """Trapezoidal integral of power (W) over each window (s), in joules; power is interpolated
    linearly between samples and held constant beyond the first and last sample."""
    if len(samples) < 2 or not windows:
        return None
    times = [t for t, _ in samples]
    total = 0.0
    for start, end in windows:
        if end <= start:
            continue
        points = [start] + [t for t in times if start < t < end] + [end]
        powers = [_power_at(samples, times, t) for t in points]
        total += sum((points[k + 1] - points[k]) * (powers[k] + powers[k + 1]) / 2 for k in range(len(points) - 1))
    return total
