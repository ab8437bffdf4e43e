"""Devices: named spec sheets (cited vendor data, or measured for this machine's CPU) and the check that
the machine we run on is the device a table will be labelled with.

Built-in devices are below. More can be added as JSON files in ``profiles/devices/<name>.json`` or passed
with ``--device-spec file.json``; the file holds the fields of :class:`DeviceSpec` (see ``to_dict``).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from amoeba_search.errors import AmoebaError, InputError
from amoeba_search.jsonfile import read_json
from amoeba_search.paths import atomic_write_text, portable_path
from amoeba_search.profiling.machine import MachineInfo, measure_matmul_tflops, measure_memory_bandwidth

logger = logging.getLogger(__name__)

KINDS = ("cpu", "nvidia-gpu", "jetson")


class UnknownDeviceError(InputError):
    """No device of that name; the message lists the close names and how to add one."""


class DeviceMismatchError(AmoebaError, RuntimeError):
    """``--device`` names hardware this machine is not."""


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    kind: str                                   # cpu | nvidia-gpu | jetson
    description: str
    memory_bandwidth_gbs: float | None = None   # peak DRAM bandwidth, GB/s (1e9 bytes/s)
    peak_tflops: dict = field(default_factory=dict)  # dtype -> dense TFLOP/s
    memory_gb: float | None = None
    match: dict = field(default_factory=dict)   # gpu_name / jetson_model / cpu_model: substring to find
    sources: tuple = ()                         # ({"document": ..., "url": ..., "note": ...}, ...)
    provenance: str = "datasheet"               # datasheet | measured | declared
    notes: str = ""
    # nvpmodel power modes (Jetson): ({"name": "15W", "watts": 15, "gpu_max_mhz": ... or absent}, ...)
    power_modes: tuple = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"device {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "sources", tuple(dict(s) for s in self.sources))
        object.__setattr__(self, "power_modes", tuple(dict(m) for m in self.power_modes))
        for mode in self.power_modes:
            if "name" not in mode:
                raise InputError(f"device {self.name!r}: every power mode needs a name, got {mode!r}")

    @property
    def backend(self) -> str:
        """The compute backend a flow should use on this device: ``cpu`` or ``cuda``."""
        return "cpu" if self.kind == "cpu" else "cuda"

    @property
    def power_source(self) -> str | None:
        return {"nvidia-gpu": "nvml", "jetson": "jtop"}.get(self.kind)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["sources"] = list(self.sources)
        data["power_modes"] = list(self.power_modes)
        return data

    def power_mode(self, name: str) -> dict:
        """The power mode called ``name`` (``15W``, ``15w`` or ``15``); ValueError naming the modes otherwise."""
        key = str(name).strip().upper().removesuffix("W")
        for mode in self.power_modes:
            if str(mode["name"]).upper().removesuffix("W") == key:
                return mode
        known = ", ".join(m["name"] for m in self.power_modes) or "none"
        raise InputError(f"device {self.name!r} has no power mode {name!r}; its modes: {known}")

    @classmethod
    def from_dict(cls, data: dict) -> "DeviceSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"device spec has unknown fields {unknown}; allowed: {sorted(known)}")
        missing = [k for k in ("name", "kind", "description") if k not in data]
        if missing:
            raise InputError(f"device spec lacks required fields {missing}")
        return cls(**data)


_A5000_DOC = {"document": "NVIDIA RTX A5000 datasheet",
              "url": "https://www.nvidia.com/content/dam/en-zz/Solutions/products/workstations/nvidia-rtx-a5000-datasheet.pdf"}
_ORIN_NX_DOC = {"document": "NVIDIA Jetson Orin NX Series Modules Data Sheet (DS-10712-001)",
                "url": "https://developer.nvidia.com/downloads/jetson-orin-nx-series-data-sheet"}
_JETSON_POWER_DOC = {"document": "NVIDIA Jetson Linux Developer Guide, Platform Power and Performance: Jetson Orin "
                                 "Nano Series, Jetson Orin NX Series and Jetson AGX Orin Series (Supported Modes "
                                 "and Power Efficiency)",
                     "url": "https://docs.nvidia.com/jetson/archives/r36.3/DeveloperGuide/SD/PlatformPowerAndPerformance/"
                            "JetsonOrinNanoSeriesJetsonOrinNxSeriesAndJetsonAgxOrinSeries.html"}
_AGX_ORIN_BRIEF = {"document": "NVIDIA Jetson AGX Orin Series Technical Brief",
                   "url": "https://www.nvidia.com/content/dam/en-zz/Solutions/gtcf21/jetson-orin/nvidia-jetson-agx-orin-technical-brief.pdf"}
_H100_DOC = {"document": "NVIDIA H100 Tensor Core GPU Datasheet",
             "url": "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet"}

BUILTIN: dict[str, DeviceSpec] = {
    "cpu": DeviceSpec(
        name="cpu", kind="cpu",
        description="this machine's CPU (model and cores detected; bandwidth and FLOP/s measured here)",
        provenance="measured",
        notes="No vendor sheet: memory bandwidth and matmul throughput are measured on first use and cached."),
    "a5000": DeviceSpec(
        name="a5000", kind="nvidia-gpu", description="NVIDIA RTX A5000 (24 GB GDDR6, Ampere GA102)",
        memory_bandwidth_gbs=768.0, memory_gb=24.0,
        peak_tflops={"fp32": 27.8, "tf32": 55.6, "fp16": 111.1, "bf16": 111.1},
        match={"gpu_name": "A5000"},
        sources=({**_A5000_DOC, "note": "768 GB/s, 24 GB, single-precision 27.8 TFLOPS, tensor 222.2 TFLOPS "
                                        "(with sparsity; dense fp16/bf16 = half = 111.1; tf32 dense = 55.6)"},)),
    "orin-nx-16gb": DeviceSpec(
        name="orin-nx-16gb", kind="jetson",
        description="NVIDIA Jetson Orin NX 16GB (1024-core Ampere GPU, 32 Tensor Cores, LPDDR5)",
        memory_bandwidth_gbs=102.4, memory_gb=16.0,
        peak_tflops={"fp32": 1.88, "fp16": 15.0, "bf16": 15.0},
        match={"jetson_model": "Orin NX"},
        sources=({**_ORIN_NX_DOC, "note": "16GB module: 100 TOPS (INT8, sparse; GPU + 2 DLAs); 128-bit LPDDR5 at "
                                          "102.4 GB/s; GPU 1024 CUDA cores and 32 Tensor Cores at up to 918 MHz; "
                                          "module power 10 W to 25 W"},
                 {**_AGX_ORIN_BRIEF, "note": "derived, not printed: fp32 = 1024 cores x 2 FLOP x 0.918 GHz; "
                                             "fp16 dense = 32 Tensor Cores x 512 FLOP/clk x 0.918 GHz, the per-core "
                                             "rate implied by AGX Orin's figures"},
                 {**_JETSON_POWER_DOC, "note": "nvpmodel power modes of the 16GB module (non-Super BSP): 10W, 15W, "
                                               "25W, MAXN"}),
        # Per-mode GPU frequency caps are left out: only MAXN's (the data sheet's 918 MHz maximum) could be checked;
        # the 10W/15W/25W caps of the developer guide's table could not be verified here, so they are not given.
        power_modes=({"name": "10W", "watts": 10}, {"name": "15W", "watts": 15}, {"name": "25W", "watts": 25},
                     {"name": "MAXN", "watts": None, "gpu_max_mhz": 918}),
        notes="fp32/fp16 peaks are derived from core counts and the MAXN GPU clock, not printed in the datasheet; "
              "a lower power mode caps the clock (scale the peaks down). Alias: orin-nx."),
    "orin-nx-8gb": DeviceSpec(
        name="orin-nx-8gb", kind="jetson",
        description="NVIDIA Jetson Orin NX 8GB (1024-core Ampere GPU, 32 Tensor Cores, LPDDR5)",
        memory_bandwidth_gbs=102.4, memory_gb=8.0,
        peak_tflops={"fp32": 1.57, "fp16": 12.5, "bf16": 12.5},
        match={"jetson_model": "Orin NX"},
        sources=({**_ORIN_NX_DOC, "note": "8GB module: 70 TOPS (INT8, sparse; GPU + 1 DLA); 128-bit LPDDR5 at "
                                          "102.4 GB/s; GPU 1024 CUDA cores and 32 Tensor Cores at up to 765 MHz; "
                                          "module power 10 W to 20 W"},
                 {**_AGX_ORIN_BRIEF, "note": "derived, not printed: fp32 = 1024 cores x 2 FLOP x 0.765 GHz; "
                                             "fp16 dense = 32 Tensor Cores x 512 FLOP/clk x 0.765 GHz"},
                 {**_JETSON_POWER_DOC, "note": "nvpmodel power modes of the 8GB module: 10W, 15W, 20W, MAXN"}),
        # As for the 16GB: per-mode GPU frequency caps are not given, only MAXN's (the data sheet's 765 MHz maximum).
        power_modes=({"name": "10W", "watts": 10}, {"name": "15W", "watts": 15}, {"name": "20W", "watts": 20},
                     {"name": "MAXN", "watts": None, "gpu_max_mhz": 765}),
        notes="fp32/fp16 peaks are derived from core counts and the MAXN GPU clock, not printed in the datasheet. "
              "The device tree names both modules 'Orin NX': pick 8gb or 16gb yourself (--force-device is not needed)."),
    "h100": DeviceSpec(
        name="h100", kind="nvidia-gpu", description="NVIDIA H100 SXM5 80GB (HBM3)",
        memory_bandwidth_gbs=3350.0, memory_gb=80.0,
        peak_tflops={"fp32": 67.0, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "fp8": 1978.9},
        match={"gpu_name": "H100"},
        sources=({**_H100_DOC, "note": "H100 SXM: 3.35 TB/s, 80 GB, FP32 67 TFLOPS; TF32 989, BF16/FP16 1,979, "
                                       "FP8 3,958 TFLOPS listed with sparsity (dense = half)"},),
        notes="SXM5 figures; an H100 PCIe (2.0 TB/s, 51 TFLOPS FP32) also matches 'H100': add a spec for it."),
}
# Old names that keep working: the alias gets the spec under its own name, so tables labelled with it still match.
ALIASES = {"orin-nx": "orin-nx-16gb"}
for _alias, _target in ALIASES.items():
    BUILTIN[_alias] = dataclasses.replace(BUILTIN[_target], name=_alias,
                                          description=f"alias of {_target}: {BUILTIN[_target].description}")


def _spec_files(profiles: Path | None) -> dict[str, Path]:
    from amoeba_search.profiling import profiles_dir

    folder = (profiles or profiles_dir()) / "devices"
    if not folder.is_dir():
        return {}
    return {path.stem: path for path in sorted(folder.glob("*.json"))}


def load_spec_file(path: str | os.PathLike) -> DeviceSpec:
    path = Path(path)
    try:
        data = read_json(path, what="device spec")
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:
        raise InputError(f"cannot read device spec {path}: {exc.strerror or exc}") from None
    try:
        return DeviceSpec.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise InputError(f"device spec {path}: {exc}") from None


def list_devices(*, profiles: Path | None = None, spec_files: Iterable[str | os.PathLike] = ()) -> dict[str, DeviceSpec]:
    """All known devices: built-ins, then ``profiles/devices/*.json``, then ``spec_files`` (later wins)."""
    devices = dict(BUILTIN)
    for path in list(_spec_files(profiles).values()) + [Path(p) for p in spec_files]:
        spec = load_spec_file(path)
        devices[spec.name] = spec
    return devices


def get_device(name: str, *, profiles: Path | None = None,
               spec_files: Iterable[str | os.PathLike] = ()) -> DeviceSpec:
    devices = list_devices(profiles=profiles, spec_files=spec_files)
    key = name.strip().lower()
    if key in devices:
        return devices[key]
    if name in devices:
        return devices[name]
    close = difflib.get_close_matches(key, list(devices), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise UnknownDeviceError(
        f"unknown device {name!r}; {hint}known: {', '.join(sorted(devices))}. "
        f"Add one as profiles/devices/{key}.json or pass --device-spec FILE.json")


# -- the local CPU: measured spec -------------------------------------------------------------------

def measured_cpu_spec(base: DeviceSpec, machine: MachineInfo, *, refresh: bool = False, measure: bool = True,
                      cache: Path | None = None) -> DeviceSpec:
    """``base`` (kind cpu) completed with this machine's CPU model, memory and measured bandwidth/FLOP/s.

    Measurements are cached per CPU model and core count (in ``cache`` or the amoeba-search cache); each
    number is labelled as measured, with the method and the load average while it ran. With
    ``measure=False`` nothing is measured: cached numbers are used if there are any.
    """
    from amoeba_search.paths import cache_dir

    path = (cache or cache_dir("devices")) / f"cpu-{machine.slug()}.json"
    data = None
    if path.exists() and not refresh:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("the cached CPU measurements in %s are unreadable (%s); %s", path, err,
                           "measuring again" if measure else "ignoring them")
            data = None
    if data is None and not measure:
        return dataclasses.replace(base, description=f"{machine.cpu_model}, {machine.cpu_cores} cores "
                                                     f"(bandwidth not measured yet)",
                                   memory_gb=round(machine.memory_bytes / 2**30, 1) if machine.memory_bytes else None)
    if data is None:
        load_before = os.getloadavg()[0]
        bandwidth = measure_memory_bandwidth()
        flops = measure_matmul_tflops()
        data = {"bandwidth": bandwidth, "tflops": flops, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "loadavg_1min": round(max(load_before, os.getloadavg()[0]), 2), "machine": machine.summary()}
        atomic_write_text(path, json.dumps(data, indent=2))
    bw = data["bandwidth"]
    source = {"document": "measured on this machine", "url": portable_path(path),
              "note": f"{bw['method']}: read {bw['read_gbs']} GB/s, copy {bw['copy_gbs']} GB/s; matmul "
                      f"TFLOP/s {data['tflops']}; {data['measured_at']}, load average {data['loadavg_1min']}"}
    return dataclasses.replace(
        base, description=f"{machine.cpu_model}, {machine.cpu_cores} cores",
        memory_bandwidth_gbs=bw["read_gbs"], peak_tflops=dict(data["tflops"]),
        memory_gb=round(machine.memory_bytes / 2**30, 1) if machine.memory_bytes else None,
        sources=base.sources + (source,), provenance="measured")


# -- is this machine that device? --------------------------------------------------------------------

def matches(spec: DeviceSpec, machine: MachineInfo) -> tuple[bool, str]:
    """Whether ``machine`` is ``spec``'s hardware, and a one-line reason."""
    if spec.kind == "cpu":
        want = spec.match.get("cpu_model")
        if want and want.lower() not in machine.cpu_model.lower():
            return False, f"needs a CPU whose model contains {want!r}, this one is {machine.cpu_model!r}"
        return True, f"CPU {machine.cpu_model!r}"
    if spec.kind == "nvidia-gpu":
        want = spec.match.get("gpu_name", spec.name)
        found = [g for g in machine.gpus if want.lower() in g.lower()]
        if found:
            return True, f"GPU {found[0]!r}"
        seen = ", ".join(machine.gpus) if machine.gpus else f"no NVIDIA GPU ({machine.probes.get('nvml', 'not probed')})"
        return False, f"needs an NVIDIA GPU whose name contains {want!r}; this machine has {seen}"
    want = spec.match.get("jetson_model", spec.name)
    if machine.jetson_model and want.lower() in machine.jetson_model.lower():
        return True, f"Jetson {machine.jetson_model!r}"
    seen = machine.jetson_model or f"no Jetson board ({machine.probes.get('jetson', 'not probed')})"
    return False, f"needs a Jetson whose model contains {want!r}; this machine has {seen}"


def check_device(spec: DeviceSpec, machine: MachineInfo, *, force: bool = False) -> str:
    """Return the match reason, or raise :class:`DeviceMismatchError` unless ``force``."""
    ok, reason = matches(spec, machine)
    if ok:
        return reason
    if force:
        return f"forced: {reason}"
    raise DeviceMismatchError(
        f"--device {spec.name} {reason}. Run on that device, pick the device this machine is "
        f"(--list-devices), or pass --force-device to label the measurements {spec.name!r} anyway")
