"""amoeba-finetune: one fine-tuning run that restores every subnet at once (stage 2)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from amoeba_search.cli._common import (ArgumentParser, add_compute_arguments, compute_line, compute_of, emit_json, file_path,
                                       non_negative_float, non_negative_int, positive_float, positive_int, run,
                                       unit_float)
from amoeba_search.cli._dry_run import add_dry_run_arguments
from amoeba_search.errors import InputError

PROG = "amoeba-finetune"


def _defaults(cls) -> dict:
    """``name -> (default, help)`` of a settings dataclass (``TrainConfig``, ``SMoLConfig``): the flags take both
    from the library, so the command and a Python user start from the same values."""
    return {f.name: (f.default, f.metadata.get("help", "")) for f in dataclasses.fields(cls)}


def _flag(group, flag: str, spec: tuple, *, type, help_extra: str = "", **kwargs) -> None:
    default, text = spec
    group.add_argument(flag, type=type, default=default, help=f"{text}{help_extra} (default: %(default)s)", **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="One-for-all fine-tuning: a shape-aware mixture of LoRAs (SMoL) trained on sandwich-sampled "
                    "subnets (largest, smallest, random) with in-place distillation from the largest subnet and "
                    "loss-magnitude balancing. Writes checkpoints, log.csv and the final adapter to --out.",
        epilog="example: amoeba-finetune --strategy profiles/smollm2-135m/strategy.json --data wiki --steps 200 "
               "--out out/ft   (data parallel: torchrun --nproc_per_node 2 $(which amoeba-finetune) ...)")
    parser.add_argument("--model", default="smollm2-135m", help="alias, local HF directory, .gguf or HF id")
    parser.add_argument("--strategy", type=file_path, help="selection strategy JSON (without one, only full-depth shapes train)")
    parser.add_argument("--data", default="wiki",
                        help="training text (austen, lee, wiki, .txt/.jsonl/directory, hf:NAME) or an Alpaca-style "
                             "instruction .jsonl (instruction/input/output; loss on the response only)")
    parser.add_argument("--split", default="train", choices=["train", "calib", "eval"], help="split of text data")
    parser.add_argument("--max-examples", type=positive_int, help="use at most this many blocks/examples")
    parser.add_argument("--out", type=Path, help="run directory (required unless --dry-run)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    from amoeba_search.finetune.smol import SMoLConfig
    from amoeba_search.finetune.trainer import TrainConfig

    train, smol = _defaults(TrainConfig), _defaults(SMoLConfig)
    g = parser.add_argument_group("training")
    _flag(g, "--steps", train["steps"], type=int)
    _flag(g, "--batch-size", train["batch_size"], type=positive_int)
    _flag(g, "--seq-len", train["seq_len"], type=positive_int)
    _flag(g, "--lr", train["lr"], type=positive_float)
    _flag(g, "--warmup-steps", train["warmup_steps"], type=non_negative_int)
    _flag(g, "--random-shapes", train["num_random"], type=non_negative_int)
    g.add_argument("--min-depth", type=positive_int, help="smallest depth sampled (default: the strategy's smallest)")
    g.add_argument("--no-distill", action="store_true", help="train every subnet on the labels instead")
    _flag(g, "--label-weight", train["label_weight"], type=unit_float)
    g.add_argument("--no-balance", action="store_true", help="turn loss-magnitude balancing off (ablation)")
    _flag(g, "--seed", train["seed"], type=int)
    _flag(g, "--checkpoint-every", train["checkpoint_every"], type=positive_int)
    _flag(g, "--keep-checkpoints", train["keep_checkpoints"], type=positive_int)
    a = parser.add_argument_group("SMoL adapter")
    _flag(a, "--experts", smol["num_experts"], type=positive_int)
    _flag(a, "--top-k", smol["top_k"], type=positive_int)
    a.add_argument("--rank", type=positive_int, help="LoRA rank (default: 64 scaled from hidden size 4096 to the model's)")
    a.add_argument("--alpha", type=positive_float, help="LoRA alpha (default: 2 x rank)")
    _flag(a, "--gate-noise", smol["noise_std"], type=non_negative_float)
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary at the end")
    add_compute_arguments(parser)
    add_dry_run_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        import torch
        from tqdm.auto import tqdm

        from amoeba_search.distributed import init_distributed
        from amoeba_search.finetune.data import load_training_data
        from amoeba_search.finetune.trainer import TrainConfig
        from amoeba_search.session import adapter_config, finetune, finetune_space, open_supernet

        train = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                            warmup_steps=args.warmup_steps, num_random=args.random_shapes,
                            distill=not args.no_distill, label_weight=args.label_weight,
                            balance=not args.no_balance, seed=args.seed, checkpoint_every=args.checkpoint_every,
                            keep_checkpoints=args.keep_checkpoints)
        if args.dry_run:
            return _dry_run(args)
        if args.out is None:
            raise InputError("--out is required: the run directory (or pass --dry-run for the plan)")
        rank, world = init_distributed()
        compute = compute_of(args, rank=rank)
        if compute.dtype == torch.float16:
            raise InputError("fine-tuning in fp16 needs loss scaling, which amoeba-finetune does not do; "
                             "use --dtype bf16 (CUDA, or a CPU with bf16 instructions) or fp32")
        # the frozen model in the compute dtype, straight onto the device; the adapter trains in fp32 (autocast)
        loaded = open_supernet(args.model, args.strategy, dtype=compute.dtype, device=compute.device)
        smol = adapter_config(loaded.supernet.dims, num_experts=args.experts, top_k=args.top_k, rank=args.rank,
                              alpha=args.alpha, noise_std=args.gate_noise)
        space = finetune_space(loaded, args.min_depth)
        data = load_training_data(args.data, loaded.tokenizer, seq_len=train.seq_len,
                                  max_examples=args.max_examples, split=args.split)
        run_info = {"model": args.model, "strategy": args.strategy, "device": str(compute.device),
                    "compute": compute.to_dict()}
        quiet = args.json or rank != 0
        bar = tqdm(total=train.steps, unit="step", desc="fine-tuning", disable=quiet, file=sys.stderr)

        def on_step(row):
            if bar.n == 0 and row["step"] > 1:
                bar.update(row["step"] - 1)
            bar.set_postfix_str(f"loss {row['loss_largest']:.3f}/{row['loss_smallest']:.3f} "
                                f"(largest/smallest) {row['tokens_per_s']:.0f} tok/s")
            bar.update(1)

        try:
            summary = finetune(loaded, data, args.out, train=train, smol=smol, space=space, resume=args.resume,
                               on_step=on_step, run_info=run_info)
        finally:
            bar.close()
        summary.update(world_size=world, compute=compute.to_dict())
        if rank == 0:
            if args.json:
                emit_json(summary)
            else:
                print(f"fine-tuned {summary['steps']} steps on {world} process(es); adapter in {summary['adapter']}")
                print(compute_line(compute, args))
                print(f"next: amoeba-search --adapter {args.out} ... or amoeba-export --adapter {args.out} ...")

    return run(PROG, body)


def _dry_run(args) -> None:
    from amoeba_search.cli._dry_run import emit_plan, plan_device, plan_dtype
    from amoeba_search.models.loading import load_config
    from amoeba_search.plan import plan_finetune

    spec = plan_device(args)
    plan = plan_finetune(load_config(args.model), steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                         random_shapes=args.random_shapes, rank=args.rank, experts=args.experts, top_k=args.top_k,
                         dtype=plan_dtype(args, spec), device_spec=spec)
    emit_plan(PROG, plan, json_output=args.json)


if __name__ == "__main__":
    raise SystemExit(main())
