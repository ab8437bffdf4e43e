import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from amoeba_search.compute import cpu_fast_at, parse_dtype
from amoeba_search.finetune.smol import SMoLAdapter, SMoLConfig
from amoeba_search.finetune.trainer import Trainer, TrainConfig, TrainingDiverged, read_log
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_model, tiny_tokenizer
from tests.finetune.helpers import tiny_data, tiny_loaded, tiny_space

SMALL = SMoLConfig(num_experts=3, top_k=2, rank=4, alpha=8.0)
ROOT = Path(__file__).resolve().parents[2]


def _trainer(out, **overrides) -> Trainer:
    loaded = tiny_loaded()
    config = TrainConfig(**{"steps": 6, "batch_size": 2, "lr": 5e-3, "warmup_steps": 1, "num_random": 1,
                            "checkpoint_every": 3, **overrides})
    adapter = SMoLAdapter(loaded.supernet, SMALL, seed=0)
    return Trainer(loaded, adapter, tiny_data(), config, out, tiny_space(loaded))


def _eval_ppl(trainer, shape):
    from amoeba_search.evaluation.perplexity import perplexity

    trainer.loaded.activate(shape)
    return perplexity(trainer.supernet, trainer.data.input_ids[:8], batch_size=8).ppl


def test_training_lowers_every_subnets_loss_and_writes_a_plottable_log(tmp_path):
    trainer = _trainer(tmp_path / "run", steps=12, checkpoint_every=6)
    shapes = [SubnetShape(6, 1.0, 1.0), SubnetShape(3, 0.5, 1 / 3), SubnetShape(4, 0.75, 2 / 3)]
    before = [_eval_ppl(trainer, s) for s in shapes]
    summary = trainer.run()
    trainer.adapter.eval()
    after = [_eval_ppl(trainer, s) for s in shapes]
    assert all(a < b for a, b in zip(after, before)), (before, after)
    rows = read_log(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[0]["shapes"].split("|")[:2] == ["d6-f1-h1", "d3-f0.5-h0.333"]
    assert Path(summary["adapter"], "adapter.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000006", "step-0000012"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["train"]["steps"] == 12 and run["adapter"]["config"]["num_experts"] == 3


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path):
    _trainer(tmp_path / "straight").run()
    straight = read_log(tmp_path / "straight")

    def kill_after_step_4(row):
        if row["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "killed").run(on_step=kill_after_step_4)
    assert [r["step"] for r in read_log(tmp_path / "killed")] == [1, 2, 3, 4]
    with pytest.raises(FileExistsError, match="--resume"):
        _trainer(tmp_path / "killed").run()
    with pytest.raises(ValueError, match="lr"):
        _trainer(tmp_path / "killed", lr=1e-3).run(resume=True)
    _trainer(tmp_path / "killed").run(resume=True)  # continues from step 3, the last checkpoint
    resumed = read_log(tmp_path / "killed")
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(straight, resumed):
        for key in ("loss_largest", "loss_smallest", "loss_random", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
    final_a = load_file(tmp_path / "straight" / "adapter" / "adapter.safetensors")
    final_b = load_file(tmp_path / "killed" / "adapter" / "adapter.safetensors")
    assert all(torch.allclose(final_a[k], final_b[k], atol=1e-6) for k in final_a)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = _trainer(tmp_path / "run", checkpoint_every=2)

    def poison_after_step_3(row):
        if row["step"] == 3:
            with torch.no_grad():
                next(iter(trainer.adapter.experts.values())).B.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"non-finite at step 4.*step-0000002.*--lr"):
        trainer.run(on_step=poison_after_step_3)
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-0000002"]
    saved = load_file(tmp_path / "run" / "checkpoints" / "step-0000002" / "adapter.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert not (tmp_path / "run" / "adapter").exists()


def test_balancing_and_distillation_switches_change_the_run(tmp_path):
    full = _trainer(tmp_path / "a", steps=2).run()
    off = _trainer(tmp_path / "b", steps=2, balance=False).run()
    a, b = read_log(full["out"]), read_log(off["out"])
    assert a[0]["loss_largest"] == pytest.approx(b[0]["loss_largest"])  # step 1: same losses before any update
    assert a[1]["loss_smallest"] != pytest.approx(b[1]["loss_smallest"], rel=1e-6)  # different updates


def _write_tiny_run_inputs(tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"document {i}: " + "the cat sat on the mat and looked around " * 12
                                for i in range(60)))
    return model_dir, text


def _finetune_cmd(model_dir, text, out, *extra):
    return ["--model", str(model_dir), "--data", str(text), "--out", str(out), "--steps", "2",
            "--batch-size", "2", "--seq-len", "16", "--rank", "4", "--experts", "3", "--random-shapes", "1",
            "--no-balance", "--warmup-steps", "1", "--lr", "1e-3", "--max-examples", "16", "--json", *extra]


# fp32: the two runs differ only in summation order, so their losses agree to far below any change a wrong
# gradient reduction would make. bf16: a batch of 2 and a batch of 4 round differently in every 16-bit matmul
# (relative step 2^-8), so the losses agree to a few of bf16's steps, not to fp32's.
DDP_TOLERANCE = {"fp32": 1e-4, "bf16": 4 * 2.0 ** -8}


@pytest.mark.parametrize("dtype", list(DDP_TOLERANCE))
def test_two_process_gloo_run_matches_one_process_with_the_same_global_batch(tmp_path, dtype):
    if cpu_fast_at(parse_dtype(dtype)) is None:
        pytest.skip(f"this CPU has no {dtype} instructions")
    model_dir, text = _write_tiny_run_inputs(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    two = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", "-m",
                          "amoeba_search.cli.finetune", *_finetune_cmd(model_dir, text, tmp_path / "two"),
                          "--dtype", dtype], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "amoeba_search.cli.finetune",
                          *_finetune_cmd(model_dir, text, tmp_path / "one")[:-1], "--batch-size", "4", "--json",
                          "--dtype", dtype], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["world_size"] == 2 and dtype in json.dumps(run)
    a, b = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert len(a) == len(b) == 2
    for row_a, row_b in zip(a, b):
        assert row_a["loss_largest"] == pytest.approx(row_b["loss_largest"], rel=DDP_TOLERANCE[dtype])
        assert row_a["loss_smallest"] == pytest.approx(row_b["loss_smallest"], rel=DDP_TOLERANCE[dtype])


@pytest.mark.parametrize("damage", ["truncated", "non-finite"])
def test_resume_falls_back_past_a_damaged_latest_checkpoint(tmp_path, damage, caplog):
    from safetensors.torch import save_file

    out = tmp_path / "run"
    _trainer(out, steps=4, checkpoint_every=2).run()
    newest = out / "checkpoints" / "step-0000004" / "adapter.safetensors"
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[:100])
    else:
        tensors = load_file(str(newest))
        name = next(iter(tensors))
        tensors[name] = torch.full_like(tensors[name], float("nan"))
        save_file(tensors, str(newest))
    resumed = _trainer(out, steps=6, checkpoint_every=2)
    with caplog.at_level("WARNING"):
        resumed.run(resume=True)
    assert resumed.resumed_after_skipping and resumed.resumed_after_skipping[0].startswith("step-0000004")
    assert [r["step"] for r in read_log(out)] == list(range(1, 7))  # steps 3-4 were trained again from step 2
    assert resumed.adapter.is_finite()


def test_a_non_finite_adapter_is_never_saved(tmp_path):
    trainer = _trainer(tmp_path / "run", steps=2, checkpoint_every=2)
    with torch.no_grad():
        next(trainer.adapter.parameters()).fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match="not finite"):
        trainer.save_checkpoint()
    assert not (tmp_path / "run" / "checkpoints").exists()
