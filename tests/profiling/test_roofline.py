import pytest

from amoeba_search.profiling.devices import BUILTIN
from amoeba_search.profiling.roofline import RooflineEstimator, param_counts, roofline_estimate, weight_bytes_per_token
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_config, tiny_model


@pytest.mark.parametrize("family,tied", [("llama", False), ("llama", True), ("qwen2", False)])
def test_param_count_matches_a_real_model(family, tied):
    model = tiny_model(family, tie_word_embeddings=tied)
    counted = sum(p.numel() for p in model.parameters())  # tied parameters are counted once
    assert param_counts(model.config)["total"] == counted


def test_smollm2_shaped_weights_and_bandwidth_bound():
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)
    assert param_counts(config)["total"] == 134_515_008  # SmolLM2-135M
    bytes_fp32 = weight_bytes_per_token(config)
    assert bytes_fp32 == pytest.approx(538e6, rel=0.01)
    est = roofline_estimate(BUILTIN["h100"], config, dtype="bf16")
    assert est["source"] == "roofline-estimate" and est["decode_bound"] == "memory"
    assert est["decode_ms"] == pytest.approx(bytes_fp32 / 2 / 3.35e12 * 1e3, rel=0.05)
    smaller = roofline_estimate(BUILTIN["h100"], config, SubnetShape(15, 0.5, 0.333), dtype="bf16")
    assert smaller["decode_ms"] < est["decode_ms"]


def test_estimator_has_the_table_interface_and_labels_itself():
    est = RooflineEstimator(BUILTIN["orin-nx"], tiny_config(), dtype="fp16")
    detail = est.predict_detail("d3-f0.5-h1", metric="e2e")
    assert detail["source"] == "roofline-estimate" and "not a measurement" in detail["note"]
    assert est.predict("d3-f0.5-h1") > 0
    with pytest.raises(ValueError, match="no memory bandwidth"):
        roofline_estimate(BUILTIN["cpu"], tiny_config())
    with pytest.raises(ValueError, match="no byte size"):
        roofline_estimate(BUILTIN["h100"], tiny_config(), dtype="fp7")
