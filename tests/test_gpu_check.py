"""benchmarks/gpu_check.py: its CPU smoke mode runs every section, and its guards refuse what they should."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def gpu_check():
    return importlib.import_module("benchmarks.gpu_check")


def test_cpu_mode_needs_an_out_path_other_than_the_committed_result():
    module = gpu_check()
    with pytest.raises(SystemExit):
        module.parse_args(["--device", "cpu", "--tiny"])
    with pytest.raises(SystemExit):
        module.parse_args(["--device", "cpu", "--tiny", "--out", str(module.DEFAULT_OUT)])
    with pytest.raises(SystemExit):
        module.parse_args(["--sections", "depth_dp,nope", "--out", "/tmp/x.json"])
    assert module.parse_args([]).out == str(module.DEFAULT_OUT)


def test_spread_layers_keeps_first_and_last():
    module = gpu_check()
    assert module.spread_layers(16, 8) == [0, 2, 4, 6, 9, 11, 13, 15]
    assert module.spread_layers(6, 6) == list(range(6))
    for depth in range(1, 17):
        layers = module.spread_layers(16, depth)
        assert len(layers) == depth and layers == sorted(set(layers)) and layers[-1] == 15


def test_json_is_strict():
    module = gpu_check()
    assert module.json_safe({"a": float("nan"), "b": (1, float("inf")), "c": torch.bfloat16}) == \
        {"a": "nan", "b": [1, "inf"], "c": "torch.bfloat16"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_exits_2_with_one_line(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "needs an NVIDIA GPU" in run.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_tiny_cpu_smoke_run_passes_every_section(tmp_path):
    out = tmp_path / "smoke.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    sections = result["sections"]
    assert result["finished"] and result["machine"]["cpu_model"]
    assert {n: s["status"] for n, s in sections.items()} == {
        "depth_dp": "ok", "finetune": "ok", "perplexity": "ok", "torch_profile": "ok", "tensorrt_llm": "skipped"}
    assert all(s["wall_s"] is not None for s in sections.values())
    assert sections["depth_dp"]["metrics_finite"] and sections["depth_dp"]["evaluations_per_s"] > 0
    assert sections["depth_dp"]["device_vs_cpu_fp32"]["rel_diff_fp32"] == 0.0  # the CPU against itself
    assert sections["finetune"]["losses_finite"] and len(sections["finetune"]["step_s"]) == 20
    assert sections["finetune"]["adapter_dtype"] == "torch.float32"
    assert sections["finetune"]["base_dtype"] == "torch.bfloat16"
    assert all(s["finite"] for s in sections["perplexity"]["shapes"])
    profile = sections["torch_profile"]
    assert len(profile["shapes"]) == 3 and profile["energy"]["status"] == "skipped"
    assert profile["torch_flow_crosscheck"]["status"] == "ok"
    assert sections["tensorrt_llm"]["error"] == "tensorrt_llm not installed"


@pytest.mark.slow
def test_distributed_launcher_runs_the_trainer_on_two_gloo_processes():
    """The multi-GPU path (spawned ranks, one process group, the trainer's all-reduce) on 2 CPU processes."""
    module = gpu_check()
    spec = {"model_config": module.TINY_MODEL, "steps": 2, "batch_size": 2, "seq_len": 16, "examples": 8, "rank": 4}
    record = module._run_distributed(spec, 2, "gloo", "cpu", 240)
    assert record["status"] == "ok", record["error"]
    assert record["rank0"]["world_size"] == 2 and record["rank0"]["losses_finite"]
