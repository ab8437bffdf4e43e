"""--device/--dtype on every command that runs the model, and --dry-run plans: bad input is one line, exit 2."""
import json

import pytest
import torch

from amoeba_search import compute
from amoeba_search.cli import eval as eval_cli
from amoeba_search.cli import export as export_cli
from amoeba_search.cli import finetune as finetune_cli
from amoeba_search.cli import ppl as ppl_cli
from amoeba_search.cli import search as search_cli
from amoeba_search.cli import select as select_cli

LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "vocab_size": 128256, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


@pytest.fixture
def no_gpu_avx2_cpu(monkeypatch):
    """The same answers on every test machine: no CUDA, a CPU without bf16 or fp16 instructions."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(compute, "cpu_flags", lambda: frozenset({"avx2"}))


def _commands(model_dir, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"document {i}: " + "words and more words " * 20 for i in range(30)))
    data = ["--data", str(text), "--split", "train", "--seq-len", "16"]
    return {
        "select": (select_cli, ["--model", str(model_dir), "--calib", str(text), "--split", "train", "--samples", "2",
                                "--seq-len", "16", "--out", str(tmp_path / "s.json")], "--device"),
        "ppl": (ppl_cli, ["--model", str(model_dir), *data, "--max-blocks", "2"], "--device"),
        "eval": (eval_cli, ["--model", str(model_dir), "--tasks", f"ppl:{text}"], "--device"),
        "finetune": (finetune_cli, ["--model", str(model_dir), *data, "--steps", "1", "--out", str(tmp_path / "ft")],
                     "--device"),
        "search": (search_cli, ["--model", str(model_dir), "--budget-ms", "40", "--roofline", "--device", "a5000",
                                "--no-verify", "--out", str(tmp_path / "search")], "--compute-device"),
    }


@pytest.mark.parametrize("command", ["select", "ppl", "eval", "finetune", "search"])
@pytest.mark.parametrize("flags, message", [
    (["DEVICE", "tpu"], "unknown device 'tpu'; use cpu, cuda, cuda:N or auto"),
    (["DEVICE", "cuda"], "no CUDA device here"),
    (["--dtype", "bf16"], "has no bf16 instructions (AVX512_BF16 or AMX_BF16)"),
    (["--dtype", "fp16"], "has no fp16 instructions"),
])
def test_devices_and_dtypes_this_machine_cannot_run(model_dir, tmp_path, capsys, no_gpu_avx2_cpu, command, flags,
                                                   message):
    cli, args, device_flag = _commands(model_dir, tmp_path)[command]
    flags = [device_flag if f == "DEVICE" else f for f in flags]
    code = cli.main(args + flags)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "ft").exists()


def test_fp16_fine_tuning_is_refused_even_where_fp16_is_fast(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(compute, "cpu_flags", lambda: frozenset({"avx512_fp16"}))
    cli, args, _ = _commands(model_dir, tmp_path)["finetune"]
    assert cli.main(args + ["--dtype", "fp16"]) == 2
    assert "needs loss scaling" in capsys.readouterr().err


def test_a_device_map_that_does_not_fit_is_one_line(model_dir, tmp_path, capsys):
    cli, args, _ = _commands(model_dir, tmp_path)["ppl"]
    assert cli.main(args + ["--device-map", "auto", "--max-memory", "cpu=1KB"]) == 2
    err = capsys.readouterr().err
    assert "do not fit in" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        cli.main(args + ["--max-memory", "gpu0=1GB"])  # argparse: DEVICE must be a GPU number or cpu
    assert "write DEVICE=SIZE" in capsys.readouterr().err


def test_ppl_reports_what_it_ran_on(model_dir, tmp_path, capsys, no_gpu_avx2_cpu):
    cli, args, _ = _commands(model_dir, tmp_path)["ppl"]
    assert cli.main(args + ["--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["compute"]["device"] == "cpu" and record["compute"]["dtype"] == "fp32"
    assert "no bf16 instructions" in record["compute"]["reason"]


def test_export_writes_the_dtype_asked_for(model_dir, tmp_path, capsys):
    sizes = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / dtype
        assert export_cli.main(["--model", str(model_dir), "--shape", "d6-f1-h1", "--dtype", dtype,
                                "--out", str(out), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["dtype"] == dtype
        sizes[dtype] = (out / "model.safetensors").stat().st_size
    assert 0.45 < sizes["bf16"] / sizes["fp32"] < 0.55
    assert export_cli.main(["--model", str(model_dir), "--shape", "d6-f1-h1", "--gguf", "q4_km",
                            "--out", str(tmp_path / "x")]) == 2
    assert "unknown GGUF type 'q4_km'" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.fixture
def llama_8b_config(tmp_path):
    path = tmp_path / "llama-8b"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(LLAMA_8B))
    return path


def test_dry_run_plans_an_8b_model_without_weights(llama_8b_config, capsys):
    # 8B by hand: embed + head 2 x 128256 x 4096; per layer q,o 4096^2, k,v 4096 x 1024, 3 x 4096 x 14336,
    # 2 norms of 4096; one final norm
    per_layer = 2 * 4096 ** 2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    params = 2 * 128256 * 4096 + 32 * per_layer + 4096
    assert params == 8_030_261_248
    for cli, extra in ((select_cli, ["--samples", "8"]), (finetune_cli, ["--steps", "10"]),
                       (search_cli, ["--budget-ms", "40"])):
        assert cli.main(["--model", str(llama_8b_config), "--dry-run", "--plan-device", "h100", "--dtype", "bf16",
                         "--json", *extra]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert plan["dry_run"] and plan["parameters"] == params and plan["weight_bytes"] == 2 * params
        assert plan["kv_cache_bytes_per_token"] == 2 * 32 * 8 * 128 * 2  # K and V x layers x KV heads x head_dim x 2 B
        assert plan["estimated_seconds"] > 0 and plan["device"] == "h100" and plan["peak_memory_bytes"] > 2 * params
    assert select_cli.main(["--model", str(llama_8b_config), "--dry-run"]) == 0
    assert "the plan of this select job" in capsys.readouterr().out


@pytest.mark.parametrize("device, message", [("tpu", "unknown device 'tpu'"), ("cuda:0", "no CUDA device here")])
def test_profile_compute_device_is_checked_before_measuring(tmp_path, capsys, no_gpu_avx2_cpu, device, message):
    from amoeba_search.cli import profile as profile_cli

    out = tmp_path / "t.csv"
    code = profile_cli.main(["--device", "cpu", "--flow", "torch", "--compute-device", device, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_profile_compute_device_must_be_of_the_target_devices_kind():
    from amoeba_search.cli.profile import _compute_device
    from amoeba_search.profiling.devices import get_device

    assert _compute_device("cpu", get_device("cpu")) == "cpu"
    assert _compute_device(None, get_device("a5000")) is None
    with pytest.raises(ValueError, match="cannot stand for a5000"):
        _compute_device("cpu", get_device("a5000"))
