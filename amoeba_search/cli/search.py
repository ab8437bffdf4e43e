"""amoeba-search: the Pareto-optimal subnets of a model within a latency budget on a device and flow."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from amoeba_search.cli._common import (add_artefact_arguments, add_compute_arguments, artefacts_of, compute_line,
                                       compute_of, emit_json, run)
from amoeba_search.cli._dry_run import add_dry_run_arguments

from amoeba_search.quality import DEFAULT_FLOOR

PROG = "amoeba-search"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Search the subnets of a model for the accuracy-latency Pareto front within a latency "
                    "budget, using a measured latency table of the target device and flow and an accuracy "
                    "predictor fit on real evaluations of the supernet. Writes front.json, front.csv, "
                    "points.csv and pareto.png to --out.",
        epilog="example: amoeba-search --budget-ms 40 --device cpu --flow torch --export-best out/best   "
               "(several GPUs: torchrun --nproc_per_node 4 $(which amoeba-search) ... splits the evaluations)")
    parser.add_argument("--budget-ms", type=float, required=True, help="latency budget in milliseconds (per token for decode)")
    where = parser.add_argument_group("latency table (one of)")
    where.add_argument("--device", help="device whose table to use (default: cpu); with --table, checked against it")
    where.add_argument("--flow", help="deployment flow whose table to use (default: torch); with --table, checked")
    where.add_argument("--table", type=Path, help="a lookup table CSV (instead of profiles/DEVICE/FLOW.csv)")
    where.add_argument("--roofline", action="store_true",
                       help="no table for this device: use a roofline estimate from its spec sheet (labelled as "
                            "an estimate everywhere, never as a measurement)")
    parser.add_argument("--model", default="smollm2-135m", help="model alias, directory, .gguf or HF id (default: %(default)s)")
    add_artefact_arguments(parser)
    parser.add_argument("--memory-budget-mb", type=float,
                        help="also require weights + KV cache (at the table's dtype, batch and context length) to "
                             "fit in this many MB: a second constraint")
    parser.add_argument("--metric", choices=["decode", "prefill", "e2e"], default="decode",
                        help="latency to budget: per decoded token, prompt prefill, or prefill + all decode steps")
    parser.add_argument("--objective", default="ppl", metavar="ppl|TASK",
                        help="what the search minimizes: ppl (held-out perplexity of --data) or a local "
                             "multiple-choice task, by name (amoeba_<task>_calib; see amoeba-eval --list-tasks) "
                             "or .jsonl path, scored by its answer cross-entropy (accuracy reported beside it)")
    parser.add_argument("--task-limit", type=int, default=100, help="task items per evaluation (default: %(default)s)")
    parser.add_argument("--task-dir", type=Path, help="where local tasks live (default: the prepared ones)")
    parser.add_argument("--data", default="wiki", help="text for the ppl objective (default: %(default)s, eval split)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=8, help="eval blocks per shape evaluation")
    parser.add_argument("--predictor", type=Path, help="accuracy predictor JSON to reuse or write (default: the "
                        "committed profiles/smollm2-135m/predictor-ppl-wiki.json where it was fit with these "
                        "settings, else predictor-<objective>-... in --out; committed files are never rewritten)")
    parser.add_argument("--max-metric", default=DEFAULT_FLOOR, metavar="VALUE|Kx",
                        help="quality floor: front shapes whose metric is above it are marked unusable and never "
                             "chosen; a number, or K times the full model's metric (default: %(default)s; "
                             "'none' to turn it off)")
    parser.add_argument("--method", choices=["hierarchical", "nsga2", "exhaustive"], default="hierarchical")
    parser.add_argument("--trials", type=int, default=120)
    parser.add_argument("--storage", help="Optuna storage URL shared by workers (default: sqlite in --out)")
    parser.add_argument("--verify", choices=["decisive", "all", "none"], default="decisive",
                        help="front shapes to evaluate and time for real: decisive = the most accurate ones until "
                             "--verify-count are usable and within budget (the choice and its nearest "
                             "alternatives), all = the whole front (default: %(default)s)")
    parser.add_argument("--verify-count", type=int, default=4, help="see --verify (default: %(default)s)")
    parser.add_argument("--no-verify", action="store_true", help="the same as --verify none")
    parser.add_argument("--export-best", type=Path, help="export the most accurate feasible subnet to this directory")
    parser.add_argument("--out", type=Path, default=Path("out/search"), help="output directory (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_compute_arguments(parser, device_flag="--compute-device")
    add_dry_run_arguments(parser)
    return parser


def _progress(enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="shape", file=sys.stderr)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        from amoeba_search.data import token_blocks
        from amoeba_search.defaults import PROFILES
        from amoeba_search.models.session import open_supernet
        from amoeba_search.profiling.lut import LatencyTable
        from amoeba_search.profiling.model_source import model_fingerprint
        from amoeba_search.profiling.remeasure import latency_meter
        from amoeba_search.quality import parse_floor
        from amoeba_search.search.job import run_job, write_outputs
        from amoeba_search.search.oracle import check_objective, perplexity_oracle, task_oracle

        if args.dry_run:
            return _dry_run(args)
        task_path = check_objective(args.objective, task_dir=args.task_dir)  # before loading anything
        if task_path is not None and args.task_limit < 1:
            raise ValueError(f"--task-limit must be positive, got {args.task_limit}")
        _note_heldout_task(args.objective)
        used = artefacts_of(args)
        verify = "none" if args.no_verify else args.verify
        if args.verify_count < 1:
            raise ValueError(f"--verify-count must be at least 1, got {args.verify_count}")
        max_metric = parse_floor(args.max_metric)
        if args.table is None:
            args.device, args.flow = args.device or "cpu", args.flow or "torch"
        table_path = args.table or PROFILES / args.device / f"{args.flow}.csv"  # issue 18 moves tables per model
        table = None if args.roofline else LatencyTable.load(table_path)
        if table is not None:
            for name, wanted in (("flow", args.flow), ("device", args.device)):
                if wanted is not None and getattr(table, name) != wanted:
                    raise ValueError(f"{table_path} is a table for {name} {getattr(table, name)!r}, not {wanted!r}; "
                                     f"pass the table measured for it (amoeba-profile --device D --flow F)")
        if args.export_best is not None and args.export_best.exists():
            raise FileExistsError(f"{args.export_best} already exists; choose another --export-best")
        if args.storage:
            _check_storage(args.storage)

        from amoeba_search.distributed import init_distributed

        rank, world = init_distributed()  # torchrun: the processes split the shapes the search evaluates
        compute = compute_of(args, rank=rank)
        loaded = open_supernet(args.model, used.strategy, adapter=used.adapter, dtype=compute.dtype,
                               device=compute.device)
        config = loaded.supernet.base_config
        if table is None:
            from amoeba_search.profiling.devices import get_device
            from amoeba_search.profiling.roofline import RooflineEstimator

            device = args.device or "cpu"  # --table with --roofline leaves it unset
            table = RooflineEstimator(get_device(device), config)
            latency_source = f"roofline estimate for {device} from its spec sheet (not a measurement)"
            flow, dtype = "roofline", table.settings["dtype"]
        else:
            table.check_model(model_fingerprint(args.model, config))
            latency_source = f"lookup table {table_path.name} ({table.flow} on {table.device}, measured)"
            device, flow, dtype = table.device, table.flow, table.dtype
        space = loaded.space()
        cache = args.out / "evaluations.json"
        if task_path is None:
            blocks = token_blocks(args.data, loaded.tokenizer, split="eval", seq_len=args.seq_len,
                                  max_blocks=args.blocks)
            data_settings = {"data": args.data, "split": "eval", "seq_len": args.seq_len, "blocks": args.blocks}
            args.out.mkdir(parents=True, exist_ok=True)
            oracle = perplexity_oracle(loaded, blocks, data_settings=data_settings, cache_path=cache)
            objective, label = "ppl", f"perplexity ({args.data}, held out)"
            predictor_name = f"predictor-ppl-{args.data}.json"
        else:
            oracle = task_oracle(loaded, args.objective, limit=args.task_limit, task_dir=args.task_dir,
                                 cache_path=cache)  # reads the cache only if it exists; writes it later
            objective, items = oracle.settings["task"], oracle.settings["items"]
            data_settings = {"task": objective, "task_file": str(task_path), "task_limit": args.task_limit}
            label = f"{objective} answer cross-entropy (nats, {items} items)"
            predictor_name = f"predictor-task-{objective}-{items}.json"
            args.out.mkdir(parents=True, exist_ok=True)
        predictor_path = args.predictor or _default_predictor(args, predictor_name, space, oracle)
        if verify == "none":
            measure, why = None, "skipped (--verify none)"
        elif args.roofline:
            measure, why = None, "not measured: roofline estimate only"
        else:
            measure, why = latency_meter(table, config, metric=args.metric)
        memory_kwargs, memory_settings = _memory_budget(args, table, config, dtype)
        settings = {"model": args.model, **used.to_dict(), "predictor": str(predictor_path),
                    "table": None if args.roofline else str(table_path),
                    "device": device, "flow": flow, "dtype": dtype, "metric": args.metric,
                    "objective": objective, **data_settings, "latency_source": latency_source,
                    "latency_verification": why, "objective_label": label, "compute": compute.to_dict(),
                    "latency_label": f"{args.metric} latency (ms{'/token' if args.metric == 'decode' else ''}), "
                                     f"{flow} on {device}", **memory_settings}
        tag = hashlib.sha256(json.dumps([settings, oracle.settings], sort_keys=True, default=str).encode()).hexdigest()[:10]
        storage = args.storage or f"sqlite:///{(args.out / 'study.db').resolve()}"
        job = run_job(space, oracle, lambda s: table.predict(s, metric=args.metric), budget_ms=args.budget_ms,
                      predictor_path=predictor_path, method=args.method, trials=args.trials, storage=storage,
                      study_name=f"amoeba-{args.method}-{args.budget_ms:g}ms-{tag}", seed=args.seed,
                      verify=verify, verify_count=args.verify_count, max_metric=max_metric,
                      measure_latency=measure,
                      layers_for=loaded.layers_for, settings=settings,
                      progress=_progress(not args.json and rank == 0), **memory_kwargs)
        if rank != 0:
            return
        paths = write_outputs(job, args.out, title=f"{args.model}: {flow} on {device}, "
                                                   f"budget {args.budget_ms:g} ms")
        summary = job.to_dict()
        summary["outputs"] = {k: str(v) for k, v in paths.items()}
        best = job.best_shape()
        if args.export_best is not None and best is not None:
            loaded.export(best, args.export_best, provenance={"search": settings})
            summary["exported"] = str(args.export_best)
        if args.json:
            emit_json(summary)
            return
        _print_front(job, args, paths, summary)
        print(f"evaluations {compute_line(compute, args)}; used {used.describe()}")

    return run(PROG, body)


def _dry_run(args) -> None:
    import inspect

    from amoeba_search.cli._dry_run import emit_plan, plan_device, plan_dtype
    from amoeba_search.models.loading import load_config
    from amoeba_search.plan import plan_search
    from amoeba_search.search.job import fit_or_load_predictor

    defaults = inspect.signature(fit_or_load_predictor).parameters
    spec = plan_device(args)
    sample = defaults["n_train"].default + defaults["n_holdout"].default
    plan = plan_search(load_config(args.model), predictor_samples=sample, verify_shapes=args.trials // 4,
                       blocks=args.blocks, seq_len=args.seq_len, dtype=plan_dtype(args, spec), device_spec=spec)
    emit_plan(PROG, plan, json_output=args.json)


def _explain(why: dict | None, summary: dict, args) -> list[str]:
    """The choice in words: against the full model, the budget and the next alternatives."""
    if why is None:
        return [f"best: none: no usable shape within {args.budget_ms:g} ms (raise the budget or --max-metric)"]
    source = "verified" if why["verified"] else "predicted"
    lines = [f"best: {why['shape']}: metric {why['metric']:.4g}, {why['latency_ms']:.1f} ms ({source}), "
             f"{why['budget_margin_ms']:.1f} ms ({why['budget_margin_pct']:.0f}%) inside the budget"]
    if "speedup_vs_full" in why:
        lines.append(f"  against the full model {why['full_model']}: {why['speedup_vs_full']:.2f}x faster on the "
                     f"table, metric {why['metric_change_vs_full_pct']:+.1f}%")
    for alt in why["alternatives"]:
        lines.append(f"  alternative: {alt['shape']}: metric {alt['metric']:.4g}, {alt['latency_ms']:.1f} ms "
                     f"({'verified' if alt['verified'] else 'predicted'})")
    return lines


def _default_predictor(args, name: str, space, oracle) -> Path:
    """The committed predictor of the default model where it was fit with exactly these settings (model,
    strategy, adapter, data), else a file in --out: a refit never rewrites a committed file."""
    from amoeba_search.defaults import committed_dir
    from amoeba_search.search.job import predictor_matches

    committed = committed_dir(args.model)
    if committed is not None and predictor_matches(committed / name, space, oracle):
        return committed / name
    return args.out / name


def _note_heldout_task(objective: str) -> None:
    """Searching on a task's evaluation part would bias the accuracies later reported on it: say so."""
    from amoeba_search.evaluation.local_tasks import CALIB_SUFFIX, TASK_PREFIX, is_task_path

    if objective.startswith(TASK_PREFIX) and not is_task_path(objective) and not objective.endswith(CALIB_SUFFIX):
        print(f"{PROG}: note: {objective} is a held-out evaluation task; search on {objective}{CALIB_SUFFIX} "
              f"and keep {objective} for reporting", file=sys.stderr)


def _memory_budget(args, table, config, dtype: str) -> tuple[dict, dict]:
    """run_job's memory arguments for --memory-budget-mb (weights + KV cache at the table's settings) and the
    settings that record them; both empty without a memory budget."""
    if args.memory_budget_mb is None:
        return {}, {}
    if args.memory_budget_mb <= 0:
        raise ValueError(f"--memory-budget-mb must be positive, got {args.memory_budget_mb:g}")
    from amoeba_search.profiling.roofline import memory_footprint_bytes

    keys = table.settings if hasattr(table, "settings") else table.key
    context, batch = int(keys["context_len"]), int(keys["batch"])
    settings = {"memory_budget_mb": args.memory_budget_mb,
                "memory_source": f"weights + KV cache computed from the config ({dtype}, batch {batch}, "
                                 f"context {context} tokens; runtime overheads excluded)"}
    return {"memory_budget_mb": args.memory_budget_mb,
            "memory_fn": lambda s: memory_footprint_bytes(config, s, dtype=dtype, context=context, batch=batch) / 2**20
            }, settings


def _check_storage(url: str) -> None:
    """Open the Optuna storage once, before any work, so a bad URL is one clear line, not a traceback."""
    import optuna

    try:
        optuna.storages.RDBStorage(url)
    except Exception as err:  # sqlalchemy / driver errors differ by database; all mean the same to a user
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot open the Optuna storage {url!r}: {first[:200]}; check the URL, the database "
                         "driver and that the server is reachable") from None


def _print_front(job, args, paths, summary) -> None:
    report = job.predictor
    print(f"accuracy predictor: {report.kind}{' (reused)' if report.reused else ''}, held-out Spearman "
          f"{report.holdout_spearman:.3f}, error {100 * report.holdout_mare:.1f}% on {report.holdout_shapes} shapes")
    print(f"searched {len(job.result.points)} shapes in {job.result.trials} trials ({job.result.method}); "
          f"{job.real_evaluations} real evaluations")
    print(f"metric: {job.settings.get('objective_label')} (lower is better)")
    print(f"Pareto front within {args.budget_ms:g} ms ({args.metric}):")
    accuracy = any(row.get("verified_accuracy") is not None for row in summary["front"])
    print(f"  {'shape':<18} {'pred metric':>11} {'real metric':>11}{' real acc' if accuracy else ''} "
          f"{'pred ms':>8} {'real ms':>8}")
    for row in summary["front"]:
        real = f"{row['verified_metric']:.4g}" if row["verified_metric"] is not None else "-"
        acc = "" if not accuracy else (f" {row['verified_accuracy']:>8.3f}" if row.get("verified_accuracy") is not None
                                       else f" {'-':>8}")
        real_ms = f"{row['verified_latency_ms']:.1f}" if row["verified_latency_ms"] is not None else "-"
        mark = "  <- chosen" if row["shape"] == summary["best"] else "" if row["usable"] else "  unusable"
        print(f"  {row['shape']:<18} {row['predicted_metric']:>11.4g} {real:>11}{acc} "
              f"{row['predicted_latency_ms']:>8.1f} {real_ms:>8}{mark}")
    floor = job.max_metric
    if floor is not None:
        print(f"quality floor: metric <= {floor:.4g} ({job.settings.get('max_metric_rule')}; full model "
              f"{job.reference['shape']} at {job.reference['metric']:.4g})")
    for line in _explain(summary.get("explanation"), summary, args):
        print(line)
    print(f"latency verification: {job.settings.get('latency_verification')}")
    print(f"wrote {paths['front_json']}, {paths['front_csv']}, {paths['plot']}")
    if "exported" in summary:
        print(f"exported the best subnet to {summary['exported']}")


if __name__ == "__main__":
    raise SystemExit(main())
