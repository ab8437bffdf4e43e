"""A real (tiny) run of the torch flow: numbers must be positive, not fast."""
import json

import pytest
import torch

from amoeba_search.profiling.flows.base import FlowUnavailable, MeasureSettings
from amoeba_search.profiling.flows.torch_flow import TorchFlow
from amoeba_search.profiling.model_source import build_random_checkpoint, load_model_source, table_fingerprint
from amoeba_search.profiling.roofline import param_counts
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_config


@pytest.fixture
def config_path(tmp_path):
    tiny_config().save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny" / "config.json"


def test_random_checkpoint_has_the_cut_shape(config_path, tmp_path):
    source = load_model_source(str(config_path))
    shape = SubnetShape(3, 0.5, 0.667)
    ckpt = build_random_checkpoint(source.config, shape, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    dims = source.dims
    assert config["num_hidden_layers"] == 3
    assert config["intermediate_size"] == shape.ffn_channels(dims)
    assert config["num_attention_heads"] == shape.num_heads(dims)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert sum(p.numel() for p in model.parameters()) == param_counts(source.config, shape)["total"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_model_source_fingerprint_and_errors(config_path, tmp_path):
    source = load_model_source(str(config_path))
    assert source.name == "tiny" and source.fingerprint() == table_fingerprint("tiny", source.config)
    assert "-L6-" in source.fingerprint()
    with pytest.raises(ValueError, match="does not exist|cannot read model"):
        load_model_source(str(tmp_path / "nowhere"))
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="not supported"):
        load_model_source(str(gpt2 / "config.json"))


def test_torch_flow_measures_positive_numbers(config_path, tmp_path):
    source = load_model_source(str(config_path))
    ckpt = build_random_checkpoint(source.config, SubnetShape(3, 1.0, 1.0), tmp_path / "ckpt")
    flow = TorchFlow(warmup=1)
    assert flow.unavailable_reason() is None and "torch" in flow.versions()
    settings = MeasureSettings(prompt_len=8, decode_tokens=4, repeats=2, threads=1)
    handle = flow.prepare(ckpt, tmp_path, settings, "cpu")
    try:
        m = flow.measure(handle, settings)
    finally:
        flow.close(handle)
    assert len(m.prefill_ms) == 2 and len(m.decode_ms_per_token) == 2
    assert all(v > 0 for v in m.prefill_ms + m.decode_ms_per_token)
    assert m.peak_memory_bytes is None or m.peak_memory_bytes >= 0
    assert len(m.extra["decode_windows"]) == 2 and m.extra["memory_kind"].startswith("rss")


def test_torch_flow_refuses_cuda_without_a_gpu(config_path, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    source = load_model_source(str(config_path))
    ckpt = build_random_checkpoint(source.config, SubnetShape(2, 1.0, 1.0), tmp_path / "ckpt")
    with pytest.raises(FlowUnavailable, match="CUDA"):
        TorchFlow().prepare(ckpt, tmp_path, MeasureSettings(), "cuda")
    with pytest.raises(ValueError, match="runs fp32"):
        TorchFlow().prepare(ckpt, tmp_path, MeasureSettings(dtype="q4_0"), "cpu")
