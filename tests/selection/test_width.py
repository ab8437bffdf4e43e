import pytest
import torch

from amoeba_search.models.supernet import Supernet
from amoeba_search.selection.width import (WIDTH_METRICS, channel_statistics, importance_scores, orders_from_scores,
                                           taylor_scores, width_orders)
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_model
from tests.selection.flap_bias_oracle import add_output_biases, bias_compensation


def _batches(seed=0):
    return list(torch.randint(3, 259, (6, 16), generator=torch.Generator().manual_seed(seed)).split(2))


def _scramble(supernet, seed=5):
    g = torch.Generator().manual_seed(seed)
    dims = supernet.dims
    supernet.set_order(
        ffn_orders=[torch.randperm(dims.ffn_size, generator=g).tolist() for _ in range(dims.num_layers)],
        head_orders=[[torch.randperm(dims.group_size, generator=g).tolist() for _ in range(dims.num_kv_heads)]
                     for _ in range(dims.num_layers)])


@pytest.mark.parametrize("metric", WIDTH_METRICS)
def test_orders_are_permutations_and_gqa_valid(family, metric):
    supernet = Supernet(tiny_model(family))
    ffn, heads, _ = width_orders(supernet, _batches(), metric)
    dims = supernet.dims
    assert len(ffn) == len(heads) == dims.num_layers
    for order in ffn:
        assert sorted(order) == list(range(dims.ffn_size))
    for groups in heads:
        assert len(groups) == dims.num_kv_heads
        for ranks in groups:
            assert sorted(ranks) == list(range(dims.group_size))
    supernet.set_order(ffn_orders=ffn, head_orders=heads)  # the supernet accepts them
    for g in range(1, dims.group_size + 1):
        supernet.set_active(SubnetShape(dims.num_layers, 0.5, g / dims.group_size))
        assert supernet(_batches()[0]).logits.isfinite().all()


@pytest.mark.parametrize("metric", ["flap", "magnitude", "activation", "taylor"])
def test_orders_are_in_original_indices_whatever_the_current_order(family, metric):
    plain = Supernet(tiny_model(family))
    scrambled = Supernet(tiny_model(family))
    _scramble(scrambled)
    a = width_orders(plain, _batches(), metric)
    b = width_orders(scrambled, _batches(), metric)
    assert a[0] == b[0] and a[1] == b[1]


def test_flap_scores_match_a_direct_computation_on_the_plain_model():
    model = tiny_model()
    batches = _batches()
    inputs = {}
    hooks = [model.model.layers[1].mlp.down_proj.register_forward_pre_hook(
                 lambda m, a: inputs.setdefault("down", []).append(a[0].reshape(-1, a[0].shape[-1]))),
             model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(
                 lambda m, a: inputs.setdefault("o", []).append(a[0].reshape(-1, a[0].shape[-1])))]
    with torch.no_grad():
        for ids in batches:
            model(ids)
    for h in hooks:
        h.remove()
    down_x, o_x = torch.cat(inputs["down"]).double(), torch.cat(inputs["o"]).double()
    layer = model.model.layers[1]
    ffn = down_x.var(0, unbiased=False) * layer.mlp.down_proj.weight.double().pow(2).sum(0)
    attn = (o_x.var(0, unbiased=False) * layer.self_attn.o_proj.weight.double().pow(2).sum(0)).view(6, 8).sum(1)

    supernet = Supernet(tiny_model())
    _scramble(supernet)
    stats = channel_statistics(supernet, batches)
    ffn_scores, head_scores = importance_scores(supernet, stats, "flap")
    standard = lambda s: (s - s.mean()) / s.std()
    torch.testing.assert_close(ffn_scores[1], standard(ffn), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head_scores[1], standard(attn), rtol=1e-4, atol=1e-5)
    ffn_orders, head_orders = orders_from_scores(ffn_scores, head_scores, supernet.dims)
    assert ffn_orders[1] == torch.argsort(-ffn, stable=True).tolist()
    for k in range(2):  # heads k*3 .. k*3+2 share KV head k
        assert head_orders[1][k] == torch.argsort(-attn[3 * k:3 * k + 3], stable=True).tolist()


def test_taylor_scores_match_a_direct_computation_on_the_plain_model():
    model = tiny_model()
    batches = _batches()
    loss = sum(model(input_ids=ids, labels=ids).loss for ids in batches) / len(batches)
    layer = model.model.layers[1]
    projections = {"gate": layer.mlp.gate_proj, "up": layer.mlp.up_proj, "down": layer.mlp.down_proj,
                   "q": layer.self_attn.q_proj, "o": layer.self_attn.o_proj}
    grads = dict(zip(projections, torch.autograd.grad(loss, [m.weight for m in projections.values()])))
    salience = {k: (m.weight.detach().double() * grads[k].double()).abs() for k, m in projections.items()}
    ffn = salience["gate"].sum(1) + salience["up"].sum(1) + salience["down"].sum(0)
    heads = (salience["q"].sum(1) + salience["o"].sum(0)).view(6, 8).sum(1)

    supernet = Supernet(tiny_model())
    _scramble(supernet)
    shape = SubnetShape(supernet.dims.num_layers, 0.5, 1 / 3)
    supernet.set_active(shape)
    flags = [p.requires_grad for p in supernet.model.parameters()]
    ffn_scores, head_scores = taylor_scores(supernet, batches)
    torch.testing.assert_close(ffn_scores[1], ffn, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(head_scores[1], heads, rtol=1e-4, atol=1e-9)
    # the supernet is left as it was: active shape, requires_grad flags, no gradients
    assert supernet.active_shape == shape
    assert [p.requires_grad for p in supernet.model.parameters()] == flags
    assert all(p.grad is None for p in supernet.model.parameters())


def test_taylor_needs_batches():
    with pytest.raises(ValueError, match="needs calibration batches"):
        width_orders(Supernet(tiny_model()), [], "taylor")


def test_random_orders_depend_on_the_seed_only():
    supernet = Supernet(tiny_model())
    a = width_orders(supernet, None, "random", seed=1)
    assert a[:2] == width_orders(supernet, None, "random", seed=1)[:2]
    assert a[0] != width_orders(supernet, None, "random", seed=2)[0]


def test_bias_compensation_makes_each_pruned_projection_exact_on_average():
    supernet = Supernet(tiny_model())
    batches = _batches()
    ffn, heads, stats = width_orders(supernet, batches, "flap")
    supernet.set_order(ffn_orders=ffn, head_orders=heads)
    shape = SubnetShape(6, 0.5, 1 / 3)
    biases = bias_compensation(supernet, stats, ffn, heads, shape)

    def outputs(active, extra_bias):
        """Per layer, the mean down_proj output over tokens, with the full model feeding every layer."""
        got = {}
        supernet.set_active(supernet.full_shape())
        hooks = []
        for i, layer in enumerate(supernet.layers):
            def hook(mod, args, out, i=i):
                x = args[0]
                if active:
                    k = shape.ffn_channels(supernet.dims)
                    y = torch.nn.functional.linear(x[..., :k], mod.weight[:, :k])
                    y = y + (biases[i]["ffn"] if extra_bias else 0)
                    got.setdefault(i, []).append(y.reshape(-1, y.shape[-1]))
                else:
                    got.setdefault(i, []).append(out.reshape(-1, out.shape[-1]))
                return out
            hooks.append(layer.mlp.down_proj.register_forward_hook(hook))
        with torch.no_grad():
            for ids in batches:
                supernet(ids)
        for h in hooks:
            h.remove()
        return {i: torch.cat(v).mean(0) for i, v in got.items()}

    with torch.no_grad():
        full, pruned, compensated = outputs(False, False), outputs(True, False), outputs(True, True)
    for i in full:
        assert torch.allclose(compensated[i], full[i], atol=1e-4)
        assert (pruned[i] - full[i]).abs().max() > 1e-3
    handles = add_output_biases(supernet, biases)
    supernet.set_active(shape)
    assert supernet(batches[0]).logits.isfinite().all()
    for h in handles:
        h.remove()


def test_unknown_width_metric():
    with pytest.raises(ValueError, match="did you mean 'flap'"):
        importance_scores(Supernet(tiny_model()), None, "flapp")
