"""The default model's shipped SMoL adapter: train it with amoeba-finetune, score how it grew, commit it in bf16.

1. Runs the exact ``amoeba-finetune`` command below (the full method: SMoL mixture, sandwich sampling, in-place
   distillation, loss-magnitude balancing) into ``--run``, resumable: kill it and run this script again.
   Checkpoints every 50 steps, all kept, so the curve can be scored afterwards.
2. Scores held-out perplexity (wiki and austen ``eval`` splits: documents training never saw) at five shapes
   before fine-tuning and at every ``--eval-every`` steps (``results/default-adapter.json``, written after each
   checkpoint, so an interrupted scoring resumes too).
3. Writes the last checkpoint's adapter to ``profiles/smollm2-135m/adapter/`` in bf16, its ``adapter.json``
   recording the command, steps, data, seed, git commit, machine and the held-out numbers.

    python benchmarks/default_adapter.py            # 1,000 steps in bf16: ~1.5 h on 2 AMX cores
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amoeba_search.compute import cpu_fast_at  # noqa: E402
from amoeba_search.data import token_blocks  # noqa: E402
from amoeba_search.evaluation.perplexity import perplexity  # noqa: E402
from amoeba_search.finetune.smol import SMoLAdapter  # noqa: E402
from amoeba_search.finetune.trainer import read_log  # noqa: E402
from amoeba_search.paths import atomic_dir, atomic_write_text  # noqa: E402
from amoeba_search.profiling.machine import detect_machine  # noqa: E402
from amoeba_search.session import open_supernet  # noqa: E402
from amoeba_search.shapes import SubnetShape  # noqa: E402

SHAPES = ("d30-f1-h1", "d26-f0.875-h1", "d22-f0.75-h0.667", "d18-f0.625-h0.667", "d15-f0.5-h0.333")
STRATEGY = "profiles/smollm2-135m/strategy-beam4.json"
CORPORA = ("wiki", "austen")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--dtype", default="bf16" if cpu_fast_at(torch.bfloat16) else "fp32",
                   help="training dtype (default: bf16 where this CPU has bf16 instructions, else fp32)")
    p.add_argument("--eval-blocks", type=int, default=16, help="held-out blocks of 256 tokens per corpus and shape")
    p.add_argument("--run", type=Path, default=ROOT / "out" / "default-adapter", help="run directory (resumable)")
    p.add_argument("--dest", type=Path, default=ROOT / "profiles" / "smollm2-135m" / "adapter")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "default-adapter.json")
    return p.parse_args(argv)


def finetune_command(args) -> list[str]:
    """The amoeba-finetune command, with every setting spelled out (the published settings: lr 5e-4,
    128-token blocks, batch 4)."""
    return ["amoeba-finetune", "--model", "smollm2-135m", "--strategy", STRATEGY, "--data", "wiki", "--split",
            "train", "--steps", str(args.steps), "--batch-size", "4", "--seq-len", "128", "--lr", "5e-4",
            "--warmup-steps", "10", "--random-shapes", "2", "--experts", "5", "--top-k", "2", "--gate-noise", "0.1",
            "--seed", "0", "--checkpoint-every", "50", "--keep-checkpoints", str(args.steps // 50 + 1),
            "--device", "cpu", "--dtype", args.dtype, "--out", str(args.run.relative_to(ROOT))]


def git_commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "amoeba_search"], cwd=ROOT, capture_output=True, text=True)
    return None if done.returncode else done.stdout.strip() + ("+uncommitted-changes" if dirty.stdout.strip() else "")


def train(args, command: list[str]) -> None:
    final = args.run / "adapter" / "adapter.json"
    if final.is_file() and json.loads(final.read_text()).get("step") == args.steps:
        log(f"training: done already ({final})")
        return
    resume = ["--resume"] if (args.run / "run.json").is_file() else []
    cli = [sys.executable, "-m", "amoeba_search.cli.finetune", *command[1:], *resume]
    log("training: " + shlex.join(command) + (" --resume" if resume else ""))
    subprocess.run(cli, cwd=ROOT, check=True)


def score(loaded, blocks: dict, adapter_dir: Path | None) -> dict:
    """Held-out perplexity per corpus and shape, with the adapter of ``adapter_dir`` (None: the raw supernet)."""
    if loaded.adapter is not None:
        loaded.adapter.detach()
        loaded.adapter = None
    if adapter_dir is not None:
        loaded.adapter = SMoLAdapter.load(adapter_dir, loaded.supernet).attach().eval()
    out = {}
    for corpus, corpus_blocks in blocks.items():
        out[corpus] = {}
        for text in SHAPES:
            loaded.activate(SubnetShape.parse(text))
            out[corpus][text] = perplexity(loaded.supernet, corpus_blocks, batch_size=4).ppl
    return out


def mean_log(values: dict) -> float:
    return round(sum(math.log(v) for v in values.values()) / len(values), 4)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = finetune_command(args)
    commit = git_commit()
    train(args, command)
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    settings = {"command": shlex.join(command), "eval": {"corpora": list(CORPORA), "split": "eval", "seq_len": 256,
                                                          "blocks": args.eval_blocks, "shapes": list(SHAPES)}}
    if results.get("settings") != settings:
        results = {"claim": "the shipped adapter: held-out perplexity of five shapes as fine-tuning goes on",
                   "settings": settings, "curve": {}}
    rows = read_log(args.run)
    run_info = json.loads((args.run / "run.json").read_text())
    results.update(machine=detect_machine().summary(), training_dtype=run_info.get("dtype"),
                   train_elapsed_s=rows[-1]["elapsed_s"], steps=rows[-1]["step"],
                   trainable_parameters=run_info["adapter"]["trainable_parameters"])
    if "git_commit" not in results:
        results["git_commit"] = commit
    # scored in fp32: the reference numbers (bf16 moves held-out perplexity by < 1%, results/precision.json)
    loaded = open_supernet("smollm2-135m", ROOT / STRATEGY)
    blocks = {c: token_blocks(c, loaded.tokenizer, split="eval", seq_len=256, max_blocks=args.eval_blocks)
              for c in CORPORA}
    points = [0, *range(args.eval_every, args.steps + 1, args.eval_every)]
    for step in points:
        if str(step) in results["curve"]:
            continue
        checkpoint = None if step == 0 else args.run / "checkpoints" / f"step-{step:07d}"
        start = time.perf_counter()
        values = score(loaded, blocks, checkpoint)
        results["curve"][str(step)] = {**values, "mean_log_ppl": {c: mean_log(v) for c, v in values.items()},
                                       "eval_s": round(time.perf_counter() - start, 1)}
        log(f"step {step}: " + ", ".join(f"{c} {results['curve'][str(step)]['mean_log_ppl'][c]}" for c in CORPORA))
        atomic_write_text(args.results, json.dumps(results, indent=1) + "\n")
    first, last = results["curve"]["0"], results["curve"][str(args.steps)]
    results["targets"] = {"every_shape_improves": all(last[c][s] < first[c][s] for c in CORPORA for s in SHAPES),
                          "smallest_shape_wiki_ppl": last["wiki"][SHAPES[-1]]}
    ship(args, results)
    # the shipped adapter's own numbers: its weights are the checkpoint's rounded to bf16
    shipped = score(loaded, blocks, args.dest)
    results["shipped"] = {**shipped, "mean_log_ppl": {c: mean_log(v) for c, v in shipped.items()}}
    atomic_write_text(args.results, json.dumps(results, indent=1) + "\n")
    record = json.loads((args.dest / "adapter.json").read_text())
    record["heldout"] = {"split": "eval", "seq_len": 256, "blocks": args.eval_blocks,
                         "scored_in": "fp32 (the model) with these bf16 adapter weights", "perplexity": shipped}
    atomic_write_text(args.dest / "adapter.json", json.dumps(record, indent=2) + "\n")
    log(f"held-out perplexity of the shipped adapter: {results['shipped']['mean_log_ppl']}")
    return 0


def ship(args, results: dict) -> None:
    """The last checkpoint's adapter, in bf16, with its provenance, to ``--dest`` (replaced atomically)."""
    source = args.run / "checkpoints" / f"step-{args.steps:07d}"
    record = json.loads((source / "adapter.json").read_text())
    from safetensors.torch import load_file, save_file

    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(source / "adapter.safetensors")).items()}
    record.update(weights_dtype="bfloat16", training={
        "command": results["settings"]["command"], "steps": results["steps"], "data": "wiki (train split)",
        "seed": 0, "dtype": results["training_dtype"], "git_commit": results["git_commit"],
        "train_elapsed_s": results["train_elapsed_s"], "machine": results["machine"]},
        curve={step: point["mean_log_ppl"] for step, point in results["curve"].items()},
        results="benchmarks/results/default-adapter.json")
    with atomic_dir(args.dest, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "adapter.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"wrote {args.dest} ({sum(t.numel() for t in tensors.values()):,} weights in bf16)")


if __name__ == "__main__":
    raise SystemExit(main())
