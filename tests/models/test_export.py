import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from amoeba_search.models import export as export_module
from amoeba_search.models.export import PROVENANCE_FILE, export_subnet
from amoeba_search.models.supernet import Supernet
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_model
from tests.models.test_supernet import _inputs, _random_orders

CASES = [(SubnetShape(6, 1, 1), None), (SubnetShape(4, 0.5, 2 / 3), [0, 2, 3, 5]),
         (SubnetShape(2, 0.25, 1 / 3), [1, 4])]


@pytest.mark.parametrize("shape, layers", CASES, ids=[str(s) for s, _ in CASES])
def test_exported_checkpoint_matches_the_view(family, tokenizer, tmp_path, shape, layers):
    supernet = Supernet(tiny_model(family))
    ffn, heads = _random_orders(supernet.dims)
    supernet.set_order(ffn_orders=ffn, head_orders=heads)
    out = export_subnet(supernet, shape, tmp_path / "sub", layers=layers, tokenizer=tokenizer,
                        provenance={"source_model": "tiny"})
    x = _inputs()
    view_logits = supernet(x).logits
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(plain).__name__ == type(supernet.model).__name__
    assert plain.config.num_hidden_layers == shape.depth
    assert plain.config.intermediate_size == shape.ffn_channels(supernet.dims)
    assert plain.config.num_attention_heads == shape.num_heads(supernet.dims)
    torch.testing.assert_close(plain(x).logits, view_logits, atol=1e-4, rtol=1e-4)
    record = json.loads((out / PROVENANCE_FILE).read_text())
    assert record["shape"] == str(shape) and record["source_model"] == "tiny"
    assert record["kept_layers"] == (list(range(6)) if layers is None else layers)
    assert AutoTokenizer.from_pretrained(out)("abc")["input_ids"] == tokenizer("abc")["input_ids"]


def test_exported_checkpoint_is_smaller(tmp_path):
    supernet = Supernet(tiny_model())
    big = export_subnet(supernet, SubnetShape(6), tmp_path / "big")
    small = export_subnet(supernet, SubnetShape(3, 0.5, 1 / 3), tmp_path / "small", layers=[0, 1, 5])
    assert (small / "model.safetensors").stat().st_size < 0.6 * (big / "model.safetensors").stat().st_size


def test_existing_output_is_refused_and_failure_leaves_nothing(tmp_path, monkeypatch):
    supernet = Supernet(tiny_model())
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        export_subnet(supernet, SubnetShape(6), tmp_path / "taken")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "save_file", broken)
    with pytest.raises(RuntimeError):
        export_subnet(supernet, SubnetShape(6), tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_bad_gguf_dtype(tmp_path):
    with pytest.raises(ValueError, match="unknown GGUF type .q4.: use f32, f16, bf16, q8_0"):
        export_subnet(Supernet(tiny_model()), SubnetShape(6), tmp_path / "x", gguf="q4")
