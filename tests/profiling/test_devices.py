import json

import pytest

from amoeba_search.profiling.devices import (BUILTIN, DeviceMismatchError, DeviceSpec, UnknownDeviceError, check_device,
                                             get_device, list_devices, measured_cpu_spec)
from tests.profiling.fakes import machine


def test_builtin_devices_cite_their_sources():
    for name in ("cpu", "a5000", "orin-nx", "h100"):
        assert name in BUILTIN
    assert BUILTIN["a5000"].memory_bandwidth_gbs == 768.0
    assert BUILTIN["orin-nx"].memory_bandwidth_gbs == 102.4
    assert BUILTIN["h100"].memory_bandwidth_gbs == 3350.0
    for spec in BUILTIN.values():
        if spec.kind != "cpu":
            assert spec.sources and all(s["url"].startswith("https://") and s["document"] for s in spec.sources)
            assert spec.peak_tflops["fp32"] > 0 and spec.memory_gb


def test_unknown_device_suggests_close_names(tmp_path):
    with pytest.raises(UnknownDeviceError, match="did you mean 'a5000'"):
        get_device("a500", profiles=tmp_path)
    with pytest.raises(UnknownDeviceError, match="did you mean 'orin-nx'"):
        get_device("orin_nx", profiles=tmp_path)
    assert get_device("H100", profiles=tmp_path).name == "h100"


def test_devices_can_be_added_by_spec_file(tmp_path):
    spec = {"name": "rpi5", "kind": "cpu", "description": "Raspberry Pi 5", "memory_bandwidth_gbs": 17.1,
            "match": {"cpu_model": "Cortex-A76"}, "sources": [{"document": "x", "url": "https://example.org"}],
            "provenance": "declared"}
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "rpi5.json").write_text(json.dumps(spec))
    assert get_device("rpi5", profiles=tmp_path).memory_bandwidth_gbs == 17.1
    other = tmp_path / "mine.json"
    other.write_text(json.dumps({**spec, "name": "mine"}))
    assert "mine" in list_devices(profiles=tmp_path, spec_files=[other])
    roundtrip = DeviceSpec.from_dict(get_device("rpi5", profiles=tmp_path).to_dict())
    assert roundtrip.sources[0]["url"] == "https://example.org"


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"name": "x", "kind": "tpu", "description": "?"}), "kind must be one of"),
    (json.dumps({"name": "x", "kind": "cpu", "description": "?", "speed": 3}), "unknown fields"),
    (json.dumps({"name": "x"}), "lacks required fields"),
])
def test_bad_spec_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        list_devices(profiles=tmp_path, spec_files=[path])


def test_device_mismatch_is_refused_unless_forced():
    cpu_box = machine()
    with pytest.raises(DeviceMismatchError, match="--force-device"):
        check_device(BUILTIN["h100"], cpu_box)
    with pytest.raises(DeviceMismatchError, match="Jetson"):
        check_device(BUILTIN["orin-nx"], cpu_box)
    assert check_device(BUILTIN["h100"], cpu_box, force=True).startswith("forced")
    assert "A5000" in check_device(BUILTIN["a5000"], machine(gpus=("NVIDIA RTX A5000",)))
    assert check_device(BUILTIN["orin-nx"], machine(jetson_model="NVIDIA Jetson Orin NX Developer Kit"))
    assert check_device(BUILTIN["cpu"], cpu_box)
    pinned = DeviceSpec(name="epyc", kind="cpu", description="d", match={"cpu_model": "EPYC"})
    with pytest.raises(DeviceMismatchError, match="EPYC"):
        check_device(pinned, cpu_box)


def test_cpu_spec_is_measured_and_labelled(tmp_path, monkeypatch):
    from amoeba_search.profiling import devices

    monkeypatch.setattr(devices, "measure_memory_bandwidth",
                        lambda: {"read_gbs": 21.5, "copy_gbs": 18.0, "method": "fake"})
    monkeypatch.setattr(devices, "measure_matmul_tflops", lambda: {"fp32": 0.2})
    spec = measured_cpu_spec(BUILTIN["cpu"], machine(), cache=tmp_path)
    assert spec.memory_bandwidth_gbs == 21.5 and spec.provenance == "measured"
    assert "measured" in spec.sources[-1]["document"] and "Test CPU 9000" in spec.description
    monkeypatch.setattr(devices, "measure_memory_bandwidth", lambda: pytest.fail("cached: no new measurement"))
    assert measured_cpu_spec(BUILTIN["cpu"], machine(), cache=tmp_path).memory_bandwidth_gbs == 21.5
    unmeasured = measured_cpu_spec(BUILTIN["cpu"], machine(cpu_model="Other"), cache=tmp_path, measure=False)
    assert unmeasured.memory_bandwidth_gbs is None
