"""bf16 through every stage on a tiny model: export, perplexity, selection, fine-tuning, fingerprints, device maps.

Tolerances come from bf16's epsilon and the logits' scale (tests/tolerance.py). In bf16 the matmuls accumulate
in fp32 and round once per op output, so the rounded terms per logit are about the layers, not the hidden size.
"""
import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from amoeba_search.finetune.smol import SMoLAdapter, SMoLConfig
from amoeba_search.finetune.trainer import Trainer, TrainConfig
from amoeba_search.fingerprint import model_fingerprint
from amoeba_search.models.export import export_subnet
from amoeba_search.models.loading import DevicePlanError, check_device_map, load_config
from amoeba_search.models.session import LoadedSupernet
from amoeba_search.models.supernet import Supernet
from amoeba_search.selection.strategy import SelectionStrategy, StrategyMismatchError
from amoeba_search.session import open_supernet
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_model, tiny_tokenizer
from tests.finetune.helpers import DEPTH_LAYERS, tiny_data, tiny_space
from tests.tolerance import rounding_atol

SHAPE, LAYERS = SubnetShape(4, 0.5, 2 / 3), [0, 2, 4, 5]
IDS = torch.randint(3, 259, (4, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    tiny_model().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def logits_of(supernet, shape=SHAPE, layers=LAYERS):
    supernet.set_active(shape, layers)
    with torch.no_grad():
        return supernet(input_ids=IDS).logits.double()


@pytest.fixture(scope="module")
def reference(model_dir):
    """The subnet's logits in fp64: what every precision is compared with."""
    return logits_of(open_supernet(str(model_dir), dtype=torch.float64).supernet)


def bf16_atol(reference):
    return rounding_atol(reference, torch.bfloat16, terms=len(LAYERS))


def test_weights_load_straight_into_bf16_and_stay_close_to_fp64(model_dir, reference):
    loaded = open_supernet(str(model_dir), dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.supernet.model.parameters()} == {torch.bfloat16}
    got = logits_of(loaded.supernet)
    assert (got - reference).abs().max() < bf16_atol(reference)
    wrong = logits_of(loaded.supernet, layers=[0, 2, 3, 5])
    assert (wrong - reference).abs().max() > 2 * bf16_atol(reference)  # the tolerance still tells layers apart


def test_bf16_export_loads_in_plain_transformers_and_matches_the_view(model_dir, reference, tmp_path):
    loaded = open_supernet(str(model_dir), dtype=torch.bfloat16)
    view = logits_of(loaded.supernet)
    out = export_subnet(loaded.supernet, SHAPE, tmp_path / "sub", layers=LAYERS, tokenizer=loaded.tokenizer)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert plain.dtype == torch.bfloat16
    with torch.no_grad():
        exported = plain(input_ids=IDS).logits.double()
    assert (exported - view).abs().max() < bf16_atol(reference)
    assert (exported - reference).abs().max() < bf16_atol(reference)


def test_bf16_export_with_bias_compensation_and_a_merged_adapter(model_dir, tmp_path):
    fp32 = open_supernet(str(model_dir))
    means = {"ffn": [[0.1] * fp32.supernet.dims.ffn_size] * 6,
             "attn": [[0.05] * (fp32.supernet.dims.num_heads * fp32.supernet.dims.head_dim)] * 6}
    results = {}
    for dtype in (torch.float64, torch.bfloat16):
        loaded = open_supernet(str(model_dir), dtype=dtype)
        loaded.supernet.set_channel_means(means)
        loaded.adapter = SMoLAdapter(loaded.supernet, SMoLConfig(num_experts=3, top_k=2, rank=4, alpha=8.0), seed=0)
        generator = torch.Generator().manual_seed(0)
        for expert in loaded.adapter.experts.values():  # a trained-looking adapter, the same in both dtypes
            expert.B.data.copy_(torch.randn(expert.B.shape, generator=generator) * 0.05)
        out = loaded.export(SHAPE, tmp_path / str(dtype), layers=LAYERS)
        with torch.no_grad():
            results[dtype] = AutoModelForCausalLM.from_pretrained(out).eval()(input_ids=IDS).logits.double()
    exact = results[torch.float64]
    assert (results[torch.bfloat16] - exact).abs().max() < bf16_atol(exact)


def test_perplexity_in_bf16(model_dir, reference):
    from amoeba_search.evaluation.perplexity import perplexity

    values = {}
    for dtype in (torch.float64, torch.bfloat16):
        loaded = open_supernet(str(model_dir), dtype=dtype)
        loaded.supernet.set_active(SHAPE, LAYERS)
        values[dtype] = perplexity(loaded.supernet, IDS, batch_size=2).nll
    # cross-entropy moves by at most twice the largest logit error
    assert abs(values[torch.bfloat16] - values[torch.float64]) < 2 * bf16_atol(reference)


def test_selection_runs_in_bf16_and_its_strategy_checks_against_an_fp32_load(model_dir):
    from amoeba_search.selection.pipeline import SelectionSettings, select_strategy

    loaded = open_supernet(str(model_dir), dtype=torch.bfloat16)
    blocks = tiny_data(n=8, seq_len=24).input_ids
    text = model_dir / "calib.txt"
    text.write_text("\n\n".join(tiny_tokenizer().decode(row) for row in blocks))
    settings = SelectionSettings(calib=str(text), split="train", samples=2, seq_len=16, min_depth=4, batch_size=2)
    result = select_strategy(loaded.supernet, loaded.tokenizer, loaded.fingerprint, settings.checked(6))
    strategy = result.strategy
    assert sorted(strategy.depth_layers) == [4, 5, 6]
    assert all(v is not None and v == v and v < float("inf") for v in strategy.depth_metric.values())
    strategy.check_model(open_supernet(str(model_dir)).fingerprint)


def test_fingerprints_of_every_load_precision_agree_with_an_fp32_strategy(model_dir):
    fp32 = model_fingerprint(open_supernet(str(model_dir)).supernet.model)
    strategy = SelectionStrategy(fp32, {d: list(v) for d, v in DEPTH_LAYERS.items()})
    for dtype in (torch.bfloat16, torch.float16):
        strategy.check_model(model_fingerprint(open_supernet(str(model_dir), dtype=dtype).supernet.model))
    other = model_fingerprint(tiny_model(seed=1).to(torch.bfloat16))
    with pytest.raises(StrategyMismatchError, match="weights differ"):
        strategy.check_model(other)
    old = SelectionStrategy({k: v for k, v in fp32.items() if k in ("name", "dims", "weights_sha256")},
                            {d: list(v) for d, v in DEPTH_LAYERS.items()})
    old.check_model(fp32)
    with pytest.raises(StrategyMismatchError, match="no weight checksum for a model loaded in this dtype"):
        old.check_model(model_fingerprint(tiny_model().to(torch.bfloat16)))


def test_finetuning_in_bf16_keeps_the_adapter_and_optimizer_in_fp32_and_resumes(tmp_path):
    def trainer(out):
        model = tiny_model().to(torch.bfloat16)
        fingerprint = model_fingerprint(model, name="tiny")
        strategy = SelectionStrategy(fingerprint, {d: list(v) for d, v in DEPTH_LAYERS.items()})
        loaded = LoadedSupernet("tiny", Supernet(model), tiny_tokenizer(), fingerprint, strategy)
        adapter = SMoLAdapter(loaded.supernet, SMoLConfig(num_experts=3, top_k=2, rank=4, alpha=8.0), seed=0,
                              dtype=torch.float32)
        config = TrainConfig(steps=4, batch_size=2, lr=5e-3, warmup_steps=1, num_random=1, checkpoint_every=2)
        return Trainer(loaded, adapter, tiny_data(), config, out, tiny_space(loaded))

    straight = trainer(tmp_path / "a")
    straight.run()
    assert {p.dtype for p in straight.adapter.parameters()} == {torch.float32}
    assert {t.dtype for s in straight.optimizer.state.values() for t in s.values() if t.dim()} == {torch.float32}
    assert json.loads((tmp_path / "a" / "run.json").read_text())["dtype"] == "bfloat16"

    def stop_after_2(row):
        if row["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "b").run(on_step=stop_after_2)
    resumed = trainer(tmp_path / "b")
    resumed.run(resume=True)
    for (name, a), b in zip(straight.adapter.state_dict().items(), resumed.adapter.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_device_map_that_does_not_fit_is_refused(model_dir):
    config = load_config(str(model_dir))
    with pytest.raises(DevicePlanError, match=r"do not fit in \{'cpu': '1KB'\}.*--max-memory"):
        check_device_map(config, torch.bfloat16, "auto", {"cpu": "1KB"})
    plan = check_device_map(config, torch.bfloat16, "auto", {"cpu": "1GB"})
    assert set(plan.values()) == {"cpu"}
    loaded = open_supernet(str(model_dir), dtype=torch.bfloat16, device_map="auto", max_memory={"cpu": "1GB"})
    assert logits_of(loaded.supernet).isfinite().all()
