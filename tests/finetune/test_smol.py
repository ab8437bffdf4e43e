import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from amoeba_search.finetune.smol import AdapterMismatchError, ShapeGate, SMoLAdapter, SMoLConfig, default_rank
from amoeba_search.models.supernet import Supernet
from amoeba_search.session import open_supernet
from amoeba_search.shapes import ModelDims, SubnetShape
from tests.conftest import tiny_model, tiny_tokenizer
from tests.finetune.helpers import tiny_loaded

SMALL = SMoLConfig(num_experts=4, top_k=2, rank=4, alpha=8.0)


def _randomized(adapter: SMoLAdapter, seed: int = 1) -> SMoLAdapter:
    """Non-zero B factors (a fresh adapter is a no-op by design) so that merging has something to merge."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if name.endswith(".B"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return adapter


def test_default_rank_scales_the_papers_64_at_4096():
    assert default_rank(ModelDims(30, 576, 1536, 9, 3, 64)) == 8
    assert default_rank(ModelDims(32, 4096, 11008, 32, 32, 128)) == 64


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="top_k"):
        SMoLConfig(num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="unknown LoRA target"):
        SMoLConfig(targets=("q_proj", "qkv"))
    with pytest.raises(ValueError, match="noise std must be positive"):
        SMoLConfig(noise_std=0.0)


@pytest.mark.parametrize("noise_std", [0.1, 0.69])
def test_gate_noise_starts_at_the_configured_std(noise_std):
    loaded = tiny_loaded()
    adapter = SMoLAdapter(loaded.supernet, SMoLConfig(num_experts=4, top_k=2, rank=4, alpha=8.0,
                                                       noise_std=noise_std)).train()
    loaded.activate(SubnetShape(4, 0.75, 2 / 3))
    gate = adapter.gate
    features = gate.features(loaded.supernet.active_shape, loaded.supernet.active_layers)
    assert torch.allclose(torch.nn.functional.softplus(gate.noise(features)), torch.tensor(noise_std))


def test_gate_routes_by_shape_and_is_deterministic_in_eval():
    loaded = tiny_loaded()
    adapter = SMoLAdapter(loaded.supernet, SMALL).eval()
    sn = loaded.supernet
    weights = {}
    for shape in (SubnetShape(6, 1.0, 1.0), SubnetShape(3, 0.5, 1 / 3), SubnetShape(4, 0.75, 2 / 3)):
        loaded.activate(shape)
        first, second = adapter.expert_weights(), adapter.expert_weights()
        assert torch.equal(first, second)                         # deterministic at inference
        assert (first > 0).sum() == SMALL.top_k and torch.isclose(first.sum(), torch.tensor(1.0))
        weights[shape] = first
    values = list(weights.values())
    assert not torch.allclose(values[0], values[1]) and not torch.allclose(values[1], values[2])
    # The input is the shape, not the tokens: the same shape on other layers routes differently.
    sn.set_active(SubnetShape(3, 0.5, 1 / 3), [1, 3, 4])
    assert not torch.allclose(adapter.expert_weights(), values[1])
    adapter.train()
    draws = torch.stack([adapter.expert_weights() for _ in range(8)])
    assert not all(torch.equal(draws[0], d) for d in draws[1:])  # noisy top-k while training


def test_top_k_experts_act_as_one_lora_of_k_times_the_rank():
    """Two rank-r experts at equal gate weight equal one rank-2r LoRA of the same alpha/rank, so top_k does not
    silently rescale the update (and with it the effective learning rate)."""
    loaded = tiny_loaded()
    ids = torch.randint(3, 259, (2, 12))
    mixture = _randomized(SMoLAdapter(loaded.supernet, SMoLConfig(num_experts=3, top_k=2, rank=4, alpha=8.0)))
    with torch.no_grad():
        mixture.gate.route.weight.zero_()
        mixture.gate.route.bias.copy_(torch.tensor([1.0, 1.0, 0.0]))  # experts 0 and 1 at weight 1/2 each
    mixture.attach().eval()
    with torch.no_grad():
        expected = loaded.supernet(input_ids=ids).logits
    mixture.detach()
    single = SMoLAdapter(loaded.supernet, SMoLConfig(num_experts=1, top_k=1, rank=8, alpha=16.0))
    with torch.no_grad():
        for key, experts in single.experts.items():
            experts.A.copy_(mixture.experts[key].A[:2].reshape(1, 8, -1))
            experts.B.copy_(mixture.experts[key].B[:2].permute(1, 0, 2).reshape(1, -1, 8))
    single.attach().eval()
    with torch.no_grad():
        assert torch.allclose(loaded.supernet(input_ids=ids).logits, expected, atol=1e-5)


def test_fresh_adapter_is_a_no_op_and_detach_removes_it():
    loaded = tiny_loaded()
    ids = torch.randint(3, 259, (2, 12))
    with torch.no_grad():
        base = loaded.supernet(input_ids=ids).logits
        adapter = SMoLAdapter(loaded.supernet, SMALL).attach().eval()
        assert torch.equal(loaded.supernet(input_ids=ids).logits, base)
        _randomized(adapter)
        assert not torch.allclose(loaded.supernet(input_ids=ids).logits, base)
        adapter.detach()
        assert torch.equal(loaded.supernet(input_ids=ids).logits, base)


@pytest.mark.parametrize("shape, layers", [(SubnetShape(6, 1.0, 1.0), None),
                                           (SubnetShape(4, 0.5, 2 / 3), [0, 2, 4, 5]),
                                           (SubnetShape(3, 0.75, 1 / 3), [1, 3, 5])])
def test_merged_export_matches_the_adapter_forward(tmp_path, shape, layers):
    model_dir, adapter_dir, out = tmp_path / "tiny", tmp_path / "adapter", tmp_path / "export"
    tiny_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    _randomized(SMoLAdapter(Supernet(AutoModelForCausalLM.from_pretrained(model_dir)), SMALL)).save(adapter_dir)

    loaded = open_supernet(str(model_dir), adapter=adapter_dir)
    loaded.export(shape, out, layers=layers)
    ids = torch.randint(3, 259, (2, 20))
    loaded.supernet.set_active(shape, layers)
    with torch.no_grad():
        with_adapter = loaded.supernet(input_ids=ids).logits
        exported = AutoModelForCausalLM.from_pretrained(out).eval()(input_ids=ids).logits
        loaded.adapter.detach()
        plain = loaded.supernet(input_ids=ids).logits
    assert torch.allclose(exported, with_adapter, atol=1e-4)
    assert not torch.allclose(plain, with_adapter, atol=1e-3)  # the adapter did change the subnet
    provenance = (out / "amoeba_provenance.json").read_text()
    assert str(adapter_dir) in provenance


def test_merged_export_with_bias_compensation_matches_the_adapter_forward(tmp_path):
    from amoeba_search.selection.pipeline import channel_means
    from amoeba_search.selection.width import width_orders
    from tests.selection.test_width import _batches

    loaded = tiny_loaded()
    supernet = loaded.supernet
    *_, stats = width_orders(supernet, _batches(), "flap")
    supernet.set_channel_means(channel_means(stats))
    loaded.adapter = _randomized(SMoLAdapter(supernet, SMALL)).attach().eval()
    shape, layers = SubnetShape(4, 0.5, 2 / 3), [0, 2, 4, 5]
    loaded.export(shape, tmp_path / "export", layers=layers)
    ids = torch.randint(3, 259, (2, 20))
    supernet.set_active(shape, layers)
    with torch.no_grad():
        with_adapter = supernet(input_ids=ids).logits
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()(input_ids=ids).logits
    assert exported.isfinite().all() and torch.allclose(exported, with_adapter, atol=1e-4)


def test_merging_restores_the_supernet_weights():
    loaded = tiny_loaded()
    adapter = _randomized(SMoLAdapter(loaded.supernet, SMALL)).attach()
    layers = torch.nn.ModuleList(loaded.supernet.layers)  # all six, whatever the active shape
    before = {k: v.clone() for k, v in layers.state_dict().items()}
    with adapter.merged(SubnetShape(4, 0.5, 1 / 3), [0, 2, 4, 5]):
        assert not torch.equal(layers[2].mlp.up_proj.weight, before["2.mlp.up_proj.weight"])
        assert torch.equal(layers[3].mlp.up_proj.weight, before["3.mlp.up_proj.weight"])  # not kept: untouched
    after = layers.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert adapter.attached  # re-attached after merging


def test_load_rejects_another_model_or_order(tmp_path):
    loaded = tiny_loaded()
    SMoLAdapter(loaded.supernet, SMALL).save(tmp_path / "a")
    other = Supernet(tiny_model(hidden_size=32, head_dim=8, num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(AdapterMismatchError, match="another model"):
        SMoLAdapter.load(tmp_path / "a", other)
    reordered = tiny_loaded().supernet
    reordered.set_order(ffn_orders=[list(reversed(range(64)))] * 6)
    with pytest.raises(AdapterMismatchError, match="another channel/head order"):
        SMoLAdapter.load(tmp_path / "a", reordered)
    with pytest.raises(FileNotFoundError, match="not an adapter directory"):
        SMoLAdapter.load(tmp_path, loaded.supernet)
    assert SMoLAdapter.load(tmp_path / "a", loaded.supernet).config == SMALL


def _nested_routes(num_layers=30, min_depth=15):
    """A DP-like space: each shallower depth drops one more middle layer; widths as SmolLM2's search space."""
    order = [l for pair in zip(range(14, 2, -1), range(15, 27)) for l in pair]  # middle layers first
    routes = []
    for depth in range(min_depth, num_layers + 1):
        removed = set(order[:num_layers - depth])
        layers = [l for l in range(num_layers) if l not in removed]
        for f in (0.5, 0.625, 0.75, 0.875, 1.0):
            for h in (1 / 3, 2 / 3, 1.0):
                routes.append((SubnetShape(depth, f, h), layers))
    return routes


def test_centred_gate_input_spreads_the_initial_routes_over_the_experts():
    routes = _nested_routes()
    for seed in range(3):
        counts = {}
        for centred in (False, True):
            torch.manual_seed(seed)
            gate = ShapeGate(30, 5, 2, noise=True, noise_std=0.1).eval()
            if centred:
                gate.center_on(routes)
            use = torch.zeros(5)
            for shape, layers in routes:
                use += (gate(gate.features(shape, layers)) > 0).float()
            counts[centred] = use
        n = len(routes)  # each route holds 2 of 5 experts: a balanced gate puts each in 40% of them
        assert counts[False].max() >= 0.8 * n and counts[False].min() < 0.1 * n   # uncentred: near collapse
        assert counts[True].max() <= 0.65 * n and counts[True].min() >= 0.2 * n


def test_adapter_centres_its_gate_on_the_given_routes_and_keeps_the_centre_on_load(tmp_path):
    loaded = tiny_loaded()
    routes = loaded.routes(loaded.space())
    adapter = SMoLAdapter(loaded.supernet, SMALL, center_on=routes).eval()
    mean = torch.stack([adapter.gate.features(s, l) for s, l in routes]).mean(0)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-6)
    assert not torch.equal(adapter.gate.center, torch.zeros_like(adapter.gate.center))
    adapter.save(tmp_path / "a")
    again = SMoLAdapter.load(tmp_path / "a", loaded.supernet)
    assert torch.equal(again.gate.center, adapter.gate.center)
    for shape, _ in routes[:5]:
        loaded.activate(shape)
        assert torch.equal(again.expert_weights(), adapter.expert_weights())


def test_a_schema_2_adapter_loads_with_its_uncentred_gate_and_older_ones_are_refused(tmp_path):
    loaded = tiny_loaded()
    adapter = _randomized(SMoLAdapter(loaded.supernet, SMALL)).eval()  # uncentred: what schema 2 computed
    adapter.save(tmp_path / "a")
    config, weights = tmp_path / "a" / "adapter.json", tmp_path / "a" / "adapter.safetensors"
    record = json.loads(config.read_text())
    config.write_text(json.dumps({**record, "schema_version": 2}))
    state = load_file(str(weights))
    del state["gate.center"]  # schema 2 had no centre
    save_file(state, str(weights))
    old = SMoLAdapter.load(tmp_path / "a", loaded.supernet)
    assert torch.equal(old.gate.center, torch.zeros_like(old.gate.center))
    for shape in loaded.space():
        loaded.activate(shape)
        assert torch.equal(old.expert_weights(), adapter.expert_weights())
    config.write_text(json.dumps({**record, "schema_version": 1}))
    with pytest.raises(ValueError, match="schema-1 SMoL adapter.*run amoeba-finetune again"):
        SMoLAdapter.load(tmp_path / "a", loaded.supernet)
