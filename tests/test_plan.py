"""Dry-run plans and the analytic footprint, checked by hand and against models built on the meta device."""
from __future__ import annotations

from collections import Counter

import pytest
from transformers import LlamaConfig, MistralConfig

from amoeba_search.finetune.smol import SMoLAdapter, SMoLConfig
from amoeba_search.models import footprint as fp
from amoeba_search.models.config import subnet_config
from amoeba_search.models.supernet import Supernet
from amoeba_search.plan import adapter_param_count, plan_finetune, plan_search, plan_select
from amoeba_search.profiling.devices import get_device
from amoeba_search.selection.depth_baselines import drop_last_layers, ppl_rank_layers, score_layer_sets
from amoeba_search.selection.depth_dp import depth_dp, dp_evaluation_count
from amoeba_search.selection.objective import FunctionObjective
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_config, tiny_model


def llama_8b():
    """LLaMA-3.1-8B's shape (no weights anywhere)."""
    return LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False)


def smollm2_135m():
    return LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                       intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True)


# 8B by hand: head_dim = 4096 / 32 = 128, KV width = 8 x 128 = 1024
EMBED_8B = 128256 * 4096                                        # 525,336,576, twice (untied LM head)
MATMUL_8B = 4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 14336   # q, k, v, o, gate/up/down
LAYER_8B = MATMUL_8B + 2 * 4096                                 # + two RMSNorms = 218,112,000
PARAMS_8B = 32 * LAYER_8B + 4096 + 2 * EMBED_8B                 # + final norm


# -- footprint ---------------------------------------------------------------------------------------

def test_8b_parameters_weight_and_kv_bytes_by_hand():
    config = llama_8b()
    assert LAYER_8B == 218_112_000 and PARAMS_8B == 8_030_261_248
    count = fp.param_count(config)
    assert count.total == PARAMS_8B
    assert count.embedding == 2 * EMBED_8B and count.non_embedding == PARAMS_8B - 2 * EMBED_8B
    assert fp.weight_bytes(config, dtype="bf16") == 2 * PARAMS_8B
    assert fp.weight_bytes(config, dtype="fp32") == 4 * PARAMS_8B
    assert fp.kv_cache_bytes_per_token(config, dtype="bf16") == 2 * 32 * 8 * 128 * 2 == 131072
    assert fp.kv_cache_bytes(config, context=8192, batch=4, dtype="bf16") == 131072 * 8192 * 4


def test_8b_analytic_count_equals_the_meta_model():
    assert fp.meta_param_count(llama_8b()) == PARAMS_8B
    assert fp.check_param_count(llama_8b()) == PARAMS_8B
    shape = SubnetShape(20, 0.5, 0.5)
    assert fp.check_param_count(llama_8b(), shape) == fp.param_count(llama_8b(), shape).total


def test_the_meta_model_allocates_nothing():
    model = fp.meta_model(llama_8b())
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_tied_smollm2_like_config():
    config = smollm2_135m()
    # head_dim 64, KV width 3 x 64 = 192; the 49,152 x 576 embedding is counted once
    layer = 576 * 576 + 2 * 576 * 192 + 576 * 576 + 3 * 576 * 1536 + 2 * 576
    assert 30 * layer + 576 + 49152 * 576 == 134_515_008
    assert fp.param_count(config).total == fp.meta_param_count(config) == 134_515_008
    assert fp.param_count(config).lm_head == 0


@pytest.mark.parametrize("config", [
    tiny_config("llama"), tiny_config("qwen2"), tiny_config("llama", tie_word_embeddings=True),
    tiny_config("llama", attention_bias=True, mlp_bias=True),
    MistralConfig(vocab_size=100, hidden_size=32, intermediate_size=40, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2),
], ids=["llama", "qwen2", "tied", "biases", "mistral"])
@pytest.mark.parametrize("shape", [None, SubnetShape(3, 0.5, 0.5), SubnetShape(4, 0.75, 1.0)])
def test_tiny_counts_equal_the_meta_model(config, shape):
    cut = config if shape is None else subnet_config(config, shape)
    assert fp.param_count(config, shape).total == fp.meta_param_count(cut)
    assert fp.check_param_count(config, shape) == fp.meta_param_count(cut)


def test_flops_are_the_documented_approximation():
    config = llama_8b()
    base = 2 * 32 * MATMUL_8B + 2 * 4096 * 128256
    assert fp.forward_flops_per_token(config, context=0) == base
    assert fp.forward_flops_per_token(config, context=100) == base + 4 * 32 * 32 * 128 * 100
    # a causal sequence: position t attends to t + 1 tokens
    t = 7
    assert fp.sequence_flops(config, seq_len=t) == sum(fp.forward_flops_per_token(config, context=c)
                                                       for c in range(1, t + 1))


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="choose from fp32, bf16, fp16"):
        fp.weight_bytes(llama_8b(), dtype="int3")


# -- plans -------------------------------------------------------------------------------------------

def test_8b_dry_run_plan_of_search_by_hand():
    config, h100 = llama_8b(), get_device("h100")
    plan = plan_search(config, predictor_samples=52, verify_shapes=10, blocks=8, seq_len=256, dtype="bf16",
                       device_spec=h100, batch_size=4)
    assert plan.parameters == PARAMS_8B and plan.weight_bytes == 2 * PARAMS_8B
    assert plan.kv_cache_bytes_per_token == 131072
    assert plan.memory_breakdown["kv_cache"] == 131072 * 256 * 4
    assert plan.memory_breakdown["weights"] == 2 * PARAMS_8B
    assert plan.peak_memory_bytes == sum(plan.memory_breakdown.values())
    assert plan.evaluations == 62 and plan.tokens == 62 * 8 * 256
    per_token = 2 * 32 * MATMUL_8B + 2 * EMBED_8B                 # LM head: 2 x hidden x vocab
    attention = 4 * 32 * 32 * 128 * (256 * 257 // 2)             # summed over the causal positions
    assert plan.flops == 62 * 8 * (256 * per_token + attention)
    read = (PARAMS_8B - EMBED_8B) * 2                             # LM head read, embedding rows not
    assert plan.bytes_moved == 62 * 2 * read                      # 2 batches of 4 blocks per evaluation
    hand = max(plan.flops / (989.4 * 1e12), plan.bytes_moved / (3350.0 * 1e9))
    assert plan.estimated_seconds == pytest.approx(hand, rel=1e-12)
    assert plan.estimated_hours == pytest.approx(hand / 3600)
    assert any("lower bound" in a for a in plan.assumptions)
    assert any("meta device" in a for a in plan.assumptions)
    data = plan.to_dict()
    assert data["assumptions"] == list(plan.assumptions) and data["estimated_seconds"] == plan.estimated_seconds


def test_select_evaluations_equal_dp_evaluation_count():
    config = llama_8b()
    for min_depth, keep_last, beam in ((16, 0, 1), (20, 2, 1), (16, 1, 3)):
        plan = plan_select(config, samples=32, seq_len=256, min_depth=min_depth, keep_last=keep_last, beam=beam,
                           dtype="bf16", device_spec="h100", check_meta=False)
        assert plan.evaluations == dp_evaluation_count(32, min_depth, keep_last, beam)
        assert plan.tokens == plan.evaluations * 32 * 256
        assert plan.memory_breakdown["weights"] == 2 * PARAMS_8B
    default = plan_select(config, samples=4, seq_len=64, min_depth=None, dtype="bf16", device_spec="h100",
                          check_meta=False)
    assert default.evaluations == dp_evaluation_count(32, 16)


def _recording(n_layers: int):
    depths = Counter()

    def fn(kept):
        depths[len(kept)] += 1
        return float(sum(kept))
    return FunctionObjective(n_layers, fn), depths


def _expected_flops(config, depths: Counter, samples: int, seq_len: int) -> int:
    return sum(k * samples * fp.sequence_flops(config, SubnetShape(d), seq_len=seq_len) for d, k in depths.items())


@pytest.mark.parametrize("min_depth,keep_last,beam", [(3, 0, 1), (2, 1, 1), (2, 0, 3)])
def test_select_flops_count_each_dp_evaluation_at_its_depth(min_depth, keep_last, beam):
    config = tiny_config("llama")
    objective, depths = _recording(6)
    result = depth_dp(objective, min_depth=min_depth, keep_last=keep_last, beam=beam)
    plan = plan_select(config, samples=3, seq_len=16, min_depth=min_depth, keep_last=keep_last, beam=beam,
                       dtype="fp32", device_spec="h100", width_metric="magnitude")
    assert plan.evaluations == result.evaluations == sum(depths.values())
    assert plan.flops == _expected_flops(config, depths, 3, 16)
    with_width = plan_select(config, samples=3, seq_len=16, min_depth=min_depth, keep_last=keep_last, beam=beam,
                             dtype="fp32", device_spec="h100", width_metric="flap")
    assert with_width.flops == plan.flops + 3 * fp.sequence_flops(config, seq_len=16)
    taylor = plan_select(config, samples=3, seq_len=16, min_depth=min_depth, keep_last=keep_last, beam=beam,
                         dtype="fp32", device_spec="h100", width_metric="taylor")
    assert taylor.flops == plan.flops + 3 * 3 * fp.sequence_flops(config, seq_len=16)  # forward + backward
    assert taylor.peak_memory_bytes > plan.peak_memory_bytes


def test_select_baselines_count_what_they_run():
    config = tiny_config("llama")
    objective, depths = _recording(6)
    layers, _ = ppl_rank_layers(objective, min_depth=3, keep_last=1)
    score_layer_sets(objective, layers)
    plan = plan_select(config, samples=2, seq_len=8, min_depth=3, keep_last=1, method="ppl-rank", dtype="fp32",
                       device_spec="h100", width_metric="random")
    assert plan.evaluations == objective.evaluations
    assert plan.flops == _expected_flops(config, depths, 2, 8)

    objective, depths = _recording(6)
    score_layer_sets(objective, drop_last_layers(6, min_depth=3))
    plan = plan_select(config, samples=2, seq_len=8, min_depth=3, method="drop-last", dtype="fp32",
                       device_spec="h100", width_metric="random")
    assert plan.evaluations == objective.evaluations and plan.flops == _expected_flops(config, depths, 2, 8)


def test_adapter_count_equals_the_smol_adapter():
    supernet = Supernet(tiny_model())
    adapter = SMoLAdapter(supernet, SMoLConfig(num_experts=4, top_k=2, rank=4, alpha=8.0))
    assert adapter_param_count(supernet.model.config, rank=4, experts=4) == sum(p.numel() for p in adapter.parameters())


def test_finetune_plan():
    config = tiny_config("llama")
    plan = plan_finetune(config, steps=10, batch_size=2, seq_len=16, random_shapes=2, rank=4, experts=4,
                         dtype="bf16", device_spec="a5000")
    assert plan.evaluations == 10 * 4 and plan.tokens == 10 * 4 * 2 * 16
    trainable = adapter_param_count(config, rank=4, experts=4)
    assert plan.trainable_parameters == trainable
    assert plan.memory_breakdown["adapter_and_optimizer"] == 16 * trainable   # fp32: weights, grads, 2 moments
    assert plan.memory_breakdown["kv_cache"] == fp.kv_cache_bytes(config, context=16, batch=2, dtype="bf16")
    # the largest shape alone costs at least 3 forwards of the full model per step
    assert plan.flops >= 10 * 3 * 2 * fp.sequence_flops(config, seq_len=16)
    assert plan.estimated_seconds is not None and plan.estimated_seconds > 0


def test_a_device_without_numbers_gives_no_time_and_says_why():
    plan = plan_search(llama_8b(), predictor_samples=4, verify_shapes=0, blocks=2, seq_len=64, dtype="bf16",
                       device_spec=get_device("cpu"), check_meta=False)
    assert plan.estimated_seconds is None and plan.estimated_hours is None
    assert any("no time estimate" in a and "bf16 peak" in a for a in plan.assumptions)
    assert plan.to_dict()["estimated_seconds"] is None


@pytest.mark.parametrize("call,match", [
    (lambda c: plan_finetune(c, steps=0, batch_size=4, seq_len=64, random_shapes=2, rank=4, experts=4,
                             dtype="bf16", device_spec="h100"), "steps must be an integer >= 1"),
    (lambda c: plan_finetune(c, steps=5, batch_size=4, seq_len=64, random_shapes=-1, rank=4, experts=4,
                             dtype="bf16", device_spec="h100"), "random_shapes must be an integer >= 0"),
    (lambda c: plan_finetune(c, steps=5, batch_size=4, seq_len=64, random_shapes=2, rank=4, experts=2, top_k=3,
                             dtype="bf16", device_spec="h100"), "top_k must lie in 1..experts"),
    (lambda c: plan_select(c, samples=0, seq_len=64, min_depth=3, dtype="bf16", device_spec="h100"),
     "samples must be an integer >= 1"),
    (lambda c: plan_select(c, samples=4, seq_len=64, min_depth=9, dtype="bf16", device_spec="h100"),
     "minimum depth must lie in 1..6"),
    (lambda c: plan_select(c, samples=4, seq_len=64, min_depth=3, method="dpp", dtype="bf16", device_spec="h100"),
     "unknown selection method"),
    (lambda c: plan_select(c, samples=4, seq_len=64, min_depth=3, dtype="int3", device_spec="h100"),
     "unknown dtype"),
    (lambda c: plan_search(c, predictor_samples=0, verify_shapes=0, blocks=2, seq_len=64, dtype="bf16",
                           device_spec="h100"), "nothing to evaluate"),
    (lambda c: plan_search(c, predictor_samples=4, verify_shapes=0, blocks=2, seq_len=True, dtype="bf16",
                           device_spec="h100"), "seq_len must be an integer >= 2"),
    (lambda c: plan_search(c, predictor_samples=4, verify_shapes=0, blocks=2, seq_len=64, dtype="bf16",
                           device_spec="h10"), "did you mean"),
])
def test_bad_input_raises_value_error_saying_what_to_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny_config("llama"))


def test_unsupported_family_is_refused():
    config = tiny_config("llama")
    config.model_type = "gpt2"
    with pytest.raises(ValueError, match="not supported"):
        fp.param_count(config)
