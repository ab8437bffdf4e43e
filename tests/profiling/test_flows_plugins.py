"""The runtime flow plugins (llamacpp, ort, openvino, tensorrt-llm, mlc) on a tiny random checkpoint.

A flow whose runtime is not installed is skipped with its own reason; TensorRT-LLM and MLC-LLM need an
NVIDIA GPU, so only their ``unavailable_reason()`` is checked on machines without one.
"""
from __future__ import annotations

import math

import pytest

from amoeba_search.profiling.flows import FlowUnavailable, MeasureSettings, get_flow
from amoeba_search.profiling.flows import _common
from tests.conftest import tiny_model, tiny_tokenizer

CPU_FLOWS = ("llamacpp", "ort", "openvino")
GPU_FLOWS = ("tensorrt-llm", "mlc")
SETTINGS = MeasureSettings(prompt_len=8, decode_tokens=3, repeats=2, threads=1)


@pytest.fixture(scope="module")
def cut_checkpoint(tmp_path_factory):
    """A cut-shaped model: 3 layers, FFN 40, 4 heads x head_dim 16 = 64 != hidden 48 (head_dim explicit).

    head_dim 16 because ONNX Runtime's CPU GroupQueryAttention needs a multiple of 16.
    """
    path = tmp_path_factory.mktemp("cut-ckpt")
    tiny_model("llama", num_hidden_layers=3, intermediate_size=40, num_attention_heads=4,
               head_dim=16).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("name", CPU_FLOWS)
def test_cpu_flow_prepares_and_measures(name, cut_checkpoint, tmp_path):
    flow = get_flow(name)
    reason = flow.unavailable_reason()
    if reason:
        pytest.skip(f"{name} runtime not installed: {reason}")
    assert flow.versions(), "an available flow reports its runtime versions"
    handle = flow.prepare(cut_checkpoint, tmp_path, SETTINGS, "cpu")
    try:
        m = flow.measure(handle, SETTINGS)
    finally:
        flow.close(handle)
    assert len(m.prefill_ms) == SETTINGS.repeats and len(m.decode_ms_per_token) == SETTINGS.repeats
    for value in m.prefill_ms + m.decode_ms_per_token:
        assert value > 0 and math.isfinite(value)
    assert m.peak_memory_bytes is None or m.peak_memory_bytes >= 0


@pytest.mark.parametrize("name", GPU_FLOWS)
def test_gpu_flows_say_why_they_cannot_run(name, tmp_path):
    flow = get_flow(name)
    assert flow.name == name
    reason = flow.unavailable_reason()
    if reason is None:
        pytest.skip(f"{name} is installed and a GPU is visible: nothing to explain")
    assert "GPU" in reason
    if "not installed" in reason:
        assert "index" in reason  # points at the vendor's own package index
    with pytest.raises(FlowUnavailable):
        flow.prepare(tmp_path, tmp_path, SETTINGS, "cuda")


@pytest.mark.parametrize("name,package", [("llamacpp", "llama-cpp-python"), ("ort", "onnxruntime-genai"),
                                          ("openvino", "openvino"), ("tensorrt-llm", "tensorrt_llm"),
                                          ("mlc", "mlc-llm")])
def test_missing_runtime_names_the_package(name, package, monkeypatch):
    monkeypatch.setattr(_common, "missing_module", lambda module: True)
    reason = get_flow(name).unavailable_reason()
    assert reason and package in reason


@pytest.mark.parametrize("name", CPU_FLOWS)
def test_unsupported_settings_fail_early_with_the_fix(name, cut_checkpoint, tmp_path):
    flow = get_flow(name)
    if flow.unavailable_reason():
        pytest.skip(f"{name} runtime not installed")
    with pytest.raises(ValueError, match="batch 1"):
        flow.prepare(cut_checkpoint, tmp_path, MeasureSettings(batch=2), "cpu")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        flow.prepare(cut_checkpoint, tmp_path, MeasureSettings(prompt_len=200, decode_tokens=8), "cpu")
    with pytest.raises(ValueError, match="dtype"):
        flow.prepare(cut_checkpoint, tmp_path, MeasureSettings(dtype="int3"), "cpu")


def test_ort_rejects_head_dim_its_cpu_kernel_cannot_run(tmp_path):
    flow = get_flow("ort")
    if flow.unavailable_reason():
        pytest.skip("onnxruntime-genai not installed")
    tiny_model("llama").save_pretrained(tmp_path / "ckpt")  # head_dim 8
    with pytest.raises(ValueError, match="multiple of 16"):
        flow.prepare(tmp_path / "ckpt", tmp_path, SETTINGS, "cpu")
