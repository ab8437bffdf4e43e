"""Where the SMoL gate sends the shapes of the search space, at initialization and after fine-tuning.

For each fine-tuning run directory (``<--runs>/<variant>`` of ``benchmarks/finetune.py`` or the ``--out`` of
``amoeba-finetune``) or checkpoint of one, reads the final adapter's gate and counts, over every shape of the search space (with the
strategy's layers), in how many eval-mode top-k routes each expert appears, the mean weight it gets, and how many
distinct expert sets are used; the same for the gate as the run's seed initialized it. A balanced gate puts each
of T experts in k/T of the routes; a collapsed one puts one expert in all of them, and the mixture then acts as
one LoRA. Reads only the gate's tensors, so it also reads adapters of earlier schema versions (their gate input
was not centred).

    python benchmarks/gate_routes.py --runs out/bench-finetune-beam4-uncentred/smol-uncentred-gate out/bench-finetune-beam4-centred/smol
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amoeba_search.finetune.smol import ADAPTER_CONFIG, ADAPTER_WEIGHTS, SMoLAdapter, SMoLConfig  # noqa: E402
from amoeba_search.paths import atomic_write_text  # noqa: E402
from amoeba_search.session import open_supernet  # noqa: E402

SHAPES = ("d30-f1-h1", "d26-f0.875-h1", "d22-f0.75-h0.667", "d18-f0.625-h0.667", "d15-f0.5-h0.333")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="fine-tuning run directories")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--strategy", type=Path, default=ROOT / "profiles" / "smollm2-135m" / "strategy-beam4.json")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "gate-routes.json")
    return p.parse_args(argv)


def _adapter_files(run: Path) -> tuple[Path, Path] | None:
    """(adapter directory, run.json) of a run directory (its final adapter) or of one of its checkpoints
    (``<run>/checkpoints/step-N``); None when ``run`` is neither."""
    directory, run_file = run / "adapter", run / "run.json"
    if (run / ADAPTER_CONFIG).is_file():
        directory, run_file = run, run.parent.parent / "run.json"
    return (directory, run_file) if (directory / ADAPTER_CONFIG).is_file() and run_file.is_file() else None


@torch.no_grad()
def usage(gate, routes) -> dict:
    """Eval-mode routing statistics of ``gate`` over ``routes`` ((shape, layers) pairs)."""
    gate = gate.eval()
    weights = torch.stack([gate(gate.features(shape, layers)) for shape, layers in routes])  # (shapes, T)
    chosen = weights > 0
    sets = {tuple(row.nonzero().flatten().tolist()) for row in chosen}
    named = {str(shape): i for i, (shape, _) in enumerate(routes) if str(shape) in SHAPES}
    return {"expert_in_routes": chosen.sum(0).tolist(),
            "expert_mean_weight": [round(w, 3) for w in weights.mean(0).tolist()],
            "distinct_expert_sets": len(sets), "shapes": len(routes),
            "routes": {name: [[int(e), round(float(weights[i, e]), 3)] for e in chosen[i].nonzero().flatten()]
                       for name, i in named.items()}}  # [expert, weight] pairs of the benchmark's shapes


def main(argv=None) -> int:
    args = parse_args(argv)
    found = [_adapter_files(run) for run in args.runs]
    for run, files in zip(args.runs, found):
        if files is None:
            print(f"error: {run} is neither a finished fine-tuning run nor one of its checkpoints "
                  f"(no {ADAPTER_CONFIG} with a run.json)", file=sys.stderr)
            return 2
    loaded = open_supernet(args.model, args.strategy)
    routes = loaded.routes(loaded.space())
    results = {"claim": "where the shape gate routes the search space's shapes (collapse vs spread)",
               "model": args.model, "strategy": os.path.relpath(args.strategy, ROOT),
               "command": "python benchmarks/gate_routes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "runs": {}}  # keyed by run or checkpoint directory
    for run, (directory, run_file) in zip(args.runs, found):
        record = json.loads((directory / ADAPTER_CONFIG).read_text())
        config = SMoLConfig(**dict(record["config"], targets=tuple(record["config"]["targets"])))
        tensors = {k[len("gate."):]: v for k, v in load_file(str(directory / ADAPTER_WEIGHTS)).items()
                   if k.startswith("gate.")}
        centred = "center" in tensors and bool(tensors["center"].any())
        seed = json.loads(run_file.read_text()).get("train", {}).get("seed", 0)
        initial = SMoLAdapter(loaded.supernet, config, seed=seed, center_on=routes if centred else None).gate
        trained = copy.deepcopy(initial)
        tensors.setdefault("center", torch.zeros_like(trained.center))  # schema 2: no centre
        trained.load_state_dict(tensors)
        name = os.path.relpath(run, ROOT)
        entry = results["runs"][name] = {
            "adapter_schema": record["schema_version"],
            "experts": config.num_experts, "top_k": config.top_k, "gate_input_centred": centred,
            "step": record.get("step"), "initial": usage(initial, routes), "trained": usage(trained, routes)}
        print(f"{name}: centred={centred}, expert use in {len(routes)} routes: initial "
              f"{entry['initial']['expert_in_routes']}, trained {entry['trained']['expert_in_routes']}")
    atomic_write_text(args.results, json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
