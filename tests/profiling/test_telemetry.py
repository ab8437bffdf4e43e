import sys

import pytest

from amoeba_search.profiling import machine as machine_mod
from amoeba_search.profiling.telemetry import (JtopPower, NvmlPower, PowerSampler, TelemetryUnavailable,
                                               integrate_energy, open_power_source)
from tests.profiling.fakes import fake_jtop, fake_pynvml


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_integration_is_exact_for_constant_and_linear_power():
    constant = [(0.0, 10.0), (1.0, 10.0), (2.0, 10.0)]
    assert integrate_energy(constant, [[0.5, 1.5]]) == pytest.approx(10.0)
    ramp = [(0.0, 0.0), (2.0, 20.0)]  # P(t) = 10 t
    assert integrate_energy(ramp, [[0.0, 1.0], [1.0, 2.0]]) == pytest.approx(20.0)  # integral of 10t over [0, 2]
    assert integrate_energy(ramp, [[0.5, 1.5]]) == pytest.approx(10.0)
    assert integrate_energy([(0.0, 5.0)], [[0, 1]]) is None  # one sample is not enough


def test_nvml_power_is_read_and_integrated_into_energy_per_token(monkeypatch):
    fake = fake_pynvml(milliwatts=120_000.0)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    source = open_power_source("nvml")
    assert isinstance(source, NvmlPower) and source.read_watts() == 120.0
    clock = FakeClock()
    sampler = PowerSampler(source, clock=clock)
    for t in (0.0, 0.5, 1.0, 1.5, 2.0):  # drive the sampler by hand with a fake clock
        clock.t = t
        sampler.sample_once()
    decode_windows = [[0.2, 0.7], [1.2, 1.7]]  # two repeats, 0.5 s each
    tokens = 2 * 10
    energy_mj_per_token = sampler.energy_joules(decode_windows) / tokens * 1e3
    assert energy_mj_per_token == pytest.approx(120.0 * 1.0 / tokens * 1e3)  # 120 W x 1 s / 20 tokens = 6 J
    assert fake.calls["power"] == 6 and fake.calls["init"] == 1
    source.close()
    assert fake.calls["shutdown"] == 1


def test_background_sampler_collects_samples(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(milliwatts=50_000.0))
    with PowerSampler(open_power_source("nvml"), interval=0.001) as sampler:
        import time

        start = time.perf_counter()
        time.sleep(0.05)
        end = time.perf_counter()
    assert len(sampler.samples) >= 3
    assert sampler.energy_joules([[start, end]]) == pytest.approx(50.0 * (end - start))


def test_jtop_power_is_read(monkeypatch):
    monkeypatch.setitem(sys.modules, "jtop", fake_jtop(milliwatts=9_000.0))
    source = open_power_source("jtop")
    assert isinstance(source, JtopPower) and source.read_watts() == 9.0
    source.close()


def test_missing_telemetry_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    monkeypatch.setitem(sys.modules, "jtop", None)
    with pytest.raises(TelemetryUnavailable, match="nvidia-ml-py"):
        open_power_source("nvml")
    with pytest.raises(TelemetryUnavailable, match="jetson-stats"):
        open_power_source("jtop")
    with pytest.raises(TelemetryUnavailable, match="no power"):
        open_power_source(None)


def test_detection_reads_fake_nvml_and_jtop(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(names=("NVIDIA H100 80GB HBM3", b"NVIDIA A5000")))
    monkeypatch.setitem(sys.modules, "jtop", fake_jtop())
    monkeypatch.setattr(machine_mod, "open", lambda *a, **k: (_ for _ in ()).throw(OSError()), raising=False)
    info = machine_mod.detect_machine()
    assert info.gpus == ("NVIDIA H100 80GB HBM3", "NVIDIA A5000")
    assert "Orin NX" in info.jetson_model
