"""What the local machine is (CPU, NVIDIA GPUs, Jetson board) and two microbenchmarks of its CPU.

Detection reads ``/proc/cpuinfo``, ``pynvml`` (NVIDIA GPUs) and the device tree or ``jtop`` (Jetson);
each probe that is missing or fails simply contributes nothing. The CPU microbenchmarks give the
*measured* memory bandwidth and matmul throughput that stand in for a spec sheet on ``--device cpu``.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MachineInfo:
    cpu_model: str
    cpu_cores: int                      # logical CPUs this process may run on
    memory_bytes: int | None
    gpus: tuple[str, ...] = ()          # NVIDIA GPU names through NVML
    jetson_model: str | None = None     # e.g. "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"
    probes: dict = field(default_factory=dict, compare=False)  # probe name -> "ok" or why it gave nothing

    def summary(self) -> str:
        parts = [f"{self.cpu_model} ({self.cpu_cores} cores)"]
        if self.memory_bytes:
            parts.append(f"{self.memory_bytes / 2**30:.0f} GiB RAM")
        parts.append("GPUs: " + (", ".join(self.gpus) if self.gpus else "no NVIDIA GPU"))
        if self.jetson_model:
            parts.append(f"Jetson: {self.jetson_model}")
        return "; ".join(parts)

    def slug(self) -> str:
        """A short stable name for this machine's CPU (used to key cached measurements)."""
        text = f"{self.cpu_model}-{self.cpu_cores}c"
        return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-").lower()


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def nvidia_gpus() -> tuple[tuple[str, ...], str]:
    """Names of the NVIDIA GPUs NVML sees, and a one-line note on how the probe went."""
    try:
        import pynvml
    except ImportError:
        return (), "pynvml not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return (), f"NVML unavailable: {exc}"
    try:
        names = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return tuple(names), "ok"
    except Exception as exc:
        return (), f"NVML query failed: {exc}"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def jetson_model() -> tuple[str | None, str]:
    """The Jetson board name from the device tree, else from ``jtop``; None off Jetson."""
    try:
        with open("/proc/device-tree/model", "rb") as handle:
            text = handle.read().decode(errors="replace").strip("\x00 \n")
        if "jetson" in text.lower() or "orin" in text.lower():
            return text, "ok (device tree)"
    except OSError:
        pass
    try:
        from jtop import jtop
    except ImportError:
        return None, "not a Jetson (no device-tree model; jtop not installed)"
    try:
        with jtop() as jetson:
            board = getattr(jetson, "board", {}) or {}
            hardware = board.get("hardware", board) if isinstance(board, dict) else {}
            model = hardware.get("Model") or hardware.get("Module") or hardware.get("model")
            return (str(model) if model else None), "ok (jtop)"
    except Exception as exc:
        return None, f"jtop failed: {exc}"


def detect_machine() -> MachineInfo:
    gpus, gpu_note = nvidia_gpus()
    jetson, jetson_note = jetson_model()
    return MachineInfo(cpu_model=cpu_model_name(), cpu_cores=cpu_cores(), memory_bytes=memory_bytes(),
                       gpus=gpus, jetson_model=jetson, probes={"nvml": gpu_note, "jetson": jetson_note})


# -- CPU microbenchmarks ------------------------------------------------------------------------------

def measure_memory_bandwidth(*, megabytes: int = 512, repeats: int = 5, threads: int | None = None) -> dict:
    """Best-of-``repeats`` read and copy bandwidth of main memory in GB/s (torch on CPU).

    Read: ``sum`` over a ``megabytes`` fp32 tensor (bytes read / time): the access pattern of decode,
    which streams every weight once per token. Copy: ``dst.copy_(src)``, counted as read + write.
    """
    import torch

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        n = megabytes * 2**20 // 4
        src = torch.ones(n, dtype=torch.float32)
        dst = torch.empty_like(src)
        dst.copy_(src)  # fault the pages in
        read, copy = 0.0, 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            src.sum()
            read = max(read, src.numel() * 4 / (time.perf_counter() - start) / 1e9)
            start = time.perf_counter()
            dst.copy_(src)
            copy = max(copy, 2 * src.numel() * 4 / (time.perf_counter() - start) / 1e9)
        return {"read_gbs": round(read, 2), "copy_gbs": round(copy, 2), "megabytes": megabytes,
                "repeats": repeats, "threads": torch.get_num_threads(),
                "method": f"torch fp32 sum (read) and copy_ (read+write) over {megabytes} MB, best of {repeats}"}
    finally:
        torch.set_num_threads(old_threads)


def measure_matmul_tflops(*, size: int = 1024, repeats: int = 5, threads: int | None = None,
                          dtypes: tuple[str, ...] = ("fp32", "bf16")) -> dict:
    """Best-of-``repeats`` dense matmul throughput in TFLOP/s per dtype (torch on CPU)."""
    import torch

    torch_dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        result = {}
        for name in dtypes:
            a = torch.randn(size, size).to(torch_dtypes[name])
            b = torch.randn(size, size).to(torch_dtypes[name])
            a @ b  # warm-up
            best = 0.0
            for _ in range(repeats):
                start = time.perf_counter()
                a @ b
                best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e12)
            result[name] = round(best, 4)
        return result
    finally:
        torch.set_num_threads(old_threads)


# -- contention: how busy the CPUs are with work other than ours -------------------------------------

def cpu_snapshot() -> tuple[float, float, float] | None:
    """``(wall s, busy CPU s of the whole machine, CPU s of this process)`` from ``/proc/stat``; None if
    unreadable. Busy = user + nice + system + irq + softirq + steal (time a hypervisor gave elsewhere)."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:9]] + [0] * max(0, 9 - len(fields))
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    mine = os.times()
    return time.monotonic(), (user + nice + system + irq + softirq + steal) / ticks, mine.user + mine.system


def other_load(start, end) -> float | None:
    """Average number of cores busy with other processes between two :func:`cpu_snapshot` s."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    return max(0.0, ((end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0]))


def wait_until_quiet(max_load: float, *, timeout: float, probe: float = 1.0) -> float | None:
    """Sleep until other processes use at most ``max_load`` cores (probed over ``probe`` s) or ``timeout``
    seconds pass; return the last probed load."""
    deadline = time.monotonic() + timeout
    while True:
        start = cpu_snapshot()
        time.sleep(probe)
        load = other_load(start, cpu_snapshot())
        if load is None or load <= max_load or time.monotonic() >= deadline:
            return load
