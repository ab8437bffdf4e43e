import json

import pytest
import torch

from amoeba_search.cli import finetune as finetune_cli
from amoeba_search.finetune.data import instruction_data, is_instruction_file
from amoeba_search.finetune.losses import IGNORE
from tests.conftest import tiny_tokenizer
from tests.finetune.test_trainer import _finetune_cmd, _write_tiny_run_inputs


def test_cli_trains_resumes_and_the_adapter_feeds_export_and_search_inputs(tmp_path, capsys):
    model_dir, text = _write_tiny_run_inputs(tmp_path)
    out = tmp_path / "run"
    assert finetune_cli.main(_finetune_cmd(model_dir, text, out)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and (out / "adapter" / "adapter.json").is_file()
    assert finetune_cli.main(_finetune_cmd(model_dir, text, out)[:-1] + ["--steps", "3", "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3

    from amoeba_search.cli import export as export_cli
    code = export_cli.main(["--model", str(model_dir), "--shape", "d6-f0.5-h0.667", "--adapter", str(out),
                            "--out", str(tmp_path / "exp"), "--json"])
    assert code == 0, capsys.readouterr().err
    provenance = json.loads((tmp_path / "exp" / "amoeba_provenance.json").read_text())
    assert provenance["adapter"] == str(out)


@pytest.mark.parametrize("extra, message", [
    (["--top-k", "9"], "top_k"),
    (["--steps", "0"], "steps must be >= 1"),
    (["--gate-noise", "0"], "noise std must be positive"),
    (["--data", "nowhere.txt"], "nowhere.txt"),
    (["--device", "cuda:3"] if not torch.cuda.is_available() else ["--top-k", "9"], "no CUDA device"
     if not torch.cuda.is_available() else "top_k"),
])
def test_bad_input_is_one_line(tmp_path, capsys, extra, message):
    model_dir, text = _write_tiny_run_inputs(tmp_path)
    args = _finetune_cmd(model_dir, text, tmp_path / "run")
    if "--data" in extra:
        args[args.index("--data") + 1] = extra[1]
        extra = []
    capsys.readouterr()  # drop what writing the inputs printed (transformers' save progress bars)
    code = finetune_cli.main(args + extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_existing_run_needs_resume(tmp_path, capsys):
    model_dir, text = _write_tiny_run_inputs(tmp_path)
    out = tmp_path / "run"
    assert finetune_cli.main(_finetune_cmd(model_dir, text, out)) == 0
    capsys.readouterr()
    assert finetune_cli.main(_finetune_cmd(model_dir, text, out)) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_instruction_data_scores_the_response_only(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"instruction": "Say hi.", "input": "", "output": "hi"},
        {"instruction": "Add.", "input": "2+2", "output": "4"},
    ]) + "\n")
    assert is_instruction_file(path)
    tokenizer = tiny_tokenizer()
    data = instruction_data(path, tokenizer, seq_len=256)
    assert data.input_ids.shape == (2, 256)
    scored = data.labels[0][data.labels[0] != IGNORE].tolist()
    assert scored == tokenizer("hi", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert "### Input:\n2+2" in tokenizer.decode(data.input_ids[1][data.labels[1] == IGNORE])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x"}\n')
    assert not is_instruction_file(bad)
    with pytest.raises(ValueError, match="bad.jsonl:1: expected an object"):
        instruction_data(bad, tokenizer, seq_len=64)
