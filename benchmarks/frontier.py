"""The paper's headline on our model: AmoebaLLM against pruning baselines, each fine-tuned for its one shape.

Targets (issue 17): three remaining ratios of non-embedding parameters (80/65/50%) and three decode budgets on
each of the measured torch and llama.cpp latency tables (``profiles/smollm2-135m/cpu/``; the machine they were measured on is
recorded). At every target each arm picks its own shape:

- ``shortgpt``: ShortGPT depth pruning (layers ranked by the cosine similarity of their input and output, down to
  8 layers), full width, the deepest subnet within the target;
- ``flap``: FLAP width pruning with bias compensation (the committed beam-4 strategy's channel and head order and
  channel means), all layers, FFN ratios down to 0.25: of the widths within the target whose cost is at least
  ``--near`` of the limit, the one with the best calibration perplexity;
- ``llm-pruner``: LLM-Pruner's width pruning (Ma et al. 2023: element-wise first-order Taylor importance
  ``|w * dL/dw|`` of the LM loss on the same calibration blocks, summed over each FFN channel's and head's weights;
  ``amoeba-select --width-metric taylor``), no bias compensation, the same width family and choice rule as ``flap``.
  LLM-Pruner leaves its first and last layers unpruned; here every layer has the same width, as in the search
  space;
- ``amoeba``: the one-for-all SMoL adapter trained with ``--steps`` on the committed beam-4 strategy (the shipped
  adapter's command at that step count) and the searched shape: every shape of the search space within the target
  whose cost is at least ``--near`` of the limit, scored with the adapter on the ``calib`` split, best kept; no
  per-shape training;
- ``amoeba-dagger`` (AmoebaLLM-dagger): the same searched shape, fine-tuned on its own like the baselines;
- ``amoeba-shipped``: the shipped 1,000-step adapter and its own searched shape (more steps than the others: a
  reference, not an equal-budget arm).

Every per-shape arm trains one LoRA of the SMoL mixture's active size (rank x top-k) on every linear for
``--steps`` steps on the same data (wiki train split, batch 4 x 128 tokens, lr 5e-4, seed 0), so each arm gets as
many steps as the one-for-all run. Scores: held-out wiki and austen perplexity (eval split, documents training
never saw) and the offline multiple-choice tasks' accuracy. Everything runs in bf16 where this CPU has bf16
instructions, else fp32. Each cell is written to ``results/frontier.json`` when done, and every training run
directory is resumable: kill the script and run it again.

    python benchmarks/frontier.py                 # --steps 100: ~1.5 h on 2 AMX cores
    python benchmarks/frontier.py --table         # the README table from the results file
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from default_adapter import finetune_command  # noqa: E402

from amoeba_search.compute import resolve_compute  # noqa: E402
from amoeba_search.data import token_blocks  # noqa: E402
from amoeba_search.evaluation.harness import evaluate_tasks  # noqa: E402
from amoeba_search.evaluation.perplexity import perplexity  # noqa: E402
from amoeba_search.finetune.data import text_data  # noqa: E402
from amoeba_search.finetune.smol import SMoLAdapter, SMoLConfig, default_rank  # noqa: E402
from amoeba_search.finetune.trainer import Trainer, TrainConfig, read_log  # noqa: E402
from amoeba_search.models.footprint import param_count  # noqa: E402
from amoeba_search.paths import atomic_write_text  # noqa: E402
from amoeba_search.profiling.lut import LatencyTable  # noqa: E402
from amoeba_search.profiling.machine import detect_machine  # noqa: E402
from amoeba_search.session import open_supernet  # noqa: E402
from amoeba_search.shapes import SearchSpace, SubnetShape  # noqa: E402

PROFILE = ROOT / "profiles" / "smollm2-135m"
STRATEGY = PROFILE / "strategy-beam4.json"
SHIPPED = PROFILE / "adapter"
TABLES = {"torch": PROFILE / "cpu" / "torch.csv", "llamacpp": PROFILE / "cpu" / "llamacpp.csv"}
RATIOS = (0.8, 0.65, 0.5)
BUDGET_POINTS = (0.75, 0.5, 0.25)  # of the way from the smallest shape's table latency to the full model's
TASKS = ("amoeba_goal_inference", "amoeba_step_inference", "amoeba_general_knowledge", "amoeba_phrase_relatedness",
         "amoeba_similarities_abstraction")
ARMS = ("amoeba", "amoeba-dagger", "shortgpt", "flap", "llm-pruner", "amoeba-shipped")
BASELINES = ("shortgpt", "flap", "llm-pruner", "amoeba-dagger")  # each fine-tuned for its one shape
CORPORA = ("wiki", "austen")
FLAP_FFN_RATIOS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
SHORTGPT_MIN_DEPTH = 8


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="fine-tuning steps of every arm, one-for-all included")
    p.add_argument("--eval-blocks", type=int, default=16, help="held-out blocks of 256 tokens per corpus")
    p.add_argument("--calib-blocks", type=int, default=4, help="calib blocks of 256 tokens the search scores on")
    p.add_argument("--near", type=float, default=0.85, help="search candidates cost at least this share of the limit")
    p.add_argument("--task-limit", type=int, default=50, help="items per multiple-choice task")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--runs", type=Path, default=ROOT / "out" / "bench-frontier", help="run directories (resumable)")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "frontier.json")
    p.add_argument("--table", action="store_true", help="only print the markdown table of the results file")
    return p.parse_args(argv)


# -- targets and each arm's shape ---------------------------------------------------------------------------------

def targets(config, space: SearchSpace) -> list[dict]:
    """The nine targets: three parameter ratios, three decode budgets per latency table."""
    full = param_count(config)
    # the layers' share: the final norm (576 weights) would put d15 of 30 layers a hair above 50%
    out = [{"key": f"params-{int(r * 100)}", "kind": "params", "limit": r,
            "cost": lambda s: (lambda c: c.per_layer * c.layers / (full.per_layer * full.layers))(param_count(config, s))}
           for r in RATIOS]
    for flow, path in TABLES.items():
        table = LatencyTable.load(path)
        latency = lambda s, table=table: table.predict(s, metric="decode")  # noqa: E731
        low, high = latency(space.smallest()), latency(space.largest())
        for point in BUDGET_POINTS:
            budget = round(low + point * (high - low), 1)
            out.append({"key": f"{flow}-{budget}ms", "kind": "latency", "flow": flow, "limit": budget,
                        "cost": latency, "table": os.path.relpath(path, ROOT),
                        "table_machine": str(table.rows["machine"].iloc[0])})
    return out


def within(target: dict, shapes) -> list[SubnetShape]:
    return [s for s in shapes if target["cost"](s) <= target["limit"] + 1e-9]


def shortgpt_shape(target: dict, depths) -> SubnetShape | None:
    fits = within(target, [SubnetShape(d, 1.0, 1.0) for d in depths])
    return max(fits, key=lambda s: s.depth) if fits else None


def flap_family(num_layers: int, space: SearchSpace) -> list[SubnetShape]:
    """All layers, every head ratio of the space and FFN ratios down to a quarter (FLAP prunes that far)."""
    return [SubnetShape(num_layers, f, h) for f in FLAP_FFN_RATIOS for h in space.heads_ratios]


def searched_shape(loaded, target: dict, family, calib: torch.Tensor) -> tuple[SubnetShape | None, dict]:
    """The best shape of ``family`` near the limit by perplexity on calibration text (not the held-out split)."""
    fits = within(target, family)
    if not fits:
        return None, {}
    top = max(target["cost"](s) for s in fits)
    candidates = [s for s in fits if target["cost"](s) >= target["near"] * top]
    scores = {}
    for shape in candidates:
        loaded.activate(shape)
        scores[str(shape)] = round(perplexity(loaded.supernet, calib, batch_size=4).ppl, 3)
    best = min(candidates, key=lambda s: scores[str(s)])
    return best, scores


# -- training -----------------------------------------------------------------------------------------------------

def train_one_for_all(args, run: Path) -> Path:
    """The shipped adapter's exact amoeba-finetune command at ``--steps`` (resumable)."""
    final = run / "adapter" / "adapter.json"
    if final.is_file() and json.loads(final.read_text()).get("step") == args.steps:
        return run / "adapter"
    command = finetune_command(SimpleNamespace(steps=args.steps, run=run, dtype=args.dtype))
    resume = ["--resume"] if (run / "run.json").is_file() else []
    log("one-for-all: " + " ".join(command[1:]))
    subprocess.run([sys.executable, "-m", "amoeba_search.cli.finetune", *command[1:], "--json", *resume],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return run / "adapter"


def train_one_shape(args, loaded, shape: SubnetShape, run: Path, data) -> dict:
    """One LoRA of the mixture's active size for ``shape`` alone, ``--steps`` steps (resumable)."""
    dims = loaded.supernet.dims
    space = SearchSpace(dims, (shape.depth,), (shape.ffn_ratio,), (shape.heads_ratio,))
    active = default_rank(dims) * 2  # the shipped mixture's rank x top-k
    adapter = SMoLAdapter(loaded.supernet, SMoLConfig(1, 1, active, 2.0 * active), seed=0,
                          center_on=loaded.routes(space), dtype=torch.float32)
    config = TrainConfig(steps=args.steps, batch_size=4, lr=5e-4, warmup_steps=10, num_random=0, distill=False,
                         balance=False, seed=0, checkpoint_every=25)
    trainer = Trainer(loaded, adapter, data, config, run, space, run_info={"shape": str(shape)})
    trainer.run(resume=True)
    rows = read_log(run)
    loaded.adapter = adapter.to(next(loaded.supernet.model.parameters()).dtype)  # scored as the loaded adapters are
    return {"train_elapsed_s": rows[-1]["elapsed_s"], "adapter_weights": adapter.describe()["trainable_parameters"],
            "loss_first_last": [rows[0]["loss_largest"], rows[-1]["loss_largest"]]}


# -- scoring ------------------------------------------------------------------------------------------------------

def score(loaded, shape: SubnetShape, held_out: dict, task_limit: int) -> dict:
    loaded.activate(shape)
    out = {"ppl": {c: round(perplexity(loaded.supernet, blocks, batch_size=4).ppl, 3) for c, blocks in held_out.items()}}
    record = evaluate_tasks(loaded, tasks=list(TASKS), shape=shape, limit=task_limit, batch_size=16,
                            bootstrap_iters=0)
    acc = {name: task["metrics"].get("acc") for name, task in record["tasks"].items()}
    out.update(acc=acc, mean_acc=round(sum(acc.values()) / len(acc), 4))
    return out


def detach(loaded) -> None:
    if loaded.adapter is not None:
        loaded.adapter.detach()
        loaded.adapter = None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:  # the summary is recomputed from the cells, so it follows the file
        results = json.loads(args.results.read_text())
        results["summary"] = summarize(results, [a for a in ARMS if a != "amoeba-shipped"])
        atomic_write_text(args.results, json.dumps(results, indent=1) + "\n")
        print(markdown(results))
        print(json.dumps(results["summary"], indent=1))
        return 0
    args.runs = args.runs.resolve()
    compute = resolve_compute("cpu", "auto")
    args.dtype = compute.dtype_name
    arms = args.arms.split(",")
    settings = {"steps": args.steps, "dtype": args.dtype, "eval_blocks": args.eval_blocks, "eval_seq_len": 256,
                "calib_blocks": args.calib_blocks, "near": args.near, "task_limit": args.task_limit,
                "train": {"data": "wiki", "split": "train", "seq_len": 128, "batch_size": 4, "lr": 5e-4, "seed": 0}}
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    if results.get("settings") != settings:
        results = {"claim": "AmoebaLLM's searched subnets against per-shape fine-tuned pruning baselines",
                   "settings": settings, "cells": {}}
    results.update(machine=detect_machine().summary(), strategy=os.path.relpath(STRATEGY, ROOT),
                   command="python benchmarks/frontier.py " + " ".join(argv if argv is not None else sys.argv[1:]))

    def save():
        atomic_write_text(args.results, json.dumps(results, indent=1) + "\n")

    args.runs.mkdir(parents=True, exist_ok=True)
    shortgpt_strategy = args.runs / "strategy-shortgpt.json"
    if not shortgpt_strategy.is_file():
        subprocess.run([sys.executable, "-m", "amoeba_search.cli.select", "--method", "shortgpt", "--calib", "wiki",
                        "--samples", "4", "--seq-len", "256", "--min-depth", str(SHORTGPT_MIN_DEPTH), "--out", str(shortgpt_strategy), "--json",
                        "--dtype", args.dtype], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    ofa = None
    if "amoeba" in arms:
        start = time.perf_counter()
        ofa = train_one_for_all(args, args.runs / "one-for-all")
        rows = read_log(args.runs / "one-for-all")
        results["one_for_all"] = {"run": os.path.relpath(args.runs / "one-for-all", ROOT),
                                  "train_elapsed_s": rows[-1]["elapsed_s"], "steps": rows[-1]["step"],
                                  "shapes_per_step": 4, "wall_s_this_run": round(time.perf_counter() - start, 1)}
        save()

    dtype = compute.dtype
    beam4 = open_supernet("smollm2-135m", STRATEGY, dtype=dtype)
    shortgpt = open_supernet("smollm2-135m", shortgpt_strategy, dtype=dtype)
    space = beam4.space()
    llm_pruner_strategy = args.runs / "strategy-llm-pruner.json"
    if "llm-pruner" in arms and not llm_pruner_strategy.is_file():  # every layer kept: only the width orders matter
        subprocess.run([sys.executable, "-m", "amoeba_search.cli.select", "--method", "drop-last", "--calib", "wiki",
                        "--samples", "4", "--seq-len", "256", "--min-depth", str(space.depths[-1]),
                        "--width-metric", "taylor", "--out", str(llm_pruner_strategy), "--json", "--dtype", args.dtype],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    llm_pruner = open_supernet("smollm2-135m", llm_pruner_strategy, dtype=dtype) if "llm-pruner" in arms else None
    config = copy.deepcopy(beam4.supernet.model.config)  # the view edits the live config as it activates shapes
    held_out = {c: token_blocks(c, beam4.tokenizer, split="eval", seq_len=256, max_blocks=args.eval_blocks)
                for c in CORPORA}
    calib = token_blocks("wiki", beam4.tokenizer, split="calib", seq_len=256, max_blocks=args.calib_blocks)
    data = text_data("wiki", beam4.tokenizer, seq_len=128, split="train")
    plan = targets(config, space)
    results["targets"] = {t["key"]: {k: v for k, v in t.items() if k != "cost"} for t in plan}
    save()

    for target in plan:
        target["near"] = args.near
        cells = results["cells"].setdefault(target["key"], {})
        searched = {}
        for arm in arms:
            if arm in cells:
                continue
            start = time.perf_counter()
            cell: dict = {}
            if arm in ("amoeba", "amoeba-shipped"):
                beam4.adapter = SMoLAdapter.load(ofa if arm == "amoeba" else SHIPPED, beam4.supernet).attach().eval()
                shape, cell["search"] = searched_shape(beam4, target, space, calib)
                searched[arm] = shape
                loaded = beam4
            elif arm == "amoeba-dagger":
                shape = searched.get("amoeba") or (SubnetShape.parse(cells["amoeba"]["shape"])
                                                   if cells.get("amoeba", {}).get("shape") else None)
                loaded = beam4
            elif arm == "shortgpt":
                shape, loaded = shortgpt_shape(target, range(SHORTGPT_MIN_DEPTH, space.depths[-1] + 1)), shortgpt
            else:  # flap, llm-pruner: the same widths, each ranked by its own importance
                loaded = beam4 if arm == "flap" else llm_pruner
                shape, cell["search"] = searched_shape(loaded, target, flap_family(space.depths[-1], space), calib)
            if shape is None:
                cells[arm] = {"shape": None, "why": "no shape of this arm's family fits the target"}
                detach(beam4)
                save()
                continue
            if arm in BASELINES:
                run = args.runs / f"{arm}-{shape}"
                cell["train"] = train_one_shape(args, loaded, shape, run, data)
                cell["train"]["run"] = os.path.relpath(run, ROOT)
            cell.update(shape=str(shape), cost=round(target["cost"](shape), 4), **score(loaded, shape, held_out,
                                                                                        args.task_limit))
            cell["wall_s"] = round(time.perf_counter() - start, 1)
            detach(loaded)
            cells[arm] = cell
            log(f"{target['key']} {arm}: {shape} wiki {cell['ppl']['wiki']:.1f} austen {cell['ppl']['austen']:.1f} "
                f"acc {cell['mean_acc']:.3f} ({cell['wall_s']:.0f} s)")
            save()
    results["summary"] = summarize(results, arms)
    save()
    print(markdown(results))
    return 0


def summarize(results: dict, arms) -> dict:
    """Where AmoebaLLM (equal steps, no per-shape training) beats every baseline on held-out perplexity, and the
    total fine-tuning cost of each arm (one run for the family against one run per shape)."""
    baselines = [a for a in BASELINES if a in arms]
    wins = {}
    for key, cells in results["cells"].items():
        mine = cells.get("amoeba", {})
        if not mine.get("ppl"):
            continue
        wins[key] = {c: all(not cells.get(b, {}).get("ppl") or mine["ppl"][c] < cells[b]["ppl"][c] for b in baselines)
                     for c in CORPORA}
    cost = {arm: round(sum(cell.get("train", {}).get("train_elapsed_s", 0) for cells in results["cells"].values()
                           for a, cell in cells.items() if a == arm), 1) for arm in baselines}
    cost["amoeba"] = results.get("one_for_all", {}).get("train_elapsed_s")
    runs = {arm: len({cells[arm]["shape"] for cells in results["cells"].values() if cells.get(arm, {}).get("shape")})
            for arm in baselines}
    # per arm of ours and per baseline: the targets where ours has the lower held-out perplexity on both corpora
    head_to_head = {}
    for ours in ("amoeba", "amoeba-shipped"):
        for base in baselines:
            pairs = [(cells[ours], cells[base]) for cells in results["cells"].values()
                     if cells.get(ours, {}).get("ppl") and cells.get(base, {}).get("ppl")]
            head_to_head[f"{ours} vs {base}"] = {
                "targets": len(pairs),
                "wins_both_corpora": sum(all(a["ppl"][c] < b["ppl"][c] for c in CORPORA) for a, b in pairs),
                "wins_wiki": sum(a["ppl"]["wiki"] < b["ppl"]["wiki"] for a, b in pairs)}
    steps = results["settings"]["steps"]
    # machine-independent cost: subnet forward+backward passes (the one-for-all run trains 4 subnets a step)
    passes = {**{arm: runs[arm] * steps for arm in baselines}, "amoeba": 4 * steps}
    return {"amoeba_beats_every_baseline": wins,
            "all_targets_won": bool(wins) and all(all(v.values()) for v in wins.values()),
            "fine_tuning_seconds": cost, "fine_tuning_runs": {**runs, "amoeba": 1},
            "fine_tuning_subnet_passes": passes, "head_to_head": head_to_head}


def cell_text(cell: dict) -> str:
    """One arm at one target as the README writes it: shape, held-out wiki / austen perplexity, task accuracy."""
    return f"{cell['shape']} {cell['ppl']['wiki']:.1f} / {cell['ppl']['austen']:.1f} / {100 * cell['mean_acc']:.1f}%"


def markdown(results: dict) -> str:
    arms = [a for a in ARMS if any(a in cells for cells in results["cells"].values())]
    lines = ["| target | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for key, cells in results["cells"].items():
        row = []
        for arm in arms:
            cell = cells.get(arm, {})
            if not cell.get("shape"):
                row.append("does not fit" if arm in cells else "")
                continue
            row.append(cell_text(cell))
        lines.append(f"| {key} | " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
