"""amoeba-ppl: perplexity of one subnet (or an exported checkpoint) on held-out text."""
from __future__ import annotations

import argparse

from amoeba_search.cli._common import (ArgumentParser, add_artefact_arguments, add_compute_arguments, artefacts_of, compute_line,
                                       compute_of, emit_json, load_options, positive_int, run)

PROG = "amoeba-ppl"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG, description="Perplexity of a subnet of a model on token blocks of a text source.",
        epilog="example: amoeba-ppl --shape d22-f0.75-h0.667 --data wiki   (the default model's fine-tuned supernet)")
    parser.add_argument("--model", default="smollm2-135m",
                        help="alias, local HF directory (e.g. an amoeba-export output), .gguf file or HF id")
    parser.add_argument("--shape", help="subnet shape (default: the full model)")
    parser.add_argument("--data", default="wiki",
                        help="text source: austen, lee, wiki, a .txt/.jsonl file or directory, hf:NAME (default: %(default)s)")
    parser.add_argument("--split", default="eval", choices=["train", "calib", "eval"])
    parser.add_argument("--seq-len", type=positive_int, default=512)
    parser.add_argument("--max-blocks", type=positive_int, default=32, help="blocks of --seq-len tokens to score")
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument("--json", action="store_true", help="print a machine-readable result")
    add_artefact_arguments(parser)
    add_compute_arguments(parser, device_map=True)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        from amoeba_search.data import token_blocks
        from amoeba_search.evaluation.perplexity import perplexity
        from amoeba_search.session import open_supernet
        from amoeba_search.shapes import SubnetShape

        compute = compute_of(args)
        used = artefacts_of(args)
        loaded = open_supernet(args.model, used.strategy, used.adapter, **load_options(args, compute))
        shape = SubnetShape.parse(args.shape) if args.shape else loaded.supernet.full_shape()
        loaded.space(min_depth=1).validate(shape)
        loaded.activate(shape)
        blocks = token_blocks(args.data, loaded.tokenizer, split=args.split, seq_len=args.seq_len,
                              max_blocks=args.max_blocks)
        result = perplexity(loaded.supernet, blocks, batch_size=args.batch_size, progress=not args.json)
        record = {"model": args.model, "shape": str(shape), "kept_layers": list(loaded.supernet.active_layers),
                  "data": args.data, "split": args.split, "seq_len": args.seq_len, "compute": compute.to_dict(),
                  **used.to_dict(), **result.to_dict()}
        if args.json:
            emit_json(record)
        else:
            print(f"{shape}: perplexity {result.ppl:.3f} over {result.tokens} tokens of {args.data}/{args.split}; "
                  f"{compute_line(compute, args)}")
            print(f"used {used.describe()}")

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
