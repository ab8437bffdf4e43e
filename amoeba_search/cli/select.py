"""amoeba-select: stage 1, knowledge-preserving subnet selection -> a selection strategy JSON."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from amoeba_search.cli._common import (ArgumentParser, check_writable, add_compute_arguments, compute_line, compute_of, emit_json, file_path,
                                       load_options, non_negative_int, positive_int, run)
from amoeba_search.cli._dry_run import add_dry_run_arguments
from amoeba_search.errors import InputError

PROG = "amoeba-select"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Choose, for every depth, which layers to keep (DP depth shrinking or a baseline) and, for "
                    "every layer, the importance order of FFN channels and attention heads; write them as a "
                    "versioned JSON selection strategy.",
        epilog="example: amoeba-select --calib wiki --samples 32 --seq-len 256 --min-depth 15 "
               "--out profiles/smollm2-135m/strategy.json")
    parser.add_argument("--model", default="smollm2-135m",
                        help="alias, local HF directory, .gguf file or HF id (default: %(default)s)")
    parser.add_argument("--calib", default="wiki",
                        help="calibration source: austen, lee, wiki, a .txt/.jsonl file or directory; for "
                             "--metric mc-acc/mc-loss a JSONL file of {context, choices, answer} (default: %(default)s)")
    parser.add_argument("--split", default="calib", choices=["train", "calib", "eval"],
                        help="split of the calibration source (default: %(default)s)")
    parser.add_argument("--method", default="dp", help="depth method: dp, shortgpt, angular, ppl-rank, drop-last "
                                                       "(default: %(default)s)")
    parser.add_argument("--metric", default="ppl", help="calibration metric: ppl, mc-acc, mc-loss (default: %(default)s)")
    parser.add_argument("--width-metric", default="flap",
                        help="width importance: flap, magnitude, activation, taylor (LLM-Pruner, one backward pass), "
                             "random (default: %(default)s)")
    parser.add_argument("--samples", type=positive_int, default=4,
                        help="calibration blocks of --seq-len tokens, evenly spaced over the split (ppl), or items "
                             "(mc); the DP's time grows linearly with it: 4 x 256 tokens took ~27 min for "
                             "SmolLM2-135M (min depth 15) on 2 busy CPU cores (default: %(default)s)")
    parser.add_argument("--seq-len", type=positive_int, default=256, help="tokens per calibration block (default: %(default)s)")
    parser.add_argument("--min-depth", type=int, help="smallest depth to select layers for (default: half the layers)")
    parser.add_argument("--keep-last", type=non_negative_int, default=0, help="top layers every depth keeps (default: %(default)s)")
    parser.add_argument("--beam", type=int, default=1,
                        help="DP: layer sets kept per table cell; 1 is the paper's DP, B costs about B times the "
                             "evaluations and misses fewer layers that only pay off removed together "
                             "(default: %(default)s)")
    parser.add_argument("--bias-compensation", action="store_true",
                        help="store every down_proj / o_proj input's calibration mean, so that reduced widths add "
                             "the removed channels' mean output as a bias (FLAP); needs --width-metric flap or "
                             "activation, and exports need a LLaMA model")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="calibration blocks per forward (default: %(default)s)")
    parser.add_argument("--cache", default="tree", help="DP prefix caching: tree, row, none (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random width metric (default: %(default)s)")
    parser.add_argument("--out", type=file_path, help="strategy JSON to write (required unless --dry-run)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted DP from its checkpoint (OUT.checkpoint.json)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary (no progress bars)")
    add_compute_arguments(parser, device_map=True)
    add_dry_run_arguments(parser)
    return parser


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".checkpoint.json")


def canonical_command(args, dtype: str = "fp32") -> str:
    """The command that reproduces the strategy, every option spelled out (``dtype``: the resolved one)."""
    parts = ["amoeba-select", "--model", args.model, "--calib", args.calib, "--split", args.split,
             "--method", args.method, "--metric", args.metric, "--width-metric", args.width_metric,
             "--samples", str(args.samples), "--seq-len", str(args.seq_len)]
    if args.min_depth is not None:
        parts += ["--min-depth", str(args.min_depth)]
    parts += ["--keep-last", str(args.keep_last), "--beam", str(args.beam), "--batch-size", str(args.batch_size),
              "--cache", args.cache, "--seed", str(args.seed)]
    parts += ["--bias-compensation"] if args.bias_compensation else []
    parts += ["--dtype", dtype]
    return shlex.join(parts + ["--out", str(args.out)])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        from amoeba_search.distributed import init_distributed
        from amoeba_search.selection.pipeline import SelectionSettings, select_strategy
        from amoeba_search.session import open_supernet

        if args.dry_run:
            return _dry_run(args)
        if args.out is None:
            raise InputError("--out is required: the strategy JSON to write (or pass --dry-run for the plan)")
        if args.out.exists() and not args.overwrite:
            raise FileExistsError(f"{args.out} already exists; choose another --out or pass --overwrite")
        check_writable(args.out)
        settings = SelectionSettings(method=args.method, metric=args.metric, calib=args.calib, split=args.split,
                                     samples=args.samples, seq_len=args.seq_len, min_depth=args.min_depth,
                                     keep_last=args.keep_last, beam=args.beam, width_metric=args.width_metric,
                                     seed=args.seed, batch_size=args.batch_size, cache=args.cache)
        settings.check_names()
        rank, world = init_distributed()  # torchrun: the processes split every DP row's evaluations
        compute = compute_of(args, rank=rank)
        loaded = open_supernet(args.model, **load_options(args, compute))
        settings = settings.checked(loaded.supernet.dims.num_layers)  # bad options fail before any compute
        ckpt = checkpoint_path(args.out)
        if args.resume and not ckpt.is_file():
            raise FileNotFoundError(f"nothing to resume: {ckpt} does not exist; run without --resume")
        result = select_strategy(loaded.supernet, loaded.tokenizer, loaded.fingerprint, settings,
                                 checkpoint=ckpt, resume=args.resume,  # every process writes the same rows
                                 progress=not args.json and rank == 0, command=canonical_command(args, compute.dtype_name),
                                 bias_compensation=args.bias_compensation)
        if rank != 0:
            return
        result.strategy.save(args.out)
        ckpt.unlink(missing_ok=True)
        strategy = result.strategy
        summary = {"out": str(args.out), "method": settings.method, "metric": settings.metric,
                   "width_metric": settings.width_metric, "bias_compensation": args.bias_compensation,
                   "depths": strategy.depths,
                   "depth_layers": {str(d): strategy.depth_layers[d] for d in strategy.depths},
                   "depth_metric": {str(d): strategy.depth_metric.get(d) for d in strategy.depths},
                   "compute": compute.to_dict(), "processes": world,
                   **result.report}
        if args.json:
            emit_json(summary)
        else:
            lo, hi = strategy.depths[0], strategy.depths[-1]
            print(f"wrote {args.out}: layers for depths {lo}..{hi} by {settings.method} on {settings.metric} "
                  f"({result.report['evaluations_total']} evaluations, {result.report['depth_seconds']:.1f} s), "
                  f"widths ordered by {settings.width_metric}; {compute_line(compute, args)}")
            for d in strategy.depths:
                value = strategy.depth_metric.get(d)
                shown = "-" if value is None else f"{value:.4g}"
                print(f"  depth {d:3d}  {settings.metric} {shown:>10}  removed "
                      f"{sorted(set(range(hi)) - set(strategy.depth_layers[d]))}")

    return run(PROG, body)


def _dry_run(args) -> None:
    from amoeba_search.cli._dry_run import emit_plan, plan_device, plan_dtype
    from amoeba_search.models.loading import load_config
    from amoeba_search.plan import plan_select

    spec = plan_device(args)
    plan = plan_select(load_config(args.model), samples=args.samples, seq_len=args.seq_len, min_depth=args.min_depth,
                       keep_last=args.keep_last, beam=args.beam, method=args.method, dtype=plan_dtype(args, spec),
                       device_spec=spec, batch_size=args.batch_size, width_metric=args.width_metric)
    emit_plan(PROG, plan, json_output=args.json)


if __name__ == "__main__":
    raise SystemExit(main())
