"""Where the model runs and in what precision: one rule for every command.

``resolve_compute("auto", "auto")`` is CUDA with bf16 where a GPU is present (fp16 on GPUs without bf16), else the
CPU with bf16 when this CPU has bf16 arithmetic (AVX512-BF16, AMX or Arm BF16), else the CPU with fp32. Without
those instructions PyTorch emulates bf16 and fp16 and runs them several times slower than fp32 (measured on an
AMD EPYC with AVX2 only: a 256 x 576 x 1536 linear ran at 0.015 TFLOP/s in bf16 against 0.084 in fp32), so asking
for them there is refused unless ``allow_slow``.
"""
from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from amoeba_search.errors import InputError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
DEVICE_HELP = "cpu, cuda, cuda:N or auto (CUDA where present, else the CPU)"
DTYPE_HELP = ("auto, fp32, bf16 or fp16; auto is bf16 on CUDA and on CPUs with bf16 instructions "
              "(AVX512-BF16, AMX, Arm BF16), else fp32")

# CPU instruction sets that make a dtype fast, by the flag names Linux reports (x86 "flags", Arm "Features").
_FAST_CPU_FLAGS = {torch.bfloat16: ("avx512_bf16", "amx_bf16", "bf16"),
                   torch.float16: ("avx512_fp16", "amx_fp16", "fphp")}


class ComputeError(InputError):
    """A device or dtype this machine cannot run (well); the message says what to use instead."""


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).removeprefix("torch."))


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ComputeError(f"unknown dtype {name!r}; use one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[name]


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_fast_at(dtype: torch.dtype) -> str | None:
    """The instruction set that makes ``dtype`` fast on this CPU, or None (fp32 is always fast)."""
    if dtype == torch.float32:
        return "fp32"
    found = [flag for flag in _FAST_CPU_FLAGS.get(dtype, ()) if flag in cpu_flags()]
    return found[0] if found else None


@dataclass(frozen=True)
class Compute:
    """A resolved device and dtype, and why they were chosen (every output records ``describe()``)."""

    device: torch.device
    dtype: torch.dtype
    reason: str

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    def describe(self) -> str:
        return f"{self.device} {self.dtype_name} ({self.reason})"

    def to_dict(self) -> dict:
        return {"device": str(self.device), "dtype": self.dtype_name, "reason": self.reason}


def parse_device(name: str, *, rank: int = 0) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (``cuda:rank`` where CUDA is present) as a checked device."""
    if name == "auto":
        return torch.device(f"cuda:{rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ComputeError(f"unknown device {name!r}; use {DEVICE_HELP}") from None
    if device.type not in ("cpu", "cuda"):
        raise ComputeError(f"device {name!r} is not supported; use {DEVICE_HELP}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ComputeError(f"device {name!r}: no CUDA device here (torch {torch.__version__}); use --device cpu, "
                               "or install a CUDA build of torch")
        index = device.index if device.index is not None else rank
        if index >= torch.cuda.device_count():
            raise ComputeError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                               f"numbered 0..{torch.cuda.device_count() - 1}")
        device = torch.device("cuda", index)
    return device


def resolve_compute(device: str = "auto", dtype: str = "auto", *, rank: int = 0, allow_slow: bool = False) -> Compute:
    """Resolve a ``--device``/``--dtype`` pair by the module's rule; raise :class:`ComputeError` when the dtype
    cannot run, or (unless ``allow_slow``) runs emulated and slow, on the device."""
    where = parse_device(device, rank=rank)
    if where.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if dtype == "auto":
            chosen = torch.bfloat16 if bf16 else torch.float16
            return Compute(where, chosen, f"auto: {torch.cuda.get_device_name(where)}"
                                          f"{'' if bf16 else ' has no bf16'}")
        chosen = parse_dtype(dtype)
        if chosen == torch.bfloat16 and not bf16:
            raise ComputeError(f"--dtype bf16: {torch.cuda.get_device_name(where)} has no bf16; use --dtype fp16 or fp32")
        return Compute(where, chosen, "asked")
    cpu = _cpu_name()
    if dtype == "auto":
        isa = cpu_fast_at(torch.bfloat16)
        if isa:
            return Compute(where, torch.bfloat16, f"auto: {cpu} has {isa}")
        return Compute(where, torch.float32, f"auto: {cpu} has no bf16 instructions")
    chosen = parse_dtype(dtype)
    if cpu_fast_at(chosen) is None and not allow_slow:
        wanted = " or ".join(flag.upper() for flag in _FAST_CPU_FLAGS[chosen][:2])
        raise ComputeError(f"--dtype {dtype}: this CPU ({cpu}) has no {dtype} instructions ({wanted}), so torch "
                           f"emulates {dtype} several times slower than fp32; use --dtype fp32 (or auto)")
    return Compute(where, chosen, "asked")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "this CPU"

