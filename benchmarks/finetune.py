"""Stage 2 benchmark: one-for-all fine-tuning restores every subnet at once, and each part of the method helps.

On the default model (SmolLM2-135M) with the committed strategy, trains on the ``train`` split of a text source
and scores held-out perplexity on its ``eval`` split (different documents) for several shapes, including the
smallest of the search space, before fine-tuning and after each variant, all at equal steps and settings:

- ``smol``: the full method: SMoL adapter (T experts, top-k, shape gate), sandwich sampling, in-place
  distillation, loss-magnitude balancing;
- ``single-lora``: one LoRA shared by every shape (T=1) at the same *active* rank as the SMoL mixture
  (rank x top-k), so it has as many trainable weights per forward pass; balancing and distillation on;
- ``smol-no-balance``: the full method with loss-magnitude balancing off;
- optional, not run by default: ``smol-no-noise`` (deterministic routing while training too),
  ``smol-paper-noise`` (the gate noise starting at Shazeer et al.'s std softplus(0) = 0.69 instead of 0.1) and
  ``smol-uncentred-gate`` (the gate reads the raw kept-layer mask and ratios, not centred on the space's mean).

Targets: every shape improves with the full method, the smallest by at least 30% in perplexity, and the full
method has the best mean log-perplexity over the shapes. Each variant's run directory is resumable (kill and
re-run the same command); results are written to ``benchmarks/results/finetune.json`` after every variant,
beside the variants already there from a run with the same settings (the file is re-read at each write, so
variants may run at the same time in separate processes).

    python benchmarks/finetune.py            # ~50 min on 2 CPU cores with the defaults
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amoeba_search.data import token_blocks  # noqa: E402
from amoeba_search.evaluation.perplexity import perplexity  # noqa: E402
from amoeba_search.finetune.data import text_data  # noqa: E402
from amoeba_search.finetune.smol import SMoLAdapter, SMoLConfig, default_rank  # noqa: E402
from amoeba_search.finetune.trainer import Trainer, TrainConfig, read_log  # noqa: E402
from amoeba_search.paths import atomic_write_text  # noqa: E402
from amoeba_search.session import open_supernet  # noqa: E402
from amoeba_search.shapes import SubnetShape  # noqa: E402

SHAPES = ("d30-f1-h1", "d26-f0.875-h1", "d22-f0.75-h0.667", "d18-f0.625-h0.667", "d15-f0.5-h0.333")
ABLATION = ("smol", "single-lora", "smol-no-balance")  # the ablation, run by default
VARIANTS = (*ABLATION, "smol-no-noise", "smol-paper-noise", "smol-uncentred-gate")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--strategy", default=str(ROOT / "profiles" / "smollm2-135m" / "strategy.json"))
    p.add_argument("--data", default="wiki", help="train on its train split, score on its eval split")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--random-shapes", type=int, default=2)
    p.add_argument("--experts", type=int, default=5)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--eval-blocks", type=int, default=16)
    p.add_argument("--eval-seq-len", type=int, default=256)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--variants", default=",".join(ABLATION),
                   help=f"comma-separated, from {', '.join(VARIANTS)} (default: %(default)s)")
    p.add_argument("--runs", type=Path, default=ROOT / "out" / "bench-finetune", help="run directories (resumable)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "finetune.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", action="store_true", help="only print the markdown table of the results file")
    return p.parse_args(argv)


def variant_settings(name: str, args, rank: int) -> tuple[SMoLConfig, dict]:
    """The variant's adapter settings and its overrides of the training settings."""
    if name in ("smol", "smol-uncentred-gate"):
        return SMoLConfig(args.experts, args.top_k, rank, 2.0 * rank), {"balance": True}
    if name == "single-lora":
        active = rank * args.top_k
        return SMoLConfig(1, 1, active, 2.0 * active), {"balance": True}
    if name == "smol-no-balance":
        return SMoLConfig(args.experts, args.top_k, rank, 2.0 * rank), {"balance": False}
    if name == "smol-no-noise":  # the gate routes each shape deterministically while training too
        return SMoLConfig(args.experts, args.top_k, rank, 2.0 * rank, noise=False), {"balance": True}
    if name == "smol-paper-noise":  # the gate noise's initial std as Shazeer et al. start it: softplus(0)
        return SMoLConfig(args.experts, args.top_k, rank, 2.0 * rank, noise_std=math.log(2)), {"balance": True}
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")


def evaluate(loaded, shapes, blocks) -> dict[str, float]:
    out = {}
    for shape in shapes:
        loaded.activate(shape)
        out[str(shape)] = perplexity(loaded.supernet, blocks, batch_size=4).ppl
    return out


def markdown(results: dict) -> str:
    """The README table: held-out perplexity per shape before and after each variant."""
    variants = list(results["variants"])
    lines = ["| shape | before | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for shape, before in results["before"].items():
        cells = [f"{results['variants'][v]['after'][shape]:.1f} ({results['variants'][v]['ppl_change_pct'][shape]:+.0f}%)"
                 for v in variants]
        lines.append(f"| {shape} | {before:.1f} | " + " | ".join(cells) + " |")
    lines.append("| mean log-ppl | " + f"{results['before_mean_log_ppl']:.3f} | "
                 + " | ".join(f"{results['variants'][v]['mean_log_ppl']:.3f}" for v in variants) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        print(markdown(json.loads(args.results.read_text())))
        return 0
    torch.manual_seed(args.seed)
    shapes = [SubnetShape.parse(s) for s in args.shapes.split(",")]
    loaded = open_supernet(args.model, args.strategy)
    space = loaded.space()
    for shape in shapes:
        space.validate(shape)
    rank = default_rank(loaded.supernet.dims)
    eval_blocks = token_blocks(args.data, loaded.tokenizer, split="eval", seq_len=args.eval_seq_len,
                               max_blocks=args.eval_blocks)
    train = text_data(args.data, loaded.tokenizer, seq_len=args.seq_len, split="train")
    results = {
        "claim": "one fine-tuning run restores every subnet; SMoL + balancing beats a single LoRA and no balancing",
        "model": args.model, "strategy": os.path.relpath(args.strategy, ROOT),
        "settings": {"train": {"data": args.data, "split": "train", "seq_len": args.seq_len, "blocks": len(train),
                               "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                               "warmup_steps": args.warmup_steps, "random_shapes_per_step": args.random_shapes,
                               "tokens_per_subnet_step": args.batch_size * args.seq_len, "seed": args.seed,
                               "experts": args.experts, "top_k": args.top_k},
                     "eval": {"data": args.data, "split": "eval", "seq_len": args.eval_seq_len,
                              "blocks": args.eval_blocks, "tokens": args.eval_blocks * (args.eval_seq_len - 1)},
                     "search_space": {"depths": [space.depths[0], space.depths[-1]],
                                      "ffn_ratios": list(space.ffn_ratios), "heads_ratios": list(space.heads_ratios)}},
        "machine": {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "command": "python benchmarks/finetune.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    names = args.variants.split(",")
    results["variants"] = {}
    log("held-out perplexity before fine-tuning")
    start = time.perf_counter()
    results["before"] = evaluate(loaded, shapes, eval_blocks)
    results["before_eval_s"] = round(time.perf_counter() - start, 1)
    for shape, ppl in results["before"].items():
        log(f"  {shape}: {ppl:.2f}")

    for name in names:
        smol, train_overrides = variant_settings(name, args, rank)
        centred = name != "smol-uncentred-gate"
        config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             warmup_steps=args.warmup_steps, num_random=args.random_shapes, seed=args.seed,
                             checkpoint_every=10, **train_overrides)
        adapter = SMoLAdapter(loaded.supernet, smol, seed=args.seed,
                              center_on=loaded.routes(space) if centred else None)
        run_dir = args.runs / name
        trainer = Trainer(loaded, adapter, train, config, run_dir, space,
                          run_info={"model": args.model, "strategy": args.strategy, "variant": name})
        log(f"{name}: training {args.steps} steps ({adapter.describe()['trainable_parameters']:,} adapter weights)")
        start = time.perf_counter()

        def on_step(row, name=name):
            if row["step"] % 10 == 0 or row["step"] == 1:
                log(f"  {name} step {row['step']}: loss largest {row['loss_largest']:.3f} smallest "
                    f"{row['loss_smallest']:.3f} random {row['loss_random']:.3f}, {row['tokens_per_s']:.0f} tok/s")

        trainer.run(resume=True, on_step=on_step)
        train_s = time.perf_counter() - start
        after = evaluate(loaded, shapes, eval_blocks)
        adapter.detach()
        rows = read_log(run_dir)
        change = {s: round(100 * (after[s] - results["before"][s]) / results["before"][s], 2) for s in after}
        results["variants"][name] = {
            "adapter": {**adapter.describe()["config"], "trainable_parameters": adapter.describe()["trainable_parameters"]},
            "balance": train_overrides["balance"], "distill": True, "gate_input_centred": centred,
            "after": after, "ppl_change_pct": change,
            "mean_log_ppl": round(sum(math.log(v) for v in after.values()) / len(after), 4),
            "train_wall_s_this_run": round(train_s, 1),
            "train_elapsed_s_logged": rows[-1]["elapsed_s"] if rows else None,
            "loss_first_last": {k: [rows[0][k], rows[-1][k]] for k in ("loss_largest", "loss_smallest", "loss_random")},
            "run_dir": os.path.relpath(run_dir, ROOT), "command": results["command"],
        }
        for shape in after:
            log(f"  {name} {shape}: {results['before'][shape]:.2f} -> {after[shape]:.2f} ({change[shape]:+.1f}%)")
        _finish(results, shapes, args.results, set(names))
    print(markdown(results))
    return 0


def _earlier_variants(path: Path, results: dict, rerun: set[str]) -> dict:
    """The variants already in ``path`` from a run with the same model, strategy and settings, except those
    run again: the ablation can be run one variant at a time into one file."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    same = all(earlier.get(k) == json.loads(json.dumps(results[k])) for k in ("model", "strategy", "settings"))
    return {k: v for k, v in earlier.get("variants", {}).items() if k not in rerun} if same else {}


def _finish(results: dict, shapes, path: Path, mine: set[str]) -> None:
    # Read the file again at each write, not once at the start: variants run by other processes at the same
    # time (one per core) land beside ours instead of being overwritten.
    results["variants"] = {**_earlier_variants(path, results, mine),
                           **{k: v for k, v in results["variants"].items() if k in mine}}
    before_mean = sum(math.log(v) for v in results["before"].values()) / len(results["before"])
    results["before_mean_log_ppl"] = round(before_mean, 4)
    results["variants"] = dict(sorted(results["variants"].items(), key=lambda kv: VARIANTS.index(kv[0])))
    full = results["variants"].get("smol")
    if full is not None:
        smallest = str(min(shapes))
        best = min(results["variants"], key=lambda v: results["variants"][v]["mean_log_ppl"])
        results["targets"] = {
            "every_shape_improves": all(c < 0 for c in full["ppl_change_pct"].values()),
            "smallest_shape": smallest,
            "smallest_improvement_pct": -full["ppl_change_pct"][smallest],
            "smallest_improves_30pct": -full["ppl_change_pct"][smallest] >= 30,
            "best_variant_by_mean_log_ppl": best,
            "full_method_best_on_average": best == "smol" and len(results["variants"]) > 1,
        }
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")
    log(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
