"""How sure is the fine-tuning ablation's ranking? A paired bootstrap over the held-out blocks.

``benchmarks/finetune.py`` ranks its variants by mean log-perplexity over a few shapes on 16 held-out blocks,
and the gaps between variants are small. This script reloads each variant's final adapter from its run
directory, scores every eval block for every shape (the same blocks as ``finetune.py``), checks that the
per-block numbers reproduce the results file, and resamples the blocks with replacement (the same draw for all
variants and shapes, so the comparison is paired): how often each variant has the best mean log-ppl, and a
95% interval of each variant's gap to the full method (``smol``). It measures the spread from the choice of
eval text only; it says nothing about the spread from the training seed, which would need more runs.

    python benchmarks/finetune_paired.py --results benchmarks/results/finetune-beam4.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from amoeba_search.data import token_blocks  # noqa: E402
from amoeba_search.evaluation.perplexity import perplexity  # noqa: E402
from amoeba_search.finetune.smol import SMoLAdapter  # noqa: E402
from amoeba_search.paths import atomic_write_text  # noqa: E402
from amoeba_search.session import open_supernet  # noqa: E402
from amoeba_search.shapes import SubnetShape  # noqa: E402

FULL = "smol"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "finetune-beam4.json",
                   help="a results file of benchmarks/finetune.py; its variants' run directories must exist")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write (default: <results stem>-paired.json beside it)")
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def block_nll(loaded, shapes, blocks) -> np.ndarray:
    """Mean NLL per block, (shapes, blocks); every block scores the same number of tokens."""
    out = np.zeros((len(shapes), len(blocks)))
    for i, shape in enumerate(shapes):
        loaded.activate(shape)
        for j in range(len(blocks)):
            out[i, j] = perplexity(loaded.supernet, blocks[j:j + 1], batch_size=1).nll
    return out


def paired_bootstrap(nll: dict[str, np.ndarray], resamples: int, seed: int) -> dict:
    """``nll``: variant -> (shapes, blocks). Resample blocks, same indices for every variant."""
    names = list(nll)
    n_blocks = next(iter(nll.values())).shape[1]
    draws = np.random.default_rng(seed).integers(0, n_blocks, size=(resamples, n_blocks))
    # mean log-ppl of a variant under a draw: mean over shapes of the mean NLL over the drawn blocks
    means = np.stack([nll[v][:, draws].mean(axis=2).mean(axis=0) for v in names])  # (variants, resamples)
    best = np.bincount(means.argmin(axis=0), minlength=len(names)) / resamples
    out = {"best_fraction": {v: float(b) for v, b in zip(names, best)}, "gap_to_full": {}}
    if FULL in names:
        full = means[names.index(FULL)]
        for v, row in zip(names, means):
            if v == FULL:
                continue
            gap = row - full  # > 0: the full method is better
            out["gap_to_full"][v] = {"mean": float(gap.mean()), "ci95": [float(np.quantile(gap, 0.025)),
                                                                           float(np.quantile(gap, 0.975))],
                                     "full_better_fraction": float((gap > 0).mean())}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    source = json.loads(args.results.read_text())
    out_path = args.out or args.results.with_name(args.results.stem + "-paired.json")
    runs = {v: ROOT / r["run_dir"] for v, r in source["variants"].items()}
    missing = [f"{v} ({d})" for v, d in runs.items() if not (d / "adapter").is_dir()]
    if missing:
        raise SystemExit(f"error: no final adapter for {', '.join(missing)}; run benchmarks/finetune.py first "
                         "with the command in the results file")
    ev = source["settings"]["eval"]
    shapes = [SubnetShape.parse(s) for s in source["before"]]
    loaded = open_supernet(source["model"], str(ROOT / source["strategy"]))
    blocks = token_blocks(ev["data"], loaded.tokenizer, split=ev["split"], seq_len=ev["seq_len"],
                          max_blocks=ev["blocks"])
    nll, reproduced = {}, {}
    for variant, run_dir in runs.items():
        log(f"{variant}: scoring {len(shapes)} shapes x {len(blocks)} blocks")
        adapter = SMoLAdapter.load(run_dir, loaded.supernet).attach().eval()
        nll[variant] = block_nll(loaded, shapes, blocks)
        adapter.detach()
        ppl = np.exp(nll[variant].mean(axis=1))
        reproduced[variant] = {str(s): round(float(p), 2) for s, p in zip(shapes, ppl)}
        for s, p in zip(shapes, ppl):
            expected = source["variants"][variant]["after"][str(s)]
            if not math.isclose(p, expected, rel_tol=1e-3):
                raise SystemExit(f"error: {variant} {s}: perplexity {p:.3f} here but {expected:.3f} in "
                                 f"{args.results}; the run directory {run_dir} is not the run that file reports")
    result = {
        "claim": "how often each fine-tuning variant has the best mean log-ppl when the eval blocks are resampled",
        "source": os.path.relpath(args.results, ROOT), "shapes": [str(s) for s in shapes],
        "eval_blocks": len(blocks), "tokens_per_block": int(blocks.shape[1] - 1),
        "resamples": args.resamples, "seed": args.seed,
        "mean_log_ppl": {v: round(float(x.mean()), 4) for v, x in nll.items()},
        "reproduced_ppl": reproduced,
        **paired_bootstrap(nll, args.resamples, args.seed),
        "per_block_nll": {v: np.round(x, 5).tolist() for v, x in nll.items()},
        "command": "python benchmarks/finetune_paired.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    atomic_write_text(out_path, json.dumps(result, indent=2) + "\n")
    log(f"wrote {out_path}")
    print(json.dumps({k: result[k] for k in ("mean_log_ppl", "best_fraction", "gap_to_full")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
