"""amoeba-export: write one subnet as a standalone Hugging Face checkpoint (and optionally GGUF)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from amoeba_search.cli._common import ArgumentParser, check_writable, add_artefact_arguments, artefacts_of, emit_json, run
from amoeba_search.compute import DTYPE_CHOICES
from amoeba_search.quality import DEFAULT_FLOOR

PROG = "amoeba-export"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Cut one subnet out of a model and save it as a standalone checkpoint that "
                    "AutoModelForCausalLM.from_pretrained loads (safetensors, config, tokenizer, provenance).",
        epilog="example: amoeba-export --shape d22-f0.75-h0.667 --out out/d22   (the default model's fine-tuned "
               "supernet: its adapter merged into the weights)",
    )
    parser.add_argument("--model", default="smollm2-135m",
                        help="alias, local HF directory, .gguf file or HF id (default: %(default)s)")
    parser.add_argument("--shape", required=True, help="subnet shape, e.g. d24-f0.75-h0.667")
    add_artefact_arguments(parser, layers=True)  # an adapter's mixture for --shape is merged into the weights
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="dtype of the exported safetensors; auto keeps the source checkpoint's "
                             "(default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="where the weights are cut and merged: cpu, cuda or "
                                                        "cuda:N (default: %(default)s)")
    parser.add_argument("--gguf", metavar="TYPE",
                        help="also write a GGUF file for llama.cpp: f32, f16, bf16 or q8_0 (gguf-py), or a llama.cpp "
                             "type such as Q4_K_M (needs llama-cpp-python)")
    parser.add_argument("--max-metric", default=DEFAULT_FLOOR, metavar="VALUE|Kx",
                        help="warn before writing a shape whose held-out wiki perplexity (4 blocks) is above this: "
                             "a number or K times the full model's (default: %(default)s; 'none' skips the check)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (must not exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        from amoeba_search.compute import dtype_name, parse_device, parse_dtype
        from amoeba_search.models.export import check_gguf_type
        from amoeba_search.models.loading import stored_dtype
        from amoeba_search.quality import parse_floor
        from amoeba_search.session import open_supernet
        from amoeba_search.shapes import SubnetShape

        shape = SubnetShape.parse(args.shape)
        if args.out.exists() and not args.overwrite:
            raise FileExistsError(f"{args.out} already exists; choose another --out or pass --overwrite")
        check_writable(args.out)
        check_gguf_type(args.gguf)
        floor = parse_floor(args.max_metric)
        device = parse_device(args.device)
        dtype = stored_dtype(args.model) if args.dtype == "auto" else parse_dtype(args.dtype)
        used = artefacts_of(args)
        loaded = open_supernet(args.model, used.strategy, adapter=used.adapter, dtype=dtype, device=device)
        loaded.space(min_depth=1).validate(shape)
        layers = args.layers or loaded.layers_for(shape)  # --layers: a list of indices (layer_list)
        check = _check_quality(loaded, shape, layers, floor) if floor is not None else None
        if check is not None and not check.usable:
            print(f"{PROG}: warning: {check.warning()}; writing it anyway", file=sys.stderr)
        out = loaded.export(shape, args.out, layers=layers, gguf=args.gguf, overwrite=args.overwrite)
        summary = {"out": str(out), "shape": str(shape), "kept_layers": list(loaded.supernet.active_layers),
                   "dtype": dtype_name(dtype), **used.to_dict(),
                   "quality_check": None if check is None else {**check.__dict__, "usable": check.usable},
                   "files": sorted(p.name for p in out.iterdir())}
        if args.json:
            emit_json(summary)
        else:
            print(f"exported {shape} (layers {summary['kept_layers']}) in {summary['dtype']} to {out}")
            print(f"used {used.describe()}")

    return run(PROG, body)


def _check_quality(loaded, shape, layers, floor):
    """The quality check of ``shape`` on 4 held-out wiki blocks; None (skipped) below full size only when the
    text is not prepared, or at the full shape itself."""
    from amoeba_search.data import token_blocks
    from amoeba_search.errors import MissingDependency
    from amoeba_search.quality import check_quality

    if shape == loaded.supernet.full_shape():
        return None
    try:
        blocks = token_blocks("wiki", loaded.tokenizer, split="eval", seq_len=256, max_blocks=4)
    except MissingDependency:
        return None
    return check_quality(loaded, shape, blocks, layers=layers, max_metric=floor)


if __name__ == "__main__":
    raise SystemExit(main())
