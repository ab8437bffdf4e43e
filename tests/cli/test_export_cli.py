import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from amoeba_search.cli import export as export_cli
from amoeba_search.cli import ppl as ppl_cli
from tests.conftest import tiny_model


def test_export_and_score_a_subnet(model_dir, tmp_path, capsys):
    out = tmp_path / "sub"
    code = export_cli.main(["--model", str(model_dir), "--shape", "d4-f0.5-h0.667", "--layers", "0,2,4,5",
                            "--out", str(out), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kept_layers"] == [0, 2, 4, 5] and "model.safetensors" in summary["files"]
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 4
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"document {i}: " + "some words here and there " * 20 for i in range(40)))
    code = ppl_cli.main(["--model", str(out), "--data", str(text), "--split", "train", "--seq-len", "32",
                         "--max-blocks", "4", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["ppl"] > 1 and record["tokens"] == 4 * 31


@pytest.mark.parametrize("args, message", [
    (["--model", "smollm2-13m", "--shape", "d30-f1-h1"], "did you mean 'smollm2-135m'"),
    (["--shape", "d40-f1-h1"], "depth 40 is outside 1..6"),
    (["--shape", "d6-f1.5-h1"], "ffn_ratio must be in (0, 1]"),
    (["--shape", "d6-f0-h1"], "ffn_ratio must be in (0, 1]"),
    (["--shape", "d6-f0.6-h1"], "ffn ratio 0.6 of shape d6-f0.6-h1 is not in the search space"),
    (["--shape", "d6-f1-h0.5"], "heads ratio 0.5"),
    (["--shape", "d4-f1-h1"], "needs a selection strategy"),
    (["--shape", "d6-f1-h1", "--strategy", "missing.json"], "does not exist"),
])
def test_bad_input_is_one_line_and_leaves_nothing(model_dir, tmp_path, capsys, args, message):
    if "--model" not in args:
        args = ["--model", str(model_dir)] + args
    out = tmp_path / "never"
    code = export_cli.main(args + ["--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_existing_output_and_unsupported_architecture(model_dir, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    taken = tmp_path / "taken"
    taken.mkdir()
    assert export_cli.main(["--model", str(model_dir), "--shape", "d6-f1-h1", "--out", str(taken)]) == 2
    assert "already exists" in capsys.readouterr().err
    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(gpt2)
    assert export_cli.main(["--model", str(gpt2), "--shape", "d1-f1-h1", "--out", str(tmp_path / "o")]) == 2
    assert "model type 'gpt2' is not supported" in capsys.readouterr().err


def test_strategy_for_another_model_is_refused(model_dir, tmp_path, capsys):
    from amoeba_search.fingerprint import model_fingerprint
    from amoeba_search.selection.strategy import SelectionStrategy

    other = tiny_model(seed=7)
    strategy = SelectionStrategy(fingerprint=model_fingerprint(other, "other"),
                                 depth_layers={d: list(range(d)) for d in range(3, 7)})
    path = tmp_path / "strategy.json"
    strategy.save(path)
    code = export_cli.main(["--model", str(model_dir), "--shape", "d4-f1-h1", "--strategy", str(path),
                            "--out", str(tmp_path / "o")])
    assert code == 2
    assert "computed for another model" in capsys.readouterr().err


def test_strategy_layers_and_orders_are_used(model_dir, tmp_path):
    from amoeba_search.fingerprint import model_fingerprint
    from amoeba_search.selection.strategy import SelectionStrategy

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    g = torch.Generator().manual_seed(0)
    strategy = SelectionStrategy(
        fingerprint=model_fingerprint(model, "tiny"), depth_layers={4: [0, 1, 3, 5], 5: [0, 1, 2, 3, 5], 6: list(range(6))},
        ffn_orders=[torch.randperm(64, generator=g).tolist() for _ in range(6)],
        head_orders=[[torch.randperm(3, generator=g).tolist() for _ in range(2)] for _ in range(6)])
    path = tmp_path / "strategy.json"
    strategy.save(path)
    out = tmp_path / "sub"
    assert export_cli.main(["--model", str(model_dir), "--shape", "d4-f0.5-h0.333", "--strategy", str(path),
                            "--out", str(out)]) == 0
    provenance = json.loads((out / "amoeba_provenance.json").read_text())
    assert provenance["kept_layers"] == [0, 1, 3, 5] and provenance["strategy"] == str(path)
