"""Search quality on the default model: searched front vs exhaustive front, across budgets.

For budgets spread over this machine's latency table it reports
- the hypervolume (latency x log perplexity) of the searched front (``verify="all"``: the predicted front and the
  shapes the predictor puts within twice its held-out error of it are evaluated, and the front is rebuilt from
  those evaluations) relative to the exhaustive one (target
  >= 0.99), both on the predicted objectives (what the search optimises) and on the real ones (every shape of the space evaluated
  for real, latency from the measured table);
- wall time and number of real evaluations the search needed;
- the accuracy predictor's rank correlation on held-out shapes (target >= 0.9);
- how far verified numbers (perplexity evaluated, latency measured now) sit from predicted ones.

By default it searches what the main job searches: the fine-tuned supernet of the default model (the committed
beam-4 strategy and the shipped SMoL adapter), in this machine's ``auto`` dtype (``--no-adapter`` for the raw one).

Run: python benchmarks/search.py [--table profiles/smollm2-135m/cpu/torch.csv]  ->  benchmarks/results/search.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "search.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", type=Path, default=ROOT / "profiles" / "smollm2-135m" / "cpu" / "torch.csv")
    parser.add_argument("--strategy", type=Path, default=ROOT / "profiles" / "smollm2-135m" / "strategy-beam4.json")
    parser.add_argument("--adapter", type=Path, default=ROOT / "profiles" / "smollm2-135m" / "adapter",
                        help="the fine-tuned supernet's adapter (default: the shipped one)")
    parser.add_argument("--no-adapter", action="store_true", help="search the raw supernet")
    parser.add_argument("--dtype", default="auto", help="compute dtype (default: this machine's rule)")
    parser.add_argument("--budgets", type=int, default=4, help="budgets spread over the table's range")
    parser.add_argument("--trials", type=int, default=120)
    parser.add_argument("--data", default="wiki")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--measure", type=int, default=6, help="front shapes to re-measure for latency (0: none)")
    args = parser.parse_args()

    from amoeba_search.cli._common import quiet_libraries
    from amoeba_search.data import token_blocks
    from amoeba_search.profiling.lut import LatencyTable
    from amoeba_search.profiling.remeasure import latency_meter
    from amoeba_search.search.job import run_job
    from amoeba_search.search.oracle import MetricOracle, perplexity_oracle
    from amoeba_search.search.pareto import hypervolume_2d
    from amoeba_search.search.search import Point, feasible_front, search
    from amoeba_search.session import open_supernet

    from amoeba_search.compute import resolve_compute
    from amoeba_search.paths import atomic_write_text
    from amoeba_search.profiling.machine import detect_machine

    quiet_libraries()
    table = LatencyTable.load(args.table)
    compute = resolve_compute("cpu", args.dtype)
    adapter = None if args.no_adapter else args.adapter
    loaded = open_supernet("smollm2-135m", args.strategy, adapter, dtype=compute.dtype)
    space = loaded.space()
    blocks = token_blocks(args.data, loaded.tokenizer, split="eval", seq_len=args.seq_len, max_blocks=args.blocks)
    data_settings = {"data": args.data, "split": "eval", "seq_len": args.seq_len, "blocks": args.blocks}
    cache = ROOT / "benchmarks" / "results" / ".search-evaluations.json"
    oracle = perplexity_oracle(loaded, blocks, data_settings=data_settings, cache_path=cache)
    latency = {s: table.predict(s, metric="decode") for s in space}
    lo, hi = min(latency.values()), max(latency.values())
    budgets = [round(float(b), 1) for b in np.linspace(lo, hi, args.budgets + 2)[1:-1]] + [round(hi * 1.01, 1)]

    # Ground truth: every shape evaluated for real (cached, so reruns are cheap).
    shapes = list(space)
    real = dict(zip(shapes, oracle(shapes)))
    eval_s = statistics.median(oracle.seconds.values())  # one real evaluation, measured

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        predictor_path = Path(tmp) / "predictor.json"
        for budget in budgets:
            # Answers from the exhaustive pass, but counted: what the search would have had to evaluate.
            counting = MetricOracle(lambda s: real[s], oracle.settings)
            start = time.perf_counter()
            job = run_job(space, counting, lambda s: latency[s], budget_ms=budget, predictor_path=predictor_path,
                          trials=args.trials, storage=f"sqlite:///{tmp}/study-{budget}.db", study_name=f"b{budget}",
                          verify=True)
            wall = time.perf_counter() - start
            predicted_all = search(space, _predict(predictor_path), lambda ss: np.array([latency[s] for s in ss]),
                                   budget_ms=budget, method="exhaustive")
            # Perplexities span 20 to 1e6 here: on a linear scale the huge values of tiny shapes dominate the
            # hypervolume and hide misses among the useful shapes, so it is computed on log(metric).
            ref_pred = [budget, max(np.log(p.metric) for p in predicted_all.points)]
            hv = lambda pts, ref: hypervolume_2d([[p.latency_ms, np.log(p.metric)] for p in pts], ref)
            real_points = [Point(s, real[s], latency[s]) for s in shapes]
            true_front = feasible_front(real_points, budget)
            searched_real = [Point(p.shape, real[p.shape], p.latency_ms) for p in job.result.front]
            ref_real = [budget, max(np.log(v) for v in real.values())]
            verified = {v["shape"]: v["metric"] for v in job.verified}
            gaps = [abs(p.metric / verified[str(p.shape)] - 1) for p in job.result.front if str(p.shape) in verified]
            best_true = min(true_front, key=lambda p: p.metric) if true_front else None
            best_found = min(searched_real, key=lambda p: p.metric) if searched_real else None
            rows.append({
                "budget_ms": budget, "trials": job.result.trials, "search_wall_s": round(wall, 1),
                "real_evaluations": job.real_evaluations,
                "verified_near_front": job.settings.get("verified_near_front"), "verify_band": job.settings.get("verify_band"),
                "wall_s_with_evaluations": round(wall + job.real_evaluations * eval_s, 1), "front_size": len(job.result.front),
                "hv_ratio_predicted": hv(job.result.front, ref_pred) / max(hv(predicted_all.front, ref_pred), 1e-12),
                "hv_ratio_real": hv(searched_real, ref_real) / max(hv(true_front, ref_real), 1e-12),
                "best_found": str(best_found.shape) if best_found else None,
                "best_found_ppl": best_found.metric if best_found else None,
                "best_possible": str(best_true.shape) if best_true else None,
                "best_possible_ppl": best_true.metric if best_true else None,
                "predicted_vs_verified_ppl_mean_abs_rel": float(np.mean(gaps)) if gaps else None,
                "predictor": job.predictor.to_dict(),
            })
            print(f"budget {budget} ms: HV ratio {rows[-1]['hv_ratio_predicted']:.4f} (predicted), "
                  f"{rows[-1]['hv_ratio_real']:.4f} (real); {job.real_evaluations} real evaluations, "
                  f"{rows[-1]['wall_s_with_evaluations']:.0f}s")

    latency_check = _measure_front(table, loaded, rows, latency, args.measure, latency_meter)
    raw_comparison = None
    if loaded.adapter is not None:  # the same 240 shapes on the raw supernet: does fine-tuning move the front?
        loaded.adapter.detach()
        loaded.adapter = None
        raw_oracle = perplexity_oracle(loaded, blocks, data_settings=data_settings, cache_path=cache)
        raw = dict(zip(shapes, raw_oracle(shapes)))
        raw_comparison = _compare_fronts(real, raw, latency)
    result = {
        "benchmark": "search", "model": "smollm2-135m", "table": str(args.table.relative_to(ROOT)),
        "strategy": str(args.strategy.relative_to(ROOT)),
        "adapter": None if adapter is None else str(adapter.relative_to(ROOT)), "compute": compute.to_dict(),
        "table_machine": str(table.rows["machine"].iloc[0]), "space_size": len(space), "objective": data_settings,
        "seconds_per_real_evaluation": round(eval_s, 2),
        "exhaustive_real_evaluation_s": round(eval_s * len(shapes), 1), "budgets": rows,
        "predictor_holdout_spearman": rows[0]["predictor"]["holdout_spearman"],
        "latency_verification": latency_check,
        "finetuned_vs_raw": raw_comparison,
        "machine": {"summary": detect_machine().summary(), "loadavg_1m": os.getloadavg()[0]},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_text(RESULTS, json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")


def _best_within(values: dict, latency: dict, limit: float) -> float:
    return min(v for s, v in values.items() if latency[s] <= limit + 1e-9)


def _compare_fronts(tuned: dict, raw: dict, latency: dict) -> dict:
    """At every latency a shape of the space has, the best real perplexity within it, fine-tuned against raw;
    and the same for the main job's committed front (``results/demo.json``), verified metric where verified."""
    levels = sorted(set(latency.values()))
    worse = [lvl for lvl in levels if _best_within(tuned, latency, lvl) > _best_within(raw, latency, lvl)]
    demo_path = ROOT / "benchmarks" / "results" / "demo.json"
    demo = None
    if demo_path.is_file():
        from amoeba_search.shapes import SubnetShape

        front = json.loads(demo_path.read_text())["front"]
        checks = []
        for row in front:
            shape = SubnetShape.parse(row["shape"])
            metric = row.get("verified_metric") or row.get("predicted_metric") or row.get("metric")
            checks.append({"shape": row["shape"], "metric": metric,
                           "raw_best_within_its_latency": _best_within(raw, latency, latency[shape])})
        demo = {"shapes": len(checks),
                "at_least_as_good_as_raw_everywhere": all(c["metric"] <= c["raw_best_within_its_latency"] for c in checks),
                "points": checks}
    return {"latency_levels": len(levels), "levels_where_finetuned_is_worse": len(worse),
            "raw_exhaustive_front_best": {f"{lvl:.1f}": _best_within(raw, latency, lvl) for lvl in levels[::24]},
            "finetuned_exhaustive_front_best": {f"{lvl:.1f}": _best_within(tuned, latency, lvl) for lvl in levels[::24]},
            "demo_front": demo}


def _predict(path):
    from amoeba_search.search.predictors import load_predictor

    predictor, _ = load_predictor(path)
    return predictor.predict


def _measure_front(table, loaded, rows, latency, n, latency_meter) -> dict:
    if n <= 0:
        return {"skipped": "--measure 0"}
    measure, why = latency_meter(table, loaded.supernet.base_config, metric="decode")
    if measure is None:
        return {"skipped": why}
    shapes = []
    for row in rows:
        if row["best_found"] and row["best_found"] not in shapes:
            shapes.append(row["best_found"])
    from amoeba_search.shapes import SubnetShape

    checks = []
    for text in shapes[:n]:
        shape = SubnetShape.parse(text)
        measured = measure(shape)
        checks.append({"shape": text, "predicted_ms": latency[shape], "measured_ms": measured,
                       "rel_error": measured / latency[shape] - 1})
    errors = [abs(c["rel_error"]) for c in checks]
    return {"source": why, "shapes": checks, "mean_abs_rel_error": statistics.mean(errors) if errors else None}


if __name__ == "__main__":
    main()
