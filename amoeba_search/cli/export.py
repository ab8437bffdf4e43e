"""amoeba-export: write one subnet as a standalone Hugging Face checkpoint (and optionally GGUF)."""
from __future__ import annotations

import argparse
from pathlib import Path

from amoeba_search.cli._common import emit_json, run
from amoeba_search.compute import DTYPE_CHOICES

PROG = "amoeba-export"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Cut one subnet out of a model and save it as a standalone checkpoint that "
                    "AutoModelForCausalLM.from_pretrained loads (safetensors, config, tokenizer, provenance).",
        epilog="example: amoeba-export --shape d24-f0.75-h0.667 --strategy profiles/smollm2-135m/strategy.json --out out/d24",
    )
    parser.add_argument("--model", default="smollm2-135m",
                        help="alias, local HF directory, .gguf file or HF id (default: %(default)s)")
    parser.add_argument("--shape", required=True, help="subnet shape, e.g. d24-f0.75-h0.667")
    parser.add_argument("--strategy", help="selection strategy JSON from amoeba-select (kept layers, width orders)")
    parser.add_argument("--layers", help="comma-separated kept layer indices (instead of a strategy)")
    parser.add_argument("--adapter", help="fine-tuned SMoL adapter (amoeba-finetune --out): its mixture for "
                        "--shape is merged into the weights, so the export needs no adapter code")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="dtype of the exported safetensors; auto keeps the source checkpoint's "
                             "(default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="where the weights are cut and merged: cpu, cuda or "
                                                        "cuda:N (default: %(default)s)")
    parser.add_argument("--gguf", metavar="TYPE",
                        help="also write a GGUF file for llama.cpp: f32, f16, bf16 or q8_0 (gguf-py), or a llama.cpp "
                             "type such as Q4_K_M (needs llama-cpp-python)")
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
        from amoeba_search.models.session import open_supernet
        from amoeba_search.shapes import SubnetShape

        shape = SubnetShape.parse(args.shape)
        if args.out.exists() and not args.overwrite:
            raise FileExistsError(f"{args.out} already exists; choose another --out or pass --overwrite")
        check_gguf_type(args.gguf)
        device = parse_device(args.device)
        dtype = stored_dtype(args.model) if args.dtype == "auto" else parse_dtype(args.dtype)
        loaded = open_supernet(args.model, args.strategy, adapter=args.adapter, dtype=dtype, device=device)
        loaded.space(min_depth=1).validate(shape)
        if args.layers:
            layers = [int(i) for i in args.layers.split(",")]
        else:
            layers = loaded.layers_for(shape)
        out = loaded.export(shape, args.out, layers=layers, gguf=args.gguf, overwrite=args.overwrite)
        summary = {"out": str(out), "shape": str(shape), "kept_layers": list(loaded.supernet.active_layers),
                   "dtype": dtype_name(dtype),
                   "files": sorted(p.name for p in out.iterdir())}
        if args.json:
            emit_json(summary)
        else:
            print(f"exported {shape} (layers {summary['kept_layers']}) in {summary['dtype']} to {out}")

    return run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
