"""The default model and two of its subnets on the local multiple-choice tasks, beside random choice.

Subnets: the full model; a DP-selected depth; the same depth with reduced width (layers and width orders from
profiles/smollm2-135m/strategy.json). Without that strategy file the script falls back to keeping the first
d-4 layers plus the last four, and the original channel/head order, and says so in the results.

Run: python benchmarks/eval_tasks.py [--limit 100]  ->  benchmarks/results/eval_tasks.json + a markdown table.
Every subnet is evaluated through lm-eval's HFLM on the supernet view (nothing exported), fully offline.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "eval_tasks.json"
STRATEGY = ROOT / "profiles" / "smollm2-135m" / "strategy.json"
DEPTH = 24
SHAPES = ["d30-f1-h1", f"d{DEPTH}-f1-h1", f"d{DEPTH}-f0.75-h0.667"]


def fallback_layers(depth: int, num_layers: int = 30) -> list[int]:
    """The first depth-4 layers and the last four: the top layers of SmolLM2 are the ones it cannot lose."""
    return list(range(depth - 4)) + list(range(num_layers - 4, num_layers))


def _shown(path: Path) -> str:
    """A path as results record it: relative to the repository, or to ``$AMOEBA_CACHE``, not to this machine."""
    from amoeba_search.paths import portable_path

    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else portable_path(path)


def markdown_table(result: dict) -> str:
    subnets = result["subnets"]
    head = "| task | items | random choice | " + " | ".join(s["label"] for s in subnets) + " |"
    rule = "|" + "---|" * (3 + len(subnets))
    rows = [head, rule]
    for task in result["tasks"]:
        first = subnets[0]["record"]["tasks"][task]
        if first["kind"] == "ppl":
            cells = [f"{s['record']['tasks'][task]['metrics']['ppl']:.1f}" for s in subnets]
            rows.append(f"| {task} (perplexity, lower is better) | {first['blocks']} x {first['seq_len']} tok | - | "
                        + " | ".join(cells) + " |")
            continue
        cells = []
        for s in subnets:
            metrics = s["record"]["tasks"][task]["metrics"]
            cells.append(f"{metrics['acc']:.3f} ± {metrics['acc_stderr']:.3f}")
        rows.append(f"| {task} | {first['n']} | {first['random_baseline']['acc']:.3f} | " + " | ".join(cells) + " |")
    mean = [sum(s["record"]["tasks"][t]["metrics"]["acc"] for t in result["mc_tasks"]) / len(result["mc_tasks"])
            for s in subnets]
    chance = sum(subnets[0]["record"]["tasks"][t]["random_baseline"]["acc"] for t in result["mc_tasks"]) / len(result["mc_tasks"])
    rows.append(f"| mean accuracy | | {chance:.3f} | " + " | ".join(f"{m:.3f}" for m in mean) + " |")
    rows.append("| wall time (s) | | | " + " | ".join(f"{s['record']['wall_s']:.0f}" for s in subnets) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=100, help="items per task (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ppl-blocks", type=int, default=8, help="512-token blocks of wiki for ppl:wiki")
    parser.add_argument("--tasks", help="comma-separated task names (default: every local evaluation task + ppl:wiki)")
    parser.add_argument("--strategy", type=Path, default=STRATEGY)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    from amoeba_search.evaluation.bigbench import prepare_tasks, task_names
    from amoeba_search.evaluation.harness import evaluate_tasks
    from amoeba_search.session import open_supernet
    from amoeba_search.shapes import SubnetShape

    started = time.perf_counter()
    prepare_tasks()  # no-op when prepared; else fetches the bigbench sdist once
    mc_tasks = args.tasks.split(",") if args.tasks else task_names()
    tasks = mc_tasks + ([] if args.tasks else ["ppl:wiki"])
    mc_tasks = [t for t in mc_tasks if not t.startswith("ppl:")]
    strategy = args.strategy if args.strategy.is_file() else None
    loaded = open_supernet("smollm2-135m", strategy)
    subnets = []
    for text in SHAPES:
        shape = SubnetShape.parse(text)
        if shape == loaded.supernet.full_shape():
            layers, label, how = None, f"full {text}", "all layers"
        elif strategy is not None:
            layers = loaded.layers_for(shape)
            label = f"DP {text}"
            how = "DP-selected layers and importance width order from " + _shown(args.strategy)
        else:
            layers = fallback_layers(shape.depth, loaded.supernet.dims.num_layers)
            label = f"fallback {text}"
            how = (f"FALLBACK, no strategy file: first {shape.depth - 4} + last 4 layers, original channel/head "
                   "order (not DP-selected, no importance ordering)")
        print(f"evaluating {label} on {len(tasks)} tasks (limit {args.limit}) ...", flush=True)
        record = evaluate_tasks(loaded, None, tasks, shape=shape, layers=layers, limit=args.limit,
                                batch_size=args.batch_size, ppl_blocks=args.ppl_blocks)
        if record.get("strategy"):
            record["strategy"] = _shown(Path(record["strategy"]))
        for task in record["tasks"].values():
            if task.get("data_file"):
                task["data_file"] = _shown(Path(task["data_file"]))
        subnets.append({"label": label, "layers_from": how, "record": record})
        print(f"  done in {record['wall_s']:.0f} s", flush=True)

    result = {
        "benchmark": "eval_tasks", "model": "smollm2-135m", "limit": args.limit, "batch_size": args.batch_size,
        "strategy": _shown(args.strategy) if strategy else None, "fallback_layers": strategy is None,
        "strategy_sha256": hashlib.sha256(args.strategy.read_bytes()).hexdigest() if strategy else None,
        "strategy_calibration": loaded.strategy.calibration if strategy else None,
        "tasks": tasks, "mc_tasks": mc_tasks, "subnets": subnets,
        "wall_s_total": round(time.perf_counter() - started, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "loadavg_1m": os.getloadavg()[0]},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    result["table_markdown"] = markdown_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(result["table_markdown"])
    print(f"total wall time {result['wall_s_total']:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
