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
    isa: tuple[str, ...] = ()           # the CPU's speed-relevant ISA flags (see ISA_FLAGS), sorted

    def summary(self) -> str:
        parts = [f"{self.cpu_model} ({', '.join([f'{self.cpu_cores} cores'] + isa_summary(self.isa))})"]
        if self.memory_bytes:
            parts.append(f"{self.memory_bytes / 2**30:.0f} GiB RAM")
        parts.append("GPUs: " + (", ".join(self.gpus) if self.gpus else "no NVIDIA GPU"))
        if self.jetson_model:
            parts.append(f"Jetson: {self.jetson_model}")
        return "; ".join(parts)

    def cpu_label(self) -> str:
        """The CPU in one phrase with its notable ISA, e.g. ``Intel Xeon (2 cores, AVX-512, AMX)``."""
        return cpu_label(self.cpu_model, self.cpu_cores, self.isa)

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


# /proc/cpuinfo flags (x86 "flags", ARM "Features") that change how fast a flow's kernels run
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
             "asimd", "asimdhp", "asimddp", "sve", "sve2", "bf16", "i8mm")


def isa_flags() -> tuple[str, ...]:
    """This CPU's flags among :data:`ISA_FLAGS`, sorted; empty when ``/proc/cpuinfo`` is unreadable."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return tuple(sorted(set(value.split()) & set(ISA_FLAGS)))
    except OSError:
        pass
    return ()


def isa_summary(flags) -> list[str]:
    """The flags a reader recognises, coarsest first: ``["AVX-512", "AMX"]``, ``["AVX2"]``, ``["NEON", "SVE"]``."""
    flags = set(flags)
    labels = []
    if "avx512f" in flags:
        labels.append("AVX-512")
    elif "avx2" in flags:
        labels.append("AVX2")
    if flags & {"amx_tile", "amx_bf16", "amx_int8"}:
        labels.append("AMX")
    if "asimd" in flags:
        labels.append("NEON")
    if flags & {"sve", "sve2"}:
        labels.append("SVE2" if "sve2" in flags else "SVE")
    return labels


def short_cpu_name(model: str) -> str:
    """``Intel(R) Xeon(R) Processor`` -> ``Intel Xeon``; ``AMD EPYC 7B13 64-Core Processor`` -> ``AMD EPYC 7B13``."""
    import re

    text = re.sub(r"\((R|TM|tm|r)\)", "", model)
    text = re.sub(r"\b\d+-Core\b", "", text)
    text = re.sub(r"\b(Processor|CPU)\b", "", text)
    return " ".join(text.split()) or model.strip()


def cpu_label(model: str, cores: int | None, isa=None) -> str:
    """``<short CPU name> (<cores> cores[, ISA summary])``."""
    parts = ([f"{cores} cores"] if cores else []) + isa_summary(isa or ())
    name = short_cpu_name(model)
    return f"{name} ({', '.join(parts)})" if parts else name


def parse_machine_label(label: str) -> tuple[str, int | None]:
    """A table's ``machine`` column, ``<CPU model> (<n> cores)`` as the profiler writes it for a CPU device,
    as ``(CPU model, cores)``; other labels (a GPU or Jetson name) as ``(label, None)``."""
    import re

    match = re.fullmatch(r"\s*(.*?)\s*\((\d+) cores?\)\s*", label or "")
    return (match.group(1), int(match.group(2))) if match else ((label or "").strip(), None)


def machine_mismatch(table_machine: str, machine: MachineInfo, *, table_isa=None,
                     table_name: str = "the latency table") -> str | None:
    """None when a table measured on ``table_machine`` (its ``machine`` column) was measured on a machine like
    ``machine``, else one line that says both and what it means for the numbers.

    Compared: the CPU model (ignoring (R), (TM), "Processor"), the core count and, where the table recorded
    them (``table_isa``; older tables did not), the ISA flags. A table without ISA flags that matches by name
    and cores cannot be told apart from another VM sold under the same name (two "AMD EPYC (2 cores)" VMs
    decoded the same model 1.5x apart), so it gets a line too. A GPU or Jetson label is compared by name with
    this machine's GPUs and board.
    """
    model, cores = parse_machine_label(table_machine)
    if cores is None:  # an accelerator's name
        names = [g.lower() for g in machine.gpus] + ([machine.jetson_model.lower()] if machine.jetson_model else [])
        if model.lower() in names:
            return None
        theirs, mine = model, (", ".join(machine.gpus) or machine.jetson_model or f"{machine.cpu_label()} "
                                                                                 f"without a GPU")
    else:
        isa = None if table_isa is None else tuple(sorted(set(table_isa) & set(ISA_FLAGS)))
        same_cpu = short_cpu_name(model).lower() == short_cpu_name(machine.cpu_model).lower()
        same_isa = isa is None or not machine.isa or set(isa) == set(machine.isa)
        theirs, mine = cpu_label(model, cores, isa), machine.cpu_label()
        if same_cpu and cores == machine.cpu_cores and same_isa:
            if isa is not None or not machine.isa:
                return None
            return (f"{table_name} was measured on {theirs} and records no ISA flags, so it matches this {mine} "
                    f"by name and cores only: machines sold under one name can differ in speed; re-measure here "
                    f"(amoeba-profile) for a table that is this machine's")
        if theirs == mine and isa is not None:  # only flags the summary does not name differ
            extra, missing = sorted(set(machine.isa) - set(isa)), sorted(set(isa) - set(machine.isa))
            mine += " with " + ", ".join([f"+{f}" for f in extra] + [f"-{f}" for f in missing])
    return (f"{table_name} was measured on {theirs}, this is {mine}: its latencies are that machine's; "
            f"verification here measures this machine, so expect them to differ")


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
                       gpus=gpus, jetson_model=jetson, probes={"nvml": gpu_note, "jetson": jetson_note},
                       isa=isa_flags())


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
    unreadable. Busy = user + nice + system + irq + softirq + steal (time a hypervisor gave elsewhere). This
    process's CPU includes its finished children's: a flow that builds its model in a subprocess (ONNX Runtime
    GenAI's builder) is not other load."""
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
    ours = mine.user + mine.system + mine.children_user + mine.children_system
    return time.monotonic(), (user + nice + system + irq + softirq + steal) / ticks, ours


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
