"""Fixtures shared by the profiling tests."""
import pytest

from amoeba_search.profiling import devices as devices_mod
from amoeba_search.profiling import flows
from tests.conftest import tiny_config
from tests.profiling import fakes


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A tiny model config, a fake flow in the registry, a fake machine and no real bandwidth benchmark."""
    tiny_config().save_pretrained(tmp_path / "tiny")
    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(devices_mod, "measure_memory_bandwidth",
                        lambda: {"read_gbs": 20.0, "copy_gbs": 15.0, "method": "fake"})
    monkeypatch.setattr(devices_mod, "measure_matmul_tflops", lambda: {"fp32": 0.1})
    import amoeba_search.profiling.machine as machine_mod

    monkeypatch.setattr(machine_mod, "detect_machine", lambda: fakes.machine())
    monkeypatch.setitem(flows.FLOWS, "fake", "tests.profiling.test_cli_profile:TinyFakeFlow")
    return tmp_path
