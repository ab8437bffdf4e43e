"""The paper's Fig. 1 for a 1B-class model: what depth and width cost in PyTorch and in llama.cpp on this machine.

The model has Llama-3.2-1B's shape (random weights, built in code by ``scale_1b.py``; latency does not depend on
the weights). Each flow gets a drift-cancelled table (every shape timed between rounds of the full model, in
the same process and time window) over the shapes the figure needs: a depth sweep at full width, an FFN sweep
and a heads sweep at full depth (11 shapes; each costs minutes at 1B on 2 cores).
Weights are 16-bit in both flows: bf16 in PyTorch, f16 GGUF in llama.cpp. The tables are committed as
``results/latency-1b-cpu-{torch,llamacpp}.csv`` and ``notebooks/latency_fig1.ipynb`` draws them beside the
default model's; ``results/latency-1b.json`` holds the measured ratios, the wall times and the machine.

    python benchmarks/latency_1b.py            # ~50 min on 2 CPU cores; resumable with the same --work
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
from transformers import AutoConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale_1b import BIN, LLAMA_3_2_1B, build_model, run  # noqa: E402

from amoeba_search.paths import atomic_write_bytes, atomic_write_text  # noqa: E402
from amoeba_search.profiling.machine import detect_machine  # noqa: E402
from amoeba_search.shapes import ModelDims, SearchSpace, SubnetShape  # noqa: E402


def figure_shapes(space: SearchSpace) -> dict[str, list[SubnetShape]]:
    """The sweeps of Fig. 1, each through the full model."""
    full = space.largest()
    depths = sorted({space.depths[0], *space.depths[::2], full.depth})
    return {
        "depth": [SubnetShape(d, 1.0, 1.0) for d in depths],
        "ffn": [SubnetShape(full.depth, f, 1.0) for f in space.ffn_ratios],
        "heads": [SubnetShape(full.depth, 1.0, h) for h in space.heads_ratios],
    }


def sweep_ratios(table: Path, sweeps: dict[str, list[SubnetShape]]) -> dict:
    """Measured decode and prefill time of each sweep's shapes relative to the full model (the table's ratios)."""
    rows = pd.read_csv(table).groupby("shape")[["decode_ratio", "prefill_ratio", "decode_ms_median"]].median()
    return {name: {str(s): {k: round(float(rows.loc[str(s), k]), 4) for k in rows.columns}
                   for s in shapes if str(s) in rows.index}
            for name, shapes in sweeps.items()}


def table_summary(table: Path, full: SubnetShape) -> dict:
    """What the table cost and how steady it is: rows, the measuring time summed over its rows (true across
    resumes), the full model's decode time as the reference rounds saw it, and the full model timed against
    itself (its ratio should be 1: the distance is this flow's noise here)."""
    rows = pd.read_csv(table)
    own = rows[rows["shape"] == str(full)]
    return {"rows": int(len(rows)), "measuring_s": round(float(rows["elapsed_s"].sum()), 1),
            "reference_decode_ms_median": round(float(rows["reference_decode_ms"].median()), 1),
            "reference_decode_ms_range": [round(float(rows["reference_decode_ms"].min()), 1),
                                          round(float(rows["reference_decode_ms"].max()), 1)],
            "full_model_against_itself": {"decode": round(float(own["decode_ratio"].median()), 4),
                                          "prefill": round(float(own["prefill_ratio"].median()), 4)},
            "other_load_max": round(float(rows["other_load"].max()), 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency-1b.json")
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "amoeba-search" / "bench" / "latency-1b",
                   help="working directory, kept so that a rerun resumes (default: %(default)s)")
    p.add_argument("--flows", default="torch,llamacpp")
    p.add_argument("--dtypes", default="torch=bf16,llamacpp=fp16",
                   help="weight dtype per flow (default %(default)s: llama.cpp's flow writes f32 or f16 GGUF)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--context-len", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    dtypes = dict(item.split("=", 1) for item in args.dtypes.split(","))

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / "llama-1b-random"
    if not (model / "config.json").is_file():
        build_model(model)
    space = SearchSpace.default(ModelDims.from_config(AutoConfig.from_pretrained(model)))
    sweeps = figure_shapes(space)
    shapes = list(dict.fromkeys(str(s) for group in sweeps.values() for s in group))
    machine = detect_machine()
    results = {"machine": {"summary": machine.summary(), "cpu_model": machine.cpu_model,
                           "cpu_cores": machine.cpu_cores, "isa": list(machine.isa)},
               "config": LLAMA_3_2_1B, "space": space.to_dict(), "dtypes": dtypes,
               "settings": {"prompt_len": args.prompt_len, "context_len": args.context_len, "repeats": args.repeats},
               "shapes": shapes, "steps": {}, "sweeps": {}}
    for flow in args.flows.split(","):
        if flow == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
            results["steps"][f"profile-{flow}"] = {"skipped": "llama-cpp-python is not installed"}
            continue
        table = args.work / f"{flow}.csv"
        record = run(f"profile-{flow}", [
            str(BIN / "amoeba-profile"), "--device", "cpu", "--flow", flow, "--model", str(model), "--dtype",
            dtypes.get(flow, "fp32"), "--shapes", ",".join(shapes), "--holdout", "0",
            "--prompt-len", str(args.prompt_len),
            "--context-len", str(args.context_len), "--repeats", str(args.repeats), "--max-rounds", "2",
            "--out", str(table), "--resume", "--json"], results, args.out)
        if record["exit"] == 0:
            committed = ROOT / "benchmarks" / "results" / f"latency-1b-cpu-{flow}.csv"
            atomic_write_bytes(committed, table.read_bytes())
            results["sweeps"][flow] = sweep_ratios(committed, sweeps)
            results.setdefault("tables", {})[flow] = table_summary(committed, space.largest())
            results["steps"][f"profile-{flow}"]["table"] = committed.relative_to(ROOT).as_posix()
        # the working directory is this machine's: name it $WORK in the committed record
        text = json.dumps(results, indent=1, default=str).replace(str(args.work), "$WORK")
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
