import pytest
import torch

from amoeba_search.models.supernet import SlicedLinear, Supernet
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_model


def _inputs(seed=1):
    return torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(seed))


def _random_orders(dims, seed=0):
    g = torch.Generator().manual_seed(seed)
    ffn = [torch.randperm(dims.ffn_size, generator=g).tolist() for _ in range(dims.num_layers)]
    heads = [[torch.randperm(dims.group_size, generator=g).tolist() for _ in range(dims.num_kv_heads)]
             for _ in range(dims.num_layers)]
    return ffn, heads


def test_full_shape_matches_the_original_model(family):
    model = tiny_model(family)
    x = _inputs()
    reference = model(x).logits
    supernet = Supernet(model, ffn_orders=_random_orders(Supernet(tiny_model(family)).dims)[0])
    torch.testing.assert_close(supernet(x).logits, reference, atol=1e-4, rtol=1e-4)


def test_reordering_twice_is_the_same_as_once(family):
    model = tiny_model(family)
    supernet = Supernet(model)
    ffn_a, heads_a = _random_orders(supernet.dims, seed=1)
    ffn_b, heads_b = _random_orders(supernet.dims, seed=2)
    supernet.set_order(ffn_orders=ffn_a, head_orders=heads_a)
    supernet.set_order(ffn_orders=ffn_b, head_orders=heads_b)
    direct = Supernet(tiny_model(family), ffn_orders=ffn_b, head_orders=heads_b)
    shape = SubnetShape(4, 0.5, 1 / 3)
    supernet.set_active(shape, [0, 1, 3, 5])
    direct.set_active(shape, [0, 1, 3, 5])
    x = _inputs()
    torch.testing.assert_close(supernet(x).logits, direct(x).logits)


def test_prefix_of_the_order_is_what_stays(family):
    """Keeping the top-k by an order equals zeroing every other channel of the original model."""
    model = tiny_model(family)
    supernet = Supernet(model)
    ffn, _ = _random_orders(supernet.dims)
    supernet.set_order(ffn_orders=ffn)
    keep = SubnetShape(6, 0.5, 1).ffn_channels(supernet.dims)
    supernet.set_active(SubnetShape(6, 0.5, 1))
    x = _inputs()
    got = supernet(x).logits
    masked = tiny_model(family)
    with torch.no_grad():
        for layer, order in zip(masked.model.layers, ffn):
            dropped = torch.tensor(order[keep:])
            layer.mlp.down_proj.weight[:, dropped] = 0
    torch.testing.assert_close(got, masked(x).logits, atol=1e-4, rtol=1e-4)


def test_smaller_shapes_use_smaller_matrices_without_copies():
    supernet = Supernet(tiny_model())
    supernet.set_active(SubnetShape(3, 0.5, 1 / 3), [0, 2, 4])
    layer = supernet.model.model.layers[0]
    assert len(supernet.model.model.layers) == 3
    q, down = layer.self_attn.q_proj, layer.mlp.down_proj
    assert isinstance(q, SlicedLinear)
    assert q.active_weight().shape == (2 * 8, 48)          # 1 head per KV group x 2 KV heads x head_dim 8
    assert down.active_weight().shape == (48, 32)
    assert down.active_weight().data_ptr() == down.weight.data_ptr()  # a view of the full weight


def test_generation_with_cache_on_a_shortened_stack():
    supernet = Supernet(tiny_model())
    supernet.set_active(SubnetShape(3, 0.75, 2 / 3), [1, 3, 5])
    x = _inputs()[:1]
    out = supernet.model.generate(x, max_new_tokens=6, do_sample=False)
    # Greedy decoding with the KV cache must agree with re-running the whole sequence each step.
    seq = x
    for _ in range(6):
        nxt = supernet(seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert out.tolist() == seq.tolist()


@pytest.mark.parametrize("layers, message", [(None, "needs the kept layers"), ([0, 1], "needs 3 distinct"),
                                             ([0, 0, 1], "needs 3 distinct"), ([0, 1, 9], "needs 3 distinct")])
def test_bad_layer_lists(layers, message):
    supernet = Supernet(tiny_model())
    with pytest.raises(ValueError, match=message):
        supernet.set_active(SubnetShape(3), layers)


def test_bad_orders_are_refused():
    supernet = Supernet(tiny_model())
    with pytest.raises(ValueError, match="not a permutation"):
        supernet.set_order(ffn_orders=[[0] * 64] * 6)
    with pytest.raises(ValueError, match="rank 0..2"):
        supernet.set_order(head_orders=[[[0, 0, 1], [0, 1, 2]]] * 6)


def test_unsupported_family_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    from amoeba_search.models.config import UnsupportedModelError

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported"):
        Supernet(model)


def test_bf16_attention_runs_sdpa_in_fp32_only_when_autograd_will_run_its_backward(monkeypatch):
    from amoeba_search.models import supernet as module

    seen = []
    original = module.sdpa_attention_forward

    def spy(attn, query, key, value, mask, **kwargs):
        seen.append((query.dtype, torch.is_autocast_enabled("cpu")))
        return original(attn, query, key, value, mask, **kwargs)

    monkeypatch.setattr(module, "sdpa_attention_forward", spy)
    model = tiny_model("llama").to(torch.bfloat16)
    supernet = Supernet(model)
    x = _inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        inference = supernet(x).logits.float()
    assert {dtype for dtype, _ in seen} == {torch.bfloat16}  # inference keeps the 16-bit kernel
    seen.clear()
    model.model.embed_tokens.weight.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        training = supernet(x).logits.float()
    assert seen and all(dtype == torch.float32 and not autocast for dtype, autocast in seen)
    training.sum().backward()
    assert torch.isfinite(model.model.embed_tokens.weight.grad).all()
    # the same attention in fp32 instead of bf16: the outputs agree to bf16's rounding of the logits
    scale = inference.abs().max()
    torch.testing.assert_close(training.detach(), inference, atol=float(scale) * 8 * 2.0 ** -8, rtol=0)
