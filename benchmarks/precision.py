"""fp32 against bf16 on the default model, side by side in one run on this machine: speed and what it costs.

For each section both dtypes run back to back (fp32, then bf16), so machine drift touches both alike:

- ``dp``: the depth DP (DP + perplexity, ``--samples`` calibration blocks of wiki, min depth ``--min-depth``):
  evaluations per second, and whether the kept layers at depths 24/20/16 are the same in both dtypes;
- ``eval``: perplexity tokens per second on held-out wiki (full model);
- ``ppl``: held-out wiki perplexity at the five fine-tuning shapes (beam-4 strategy, bias compensation);
- ``finetune``: ``--ft-steps`` SMoL fine-tuning steps (bf16: autocast, adapter and optimizer in fp32): median
  step time and the loss over the last steps;
- ``finetune_profile``: one profiled fine-tuning step per dtype, its time split into matrix products and the rest.

Targets (issue 16): DP evaluations/s and fine-tuning step time >= 2.5x faster in bf16; perplexity within 1%.
On a CPU without bf16 instructions (AVX512-BF16, AMX) torch emulates bf16, and the file says so: the machine's
ISA flags are recorded beside the numbers. Each section is written to ``results/precision.json`` when done and
skipped on a rerun with the same settings (``--redo`` to measure again).

    python benchmarks/precision.py            # ~40 min on 2 AVX2 cores (bf16 emulated there)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amoeba_search.compute import cpu_fast_at, cpu_flags, dtype_name  # noqa: E402
from amoeba_search.data import token_blocks  # noqa: E402
from amoeba_search.evaluation.perplexity import perplexity  # noqa: E402
from amoeba_search.finetune.data import load_training_data  # noqa: E402
from amoeba_search.finetune.smol import SMoLAdapter, SMoLConfig, default_rank  # noqa: E402
from amoeba_search.finetune.trainer import Trainer, TrainConfig, read_log  # noqa: E402
from amoeba_search.paths import atomic_write_text  # noqa: E402
from amoeba_search.profiling.machine import detect_machine  # noqa: E402
from amoeba_search.selection.calibration import PerplexityMetric, spread_blocks  # noqa: E402
from amoeba_search.selection.depth_dp import depth_dp  # noqa: E402
from amoeba_search.selection.objective import ModelObjective  # noqa: E402
from amoeba_search.session import open_supernet  # noqa: E402
from amoeba_search.shapes import SubnetShape  # noqa: E402

DTYPES = (torch.float32, torch.bfloat16)
SHAPES = ("d30-f1-h1", "d26-f0.875-h1", "d22-f0.75-h0.667", "d18-f0.625-h0.667", "d15-f0.5-h0.333")
COMPARED_DEPTHS = (24, 20, 16)
ISA = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "avx512_fp16", "bf16")
STRATEGY = ROOT / "profiles" / "smollm2-135m" / "strategy-beam4.json"
# the matrix products: the work bf16 instructions speed up (attention is not among them: it runs in fp32 where
# autograd takes its backward, see models/supernet)
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")
PROFILED = 2  # fine-tuning steps profiled per dtype


def machine() -> dict:
    info = detect_machine()
    return {"cpu_model": info.cpu_model, "cpu_cores": info.cpu_cores, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa_flags": sorted(f for f in ISA if f in cpu_flags()),
            "bf16_instructions": cpu_fast_at(torch.bfloat16)}


def section_dp(args) -> dict:
    out, compared = {}, [d for d in COMPARED_DEPTHS if d >= args.min_depth]
    for dtype in DTYPES:
        loaded = open_supernet("smollm2-135m", dtype=dtype)
        blocks = spread_blocks(token_blocks("wiki", loaded.tokenizer, split="calib", seq_len=args.seq_len),
                               args.samples)
        objective = ModelObjective(loaded.supernet, PerplexityMetric(blocks, batch_size=args.samples))
        start = time.perf_counter()
        result = depth_dp(objective, min_depth=args.min_depth)
        seconds = time.perf_counter() - start
        out[dtype_name(dtype)] = {"evaluations": result.evaluations, "seconds": round(seconds, 2),
                                  "evaluations_per_s": result.evaluations / seconds,
                                  "layers": {str(d): result.depth_layers[d] for d in compared},
                                  "metric": {str(d): result.depth_metric[d] for d in compared}}
        print(f"dp {dtype_name(dtype)}: {result.evaluations} evaluations in {seconds:.0f} s", flush=True)
    out["speedup"] = out["bf16"]["evaluations_per_s"] / out["fp32"]["evaluations_per_s"]
    out["same_layers"] = {str(d): out["fp32"]["layers"][str(d)] == out["bf16"]["layers"][str(d)]
                          for d in compared}
    return out


def section_eval(args) -> dict:
    out = {}
    for dtype in DTYPES:
        loaded = open_supernet("smollm2-135m", dtype=dtype)
        blocks = token_blocks("wiki", loaded.tokenizer, split="eval", seq_len=256, max_blocks=args.eval_blocks)
        perplexity(loaded.supernet, blocks[:1], batch_size=1)  # warm-up
        start = time.perf_counter()
        result = perplexity(loaded.supernet, blocks, batch_size=4)
        seconds = time.perf_counter() - start
        out[dtype_name(dtype)] = {"tokens": int(blocks.numel()), "seconds": round(seconds, 2),
                                  "tokens_per_s": blocks.numel() / seconds, "ppl": result.ppl}
        print(f"eval {dtype_name(dtype)}: {blocks.numel() / seconds:.0f} tokens/s", flush=True)
    out["speedup"] = out["bf16"]["tokens_per_s"] / out["fp32"]["tokens_per_s"]
    return out


def section_ppl(args) -> dict:
    out = {}
    for dtype in DTYPES:
        loaded = open_supernet("smollm2-135m", STRATEGY, dtype=dtype)
        blocks = token_blocks("wiki", loaded.tokenizer, split="eval", seq_len=256, max_blocks=args.eval_blocks)
        values = {}
        for text in SHAPES:
            loaded.activate(SubnetShape.parse(text))
            values[text] = perplexity(loaded.supernet, blocks, batch_size=4).ppl
        out[dtype_name(dtype)] = values
        print(f"ppl {dtype_name(dtype)}: {values}", flush=True)
    out["relative_difference"] = {s: out["bf16"][s] / out["fp32"][s] - 1 for s in SHAPES}
    out["max_abs_relative_difference"] = max(abs(v) for v in out["relative_difference"].values())
    return out


def finetune_trainer(args, dtype, steps: int, run: str) -> Trainer:
    """The fine-tuning run of the ``finetune`` sections: the beam-4 supernet in ``dtype``, an fp32 adapter."""
    loaded = open_supernet("smollm2-135m", STRATEGY, dtype=dtype)
    space = loaded.space()
    rank = default_rank(loaded.supernet.dims)
    adapter = SMoLAdapter(loaded.supernet, SMoLConfig(rank=rank, alpha=2.0 * rank), seed=0,
                          center_on=loaded.routes(space), dtype=torch.float32)
    data = load_training_data("wiki", loaded.tokenizer, seq_len=args.ft_seq_len)
    config = TrainConfig(steps=steps, batch_size=args.ft_batch, lr=5e-4, warmup_steps=10, checkpoint_every=steps)
    return Trainer(loaded, adapter, data, config, run, space)


def section_finetune(args) -> dict:
    out = {}
    for dtype in DTYPES:
        with tempfile.TemporaryDirectory() as run:
            finetune_trainer(args, dtype, args.ft_steps, run).run()
            rows = read_log(run)
        times = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(rows, rows[1:])]
        last = rows[-5:]
        out[dtype_name(dtype)] = {
            "steps": len(rows), "median_step_s": statistics.median(times),
            "loss_last5": {k: statistics.mean(r[k] for r in last) for k in ("loss_largest", "loss_smallest",
                                                                             "loss_total")},
            "loss_first": {k: rows[0][k] for k in ("loss_largest", "loss_smallest", "loss_total")}}
        print(f"finetune {dtype_name(dtype)}: {statistics.median(times):.2f} s/step", flush=True)
    out["speedup"] = out["fp32"]["median_step_s"] / out["bf16"]["median_step_s"]
    out["loss_difference_last5"] = out["bf16"]["loss_last5"]["loss_total"] - out["fp32"]["loss_last5"]["loss_total"]
    return out


def section_finetune_profile(args) -> dict:
    """Where a fine-tuning step's time goes, per dtype: torch.profiler's self CPU time of steps 3 and 4 (two
    warm-up steps) per step, split into matrix products (MATMUL_OPS) and everything else, with the largest other ops."""
    from torch.profiler import ProfilerActivity, profile, schedule

    out = {}
    for dtype in DTYPES:
        with tempfile.TemporaryDirectory() as run, profile(activities=[ProfilerActivity.CPU],
                                                           schedule=schedule(wait=1, warmup=1, active=PROFILED)) as prof:
            finetune_trainer(args, dtype, 2 + PROFILED, run).run(on_step=lambda row: prof.step())
        ops = {}
        for e in prof.key_averages():  # each step's annotation (ProfilerStep#N) holds the Python time between ops
            name = "python between ops" if e.key.startswith("ProfilerStep") else e.key
            ops[name] = ops.get(name, 0.0) + e.self_cpu_time_total / 1e6 / PROFILED
        matmul = sum(t for k, t in ops.items() if k in MATMUL_OPS)
        total = sum(ops.values())
        others = sorted(((k, t) for k, t in ops.items() if k not in MATMUL_OPS), key=lambda kv: -kv[1])
        out[dtype_name(dtype)] = {"step_s": round(total, 3), "matmul_s": round(matmul, 3),
                                  "other_s": round(total - matmul, 3),
                                  "largest_other_ops_s": {k: round(t, 3) for k, t in others[:8]}}
        print(f"finetune profile {dtype_name(dtype)}: {total:.2f} s, matmuls {matmul:.2f} s", flush=True)
    fp32, bf16 = out["fp32"], out["bf16"]
    out["matmul_speedup"] = fp32["matmul_s"] / bf16["matmul_s"]
    out["other_speedup"] = fp32["other_s"] / bf16["other_s"]
    out["step_speedup"] = fp32["step_s"] / bf16["step_s"]
    # bf16 step time that 2.5x needs, and the non-matmul time left for it once bf16's matmuls are paid
    out["bf16_step_s_for_2.5x"] = fp32["step_s"] / 2.5
    out["other_s_allowed_for_2.5x"] = fp32["step_s"] / 2.5 - bf16["matmul_s"]
    return out


SECTIONS = {"dp": section_dp, "eval": section_eval, "ppl": section_ppl, "finetune": section_finetune,
            "finetune_profile": section_finetune_profile}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "precision.json")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--samples", type=int, default=2, help="DP calibration blocks")
    p.add_argument("--seq-len", type=int, default=128, help="DP calibration block length")
    p.add_argument("--min-depth", type=int, default=16)
    p.add_argument("--eval-blocks", type=int, default=8)
    p.add_argument("--ft-steps", type=int, default=20)
    p.add_argument("--ft-batch", type=int, default=2)
    p.add_argument("--ft-seq-len", type=int, default=32)
    p.add_argument("--redo", action="store_true", help="measure sections that are already in the results file")
    args = p.parse_args()
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "sections", "redo")}
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if results.get("settings") != settings:
        results = {"settings": settings}
    here = machine()
    for name in args.sections.split(","):
        done = results.get(name)
        if done and done.get("machine", {}).get("cpu_model") == here["cpu_model"] and not args.redo:
            print(f"{name}: already measured on this CPU, skipped (--redo to measure again)")
            continue
        start = time.perf_counter()
        results[name] = {"machine": here, **SECTIONS[name](args), "wall_s": round(time.perf_counter() - start, 1),
                         "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        results["targets"] = targets(results)
        atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    print(json.dumps(results.get("targets"), indent=1))
    return 0


def targets(results: dict) -> dict:
    out = {}
    if "dp" in results:
        out["dp_speedup_at_least_2.5"] = results["dp"]["speedup"] >= 2.5
        out["dp_same_layers_24_20_16"] = all(results["dp"]["same_layers"].values())
    if "finetune" in results:
        out["finetune_speedup_at_least_2.5"] = results["finetune"]["speedup"] >= 2.5
    if "ppl" in results:
        out["ppl_within_1_percent"] = results["ppl"]["max_abs_relative_difference"] <= 0.01
    return out


if __name__ == "__main__":
    raise SystemExit(main())
