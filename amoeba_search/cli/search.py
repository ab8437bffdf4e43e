"""amoeba-search: the Pareto-optimal subnets of a model within a latency budget on a device and flow."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from amoeba_search.cli._common import (ArgumentParser, add_artefact_arguments, add_compute_arguments, artefacts_of, compute_line,
                                       compute_of, emit_json, file_path, positive_float, positive_int, run, unit_float)
from amoeba_search.cli._dry_run import add_dry_run_arguments
from amoeba_search.errors import InputError
from amoeba_search.quality import DEFAULT_FLOOR

PROG = "amoeba-search"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Search the subnets of a model for the accuracy-latency Pareto front within a latency "
                    "budget, using a measured latency table of the target device and flow and an accuracy "
                    "predictor fit on real evaluations of the supernet. Writes front.json, front.csv, "
                    "points.csv and pareto.png to --out.",
        epilog="example: amoeba-search --budget-ms 40 --device cpu --flow torch --export-best out/best   "
               "(several GPUs: torchrun --nproc_per_node 4 $(which amoeba-search) ... splits the evaluations)")
    budget = parser.add_argument_group("budget (one of)")
    budget.add_argument("--budget-ms", type=positive_float, help="latency budget in milliseconds (per token for decode)")
    budget.add_argument("--budget-mj", type=positive_float,
                        help="energy budget in millijoules per decoded token, with --metric energy (the table's "
                             "decode_energy_mj_per_token column)")
    where = parser.add_argument_group("latency table (one of)")
    where.add_argument("--device", help="device whose table to use (default: cpu); with --table, checked against it")
    where.add_argument("--flow", help="deployment flow whose table to use (default: torch); with --table, checked")
    where.add_argument("--table", type=file_path, help="a lookup table CSV (instead of profiles/MODEL/DEVICE/FLOW.csv, "
                                                  "looked up in $AMOEBA_PROFILES, ./profiles, then the committed ones)")
    where.add_argument("--roofline", action="store_true",
                       help="no table for this device: estimate latency from its spec sheet (roofline, in the "
                            "flow's dtype: fp16 on GPUs) plus the --flow's overheads (fitted on measured tables; on "
                            "GPUs eager torch's kernel launches); labelled as an estimate everywhere")
    parser.add_argument("--model", default="smollm2-135m", help="model alias, directory, .gguf or HF id (default: %(default)s)")
    add_artefact_arguments(parser)
    parser.add_argument("--memory-budget-mb", type=positive_float,
                        help="also require weights + KV cache (at the table's dtype, batch and context length) to "
                             "fit in this many MB: a second constraint")
    parser.add_argument("--metric", choices=["decode", "prefill", "e2e", "energy"], default="decode",
                        help="cost to budget: latency per decoded token, prompt prefill, or prefill + all decode "
                             "steps (--budget-ms); or energy per decoded token in mJ (--budget-mj; needs a table "
                             "with energy columns)")
    parser.add_argument("--objective", default="ppl", metavar="ppl|TASK",
                        help="what the search minimizes: ppl (held-out perplexity of --data) or a local "
                             "multiple-choice task, by name (amoeba_<task>_calib; see amoeba-eval --list-tasks) "
                             "or .jsonl path, scored by its answer cross-entropy (accuracy reported beside it)")
    parser.add_argument("--task-limit", type=positive_int, default=100, help="task items per evaluation (default: %(default)s)")
    parser.add_argument("--task-dir", type=Path, help="where local tasks live (default: the prepared ones)")
    parser.add_argument("--data", default="wiki", help="text for the ppl objective (default: %(default)s, eval split)")
    parser.add_argument("--seq-len", type=positive_int, default=256)
    parser.add_argument("--blocks", type=positive_int, default=8, help="eval blocks per shape evaluation")
    parser.add_argument("--predictor", type=file_path, help="accuracy predictor JSON to reuse or write (default: the "
                        "committed profiles/smollm2-135m/predictor-ppl-wiki.json where it was fit with these "
                        "settings, else predictor-<objective>-... in --out; a committed file is only read: a refit of one, "
                        "given or not, is written to --out)")
    parser.add_argument("--max-metric", default=DEFAULT_FLOOR, metavar="VALUE|Kx",
                        help="quality floor: front shapes whose metric is above it are marked unusable and never "
                             "chosen; a number, or K times the full model's metric (default: %(default)s; "
                             "'none' to turn it off)")
    parser.add_argument("--method", choices=["hierarchical", "nsga2", "exhaustive"], default="hierarchical")
    parser.add_argument("--trials", type=positive_int, default=120)
    parser.add_argument("--storage", help="where the study and the evaluations live, shared by workers: a journal file "
                        "path (several processes on one machine), an Optuna URL such as postgresql://user@host/db "
                        "(several machines; needs psycopg2: pip install amoeba-search[postgres]) or sqlite:///file "
                        "(one worker) (default: study.journal in --out)")
    parser.add_argument("--verify", choices=["decisive", "all", "none"], default="decisive",
                        help="front shapes to evaluate and time for real: decisive = the most accurate ones until "
                             "--verify-count are usable and within budget (the choice and its nearest "
                             "alternatives), all = the whole front and the shapes the predictor puts within "
                             "--verify-band of it, the front then rebuilt from the measured metrics (default: %(default)s)")
    parser.add_argument("--verify-count", type=positive_int, default=4, help="see --verify (default: %(default)s)")
    parser.add_argument("--verify-band", type=unit_float, default=None, metavar="FRACTION",
                        help="--verify all: also measure shapes predicted within this relative margin of the front "
                             "(default: twice the predictor's held-out error, between 0.02 and 0.25)")
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
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the CLI's choice; the library leaves it alone
        from amoeba_search.data import token_blocks
        from amoeba_search.profiling.remeasure import latency_meter
        from amoeba_search.quality import parse_floor
        from amoeba_search.search.job import run_job, write_outputs
        from amoeba_search.search.oracle import check_objective, perplexity_oracle, task_oracle
        from amoeba_search.session import (cost_label, latency_model, memory_budget, open_supernet, predictor_path,
                                           resolve_table, study_tag)

        if args.dry_run:
            return _dry_run(args)
        budget, unit = _budget(args)
        task_path = check_objective(args.objective, task_dir=args.task_dir)  # before loading anything
        if task_path is not None and args.task_limit < 1:
            raise InputError(f"--task-limit must be positive, got {args.task_limit}")
        _note_heldout_task(args.objective)
        used = artefacts_of(args)
        verify = "none" if args.no_verify else args.verify
        if args.verify_count < 1:
            raise InputError(f"--verify-count must be at least 1, got {args.verify_count}")
        max_metric = parse_floor(args.max_metric)
        choice = resolve_table(args.model, args.device, args.flow, args.table, roofline=args.roofline)
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
        costs = latency_model(choice, config, args.model, args.metric)
        table, machine_warning = costs.source, costs.machine_warning
        device, flow, dtype = costs.device, costs.flow, costs.dtype
        if machine_warning and rank == 0:
            print(f"{PROG}: warning: {machine_warning}", file=sys.stderr)
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
        predictor = predictor_path(args.model, predictor_name, space, oracle, given=args.predictor, out=args.out)
        if verify == "none":
            measure, why = None, "skipped (--verify none)"
        elif args.roofline:
            measure, why = None, "not measured: estimate only (roofline + flow overheads)"
        elif args.metric == "energy":
            measure, why = None, "not measured: energy from the table only"
        else:
            measure, why = latency_meter(table, config, metric=args.metric)
        memory_kwargs, memory_settings = memory_budget(args.memory_budget_mb, table, config, dtype)
        settings = {"model": args.model, **used.to_dict(), "predictor": str(predictor),
                    "table": None if args.roofline else str(choice.path),
                    "device": device, "flow": flow, "dtype": dtype, "metric": args.metric,
                    "objective": objective, **data_settings, "latency_source": costs.label,
                    "latency_source_kind": costs.kind, "budget_unit": unit,
                    "latency_verification": why, "objective_label": label, "compute": compute.to_dict(),
                    "latency_label": cost_label(args.metric, flow, device), **memory_settings}
        tag = study_tag(settings, oracle.settings)
        storage = args.storage or str((args.out / "study.journal").resolve())
        if machine_warning:  # after the tag: the same table on another machine is the same study
            settings["table_machine_warning"] = machine_warning
        job = run_job(space, oracle, costs.cost_fn, budget_ms=budget, cost_unit=unit, source_kind=costs.kind,
                      predictor_path=predictor, method=args.method, trials=args.trials, storage=storage,
                      study_name=f"amoeba-{args.method}-{budget:g}{unit.lower()}-{tag}", seed=args.seed,
                      verify=verify, verify_count=args.verify_count, verify_band=args.verify_band, max_metric=max_metric,
                      measure_latency=measure,
                      layers_for=loaded.layers_for, settings=settings,
                      progress=_progress(not args.json and rank == 0), **memory_kwargs)
        if rank != 0:
            return
        if job.budget_warning and not args.json:
            print(f"{PROG}: warning: {job.budget_warning['message']}", file=sys.stderr)
        paths = write_outputs(job, args.out, title=f"{args.model}: {flow} on {device}, "
                                                   f"budget {budget:g} {unit}")
        summary = job.to_dict()
        if machine_warning:
            summary["table_machine_warning"] = machine_warning
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


def _budget(args) -> tuple[float, str]:
    """The budget and its unit: --budget-mj with --metric energy, --budget-ms otherwise (never both)."""
    if args.metric == "energy":
        if args.budget_ms is not None or args.budget_mj is None:
            raise InputError("--metric energy budgets millijoules per token: pass --budget-mj (not --budget-ms)")
        if args.roofline:
            raise InputError("--metric energy needs a measured table with energy columns; an estimate (--roofline) "
                             "has none: drop --roofline or use --metric decode")
        return args.budget_mj, "mJ"
    if args.budget_mj is not None or args.budget_ms is None:
        raise InputError(f"--metric {args.metric} budgets latency: pass --budget-ms (--budget-mj goes with "
                         "--metric energy)")
    return args.budget_ms, "ms"


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
    budget, unit = _budget(args)
    if why is None:
        return [f"best: none: no usable shape within {budget:g} {unit} (raise the budget or --max-metric)"]
    from amoeba_search.search.job import cost_key

    cost, margin = cost_key("latency_ms", unit), cost_key("budget_margin_ms", unit)
    source = "verified" if why["verified"] else "predicted"
    lines = [f"best: {why['shape']}: metric {why['metric']:.4g}, {why[cost]:.1f} {unit} ({source}), "
             f"{why[margin]:.1f} {unit} ({why['budget_margin_pct']:.0f}%) inside the budget"]
    if "speedup_vs_full" in why:
        lines.append(f"  against the full model {why['full_model']}: {why['speedup_vs_full']:.2f}x faster on the "
                     f"table, metric {why['metric_change_vs_full_pct']:+.1f}%")
    if "energy_ratio_vs_full" in why:
        lines.append(f"  against the full model {why['full_model']}: {why['energy_ratio_vs_full']:.2f}x less energy "
                     f"per token, metric {why['metric_change_vs_full_pct']:+.1f}%")
    for alt in why["alternatives"]:
        lines.append(f"  alternative: {alt['shape']}: metric {alt['metric']:.4g}, {alt[cost]:.1f} {unit} "
                     f"({'verified' if alt['verified'] else 'predicted'})")
    return lines


def _note_heldout_task(objective: str) -> None:
    """Searching on a task's evaluation part would bias the accuracies later reported on it: say so."""
    from amoeba_search.evaluation.local_tasks import CALIB_SUFFIX, TASK_PREFIX, is_task_path

    if objective.startswith(TASK_PREFIX) and not is_task_path(objective) and not objective.endswith(CALIB_SUFFIX):
        print(f"{PROG}: note: {objective} is a held-out evaluation task; search on {objective}{CALIB_SUFFIX} "
              f"and keep {objective} for reporting", file=sys.stderr)


def _check_storage(url: str) -> None:
    """Open the Optuna storage once, before any work, so a bad URL is one clear line, not a traceback."""
    from amoeba_search.search.storage import describe_storage, open_storage

    try:
        open_storage(url)
    except Exception as err:  # sqlalchemy / driver / file errors differ; all mean the same to a user
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"cannot open the Optuna storage {describe_storage(url)!r}: {first[:200]}; check the URL, "
                         "the database driver and that the server is reachable") from None


def _print_front(job, args, paths, summary) -> None:
    report = job.predictor
    print(f"accuracy predictor: {report.kind}{' (reused)' if report.reused else ''}, held-out Spearman "
          f"{report.holdout_spearman:.3f}, error {100 * report.holdout_mare:.1f}% on {report.holdout_shapes} shapes")
    print(f"searched {len(job.result.points)} shapes in {job.result.trials} trials ({job.result.method}); "
          f"{job.real_evaluations} real evaluations")
    print(f"metric: {job.settings.get('objective_label')} (lower is better)")
    budget, unit = _budget(args)
    key = "energy_mj" if unit == "mJ" else "latency_ms"
    print(f"Pareto front within {budget:g} {unit} ({args.metric}; {job.settings.get('latency_source')}):")
    accuracy = any(row.get("verified_accuracy") is not None for row in summary["front"])
    print(f"  {'shape':<18} {'pred metric':>11} {'real metric':>11}{' real acc' if accuracy else ''} "
          f"{'pred ' + unit:>8} {'real ' + unit:>8}")
    for row in summary["front"]:
        real = f"{row['verified_metric']:.4g}" if row["verified_metric"] is not None else "-"
        acc = "" if not accuracy else (f" {row['verified_accuracy']:>8.3f}" if row.get("verified_accuracy") is not None
                                       else f" {'-':>8}")
        real_ms = f"{row['verified_' + key]:.1f}" if row["verified_" + key] is not None else "-"
        mark = "  <- chosen" if row["shape"] == summary["best"] else "" if row["usable"] else "  unusable"
        print(f"  {row['shape']:<18} {row['predicted_metric']:>11.4g} {real:>11}{acc} "
              f"{row['predicted_' + key]:>8.1f} {real_ms:>8}{mark}")
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
