"""The one device/dtype rule: auto picks CUDA + bf16, else bf16 on CPUs with bf16 instructions, else fp32."""
import pytest
import torch

from amoeba_search import compute
from amoeba_search.compute import ComputeError, resolve_compute


@pytest.fixture
def cpu_with(monkeypatch):
    """Pretend this CPU reports exactly ``flags`` (so the test means the same on an EPYC and on a Xeon)."""
    def set_flags(*flags):
        monkeypatch.setattr(compute, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return set_flags


@pytest.fixture
def fake_gpu(monkeypatch):
    def set_gpu(count=1, bf16=True, name="NVIDIA H200"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    return set_gpu


def test_auto_on_a_cpu_without_bf16_is_fp32(cpu_with):
    cpu_with("avx2", "fma")
    chosen = resolve_compute("auto", "auto")
    assert (chosen.device, chosen.dtype) == (torch.device("cpu"), torch.float32)
    assert "no bf16 instructions" in chosen.describe()


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16", "bf16"])
def test_auto_on_a_cpu_with_bf16_is_bf16(cpu_with, flag):
    cpu_with("avx2", flag)
    chosen = resolve_compute("auto", "auto")
    assert chosen.dtype == torch.bfloat16 and flag in chosen.reason
    assert chosen.to_dict() == {"device": "cpu", "dtype": "bf16", "reason": chosen.reason}


def test_auto_prefers_cuda_with_bf16_and_falls_back_to_fp16(fake_gpu):
    fake_gpu()
    chosen = resolve_compute("auto", "auto")
    assert (str(chosen.device), chosen.dtype) == ("cuda:0", torch.bfloat16) and "H200" in chosen.reason
    fake_gpu(count=2, bf16=False, name="Tesla V100")
    chosen = resolve_compute("cuda", "auto", rank=1)
    assert (str(chosen.device), chosen.dtype) == ("cuda:1", torch.float16)
    with pytest.raises(ComputeError, match="V100 has no bf16"):
        resolve_compute("cuda", "bf16")


def test_explicit_choices_pass_through(cpu_with, fake_gpu):
    cpu_with()
    assert resolve_compute("cpu", "fp32").reason == "asked"
    fake_gpu(count=2)
    assert str(resolve_compute("cuda:1", "fp16").device) == "cuda:1"


@pytest.mark.parametrize("device, message", [
    ("tpu", "unknown device 'tpu'; use cpu, cuda"),
    ("mps", "device 'mps' is not supported; use cpu, cuda"),
    ("gpu0", "unknown device 'gpu0'"),
    ("cuda", "no CUDA device here"),
    ("cuda:1", "no CUDA device here"),
])
def test_bad_devices_are_one_clear_error(cpu_with, device, message):
    cpu_with()
    with pytest.raises(ComputeError, match=message):
        resolve_compute(device, "auto")


def test_cuda_index_beyond_the_devices(fake_gpu):
    fake_gpu(count=1)
    with pytest.raises(ComputeError, match="has 1 CUDA device"):
        resolve_compute("cuda:3", "auto")


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_16_bit_on_a_cpu_without_its_instructions_is_refused(cpu_with, dtype):
    cpu_with("avx2")
    with pytest.raises(ComputeError, match=f"no {dtype} instructions.*use --dtype fp32"):
        resolve_compute("cpu", dtype)
    assert resolve_compute("cpu", dtype, allow_slow=True).dtype == compute.DTYPES[dtype]


def test_fp16_on_a_cpu_with_fp16_instructions(cpu_with):
    cpu_with("avx512_fp16")
    assert resolve_compute("cpu", "fp16").dtype == torch.float16


def test_unknown_dtype(cpu_with):
    cpu_with()
    with pytest.raises(ComputeError, match="unknown dtype 'int4'"):
        resolve_compute("cpu", "int4")
