"""FLAP bias compensation carried by the supernet view and by exported checkpoints (HF and GGUF)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from amoeba_search.models.export import export_subnet
from amoeba_search.models.supernet import Supernet
from amoeba_search.selection.pipeline import channel_means
from amoeba_search.selection.width import width_orders
from tests.selection.flap_bias_oracle import add_output_biases, bias_compensation
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_model
from tests.selection.test_width import _batches

SHAPE = SubnetShape(6, 0.5, 1 / 3)


def _flap(family="llama", **overrides):
    """A supernet in FLAP order, its orders and channel statistics."""
    supernet = Supernet(tiny_model(family, **overrides))
    ffn, heads, stats = width_orders(supernet, _batches(), "flap")
    supernet.set_order(ffn_orders=ffn, head_orders=heads)
    return supernet, ffn, heads, stats


def _logits(supernet, ids):
    with torch.no_grad():
        return supernet(ids).logits


def test_view_equals_the_width_modules_compensation_hooks():
    supernet, ffn, heads, stats = _flap()
    ids = _batches(seed=1)[0]
    supernet.set_active(SHAPE)
    handles = add_output_biases(supernet, bias_compensation(supernet, stats, ffn, heads, SHAPE))
    reference = _logits(supernet, ids)
    for handle in handles:
        handle.remove()
    plain = _logits(supernet, ids)
    full_plain = (supernet.set_active(supernet.full_shape()), _logits(supernet, ids))[1]

    supernet.set_channel_means(channel_means(stats))
    supernet.set_active(SHAPE)
    torch.testing.assert_close(_logits(supernet, ids), reference, atol=1e-4, rtol=1e-4)
    assert (reference - plain).abs().max() > 1e-2  # compensation changes the subnet
    supernet.set_active(supernet.full_shape())  # nothing removed, nothing added
    torch.testing.assert_close(_logits(supernet, ids), full_plain, atol=0, rtol=0)
    supernet.set_channel_means(None)
    supernet.set_active(SHAPE)
    torch.testing.assert_close(_logits(supernet, ids), plain, atol=0, rtol=0)


def test_compensation_follows_a_later_reorder():
    supernet, ffn, heads, stats = _flap()
    means = channel_means(stats)
    ids = _batches(seed=1)[0]
    late = Supernet(tiny_model(), channel_means=means)  # means first, importance order afterwards
    late.set_order(ffn_orders=ffn, head_orders=heads)
    supernet.set_channel_means(means)
    for s in (supernet, late):
        s.set_active(SHAPE)
    torch.testing.assert_close(_logits(late, ids), _logits(supernet, ids), atol=1e-5, rtol=1e-5)


def test_wrong_means_are_refused():
    supernet, *_, stats = _flap()
    means = channel_means(stats)
    with pytest.raises(ValueError, match="channel means must be"):
        supernet.set_channel_means({"ffn": means["ffn"][:-1], "attn": means["attn"]})


@pytest.mark.parametrize("shape, layers, flags", [
    (SubnetShape(4, 0.5, 2 / 3), [0, 2, 3, 5], {"mlp_bias": True, "attention_bias": True}),
    (SubnetShape(6, 0.5, 1), None, {"mlp_bias": True, "attention_bias": False}),
    (SubnetShape(3, 1, 1), [0, 1, 5], {"mlp_bias": False, "attention_bias": False}),
], ids=["both", "ffn-only", "depth-only"])
def test_export_carries_the_compensation_as_biases(tmp_path, shape, layers, flags):
    supernet, *_, stats = _flap()
    supernet.set_channel_means(channel_means(stats))
    out = export_subnet(supernet, shape, tmp_path / "sub", layers=layers)
    ids = _batches(seed=1)[0]
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert {k: getattr(plain.config, k) for k in flags} == flags
    torch.testing.assert_close(_logits(plain, ids), _logits(supernet, ids), atol=1e-4, rtol=1e-4)


def test_llama_cpp_runs_a_compensated_export(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from amoeba_search.models.gguf_export import write_gguf
    from tests.models.test_gguf_export import TEXT, VOCAB, hf_logits, merged_tokenizer

    supernet, *_, stats = _flap(vocab_size=VOCAB)
    supernet.set_channel_means(channel_means(stats))
    out = export_subnet(supernet, SubnetShape(4, 0.5, 2 / 3), tmp_path / "sub", layers=[0, 2, 3, 5])
    model, tok = AutoModelForCausalLM.from_pretrained(out).eval(), merged_tokenizer()
    path = write_gguf(model, tok, tmp_path / "m.gguf", dtype="f32")
    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=64, verbose=False)
    ids = tok(TEXT)["input_ids"]
    llm.eval(ids)
    cpp, ref = np.asarray(llm.scores[: len(ids)]), hf_logits(model, ids)
    np.testing.assert_allclose(cpp, ref, atol=2e-3 * np.abs(ref).max(), rtol=0)


def test_qwen2_compensated_export_is_refused_clearly(tmp_path):
    supernet, *_, stats = _flap("qwen2")
    supernet.set_channel_means(channel_means(stats))
    with pytest.raises(ValueError, match="exports only as a LLaMA checkpoint"):
        export_subnet(supernet, SHAPE, tmp_path / "sub")
    assert not (tmp_path / "sub").exists()
