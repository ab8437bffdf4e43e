"""amoeba-eval: lm-evaluation-harness tasks and held-out perplexity on one subnet, or on an exported checkpoint."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from amoeba_search.cli._common import (ArgumentParser, add_artefact_arguments, add_compute_arguments, artefacts_of, compute_line,
                                       compute_of, emit_json, file_path, load_options, positive_int, run)
from amoeba_search.errors import InputError

PROG = "amoeba-eval"
PPL_HELP = "ppl:<source>: perplexity on wiki, austen, lee, or a .txt/.jsonl file"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Evaluate a subnet (cut in place from the supernet, nothing exported) or an exported checkpoint "
                    "on lm-eval tasks: the local multiple-choice tasks (amoeba_*, offline), ppl:SOURCE (perplexity "
                    "on held-out text), or any lm-eval task name where its data set can be downloaded.",
        epilog="examples:\n"
               "  amoeba-eval --prepare-tasks\n"
               "  amoeba-eval --shape d22-f0.75-h0.667 "
               "--tasks amoeba_goal_inference,ppl:wiki --limit 200\n"
               "  amoeba-eval --model out/d24-f0.75-h0.667 --tasks amoeba_goal_inference --json --out eval.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m",
                        help="alias, local HF directory (e.g. an amoeba-export output), .gguf file or HF id")
    parser.add_argument("--shape", help="subnet shape, e.g. d24-f0.75-h0.667 (default: the full model)")
    add_artefact_arguments(parser, layers=True)
    parser.add_argument("--tasks", help="comma-separated: amoeba_<task>[_calib], a .jsonl task file, ppl:<source>, "
                                        "or lm-eval task names (those need their data set from the hub)")
    parser.add_argument("--limit", type=int, help="at most N items per task (the first N of each)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--ppl-blocks", type=positive_int, default=32, help="blocks scored by ppl: tasks (default: %(default)s)")
    parser.add_argument("--ppl-seq-len", type=positive_int, default=512, help="tokens per ppl: block (default: %(default)s)")
    parser.add_argument("--task-dir", type=Path, help="folder of local task files (default: the prepared ones)")
    parser.add_argument("--json", action="store_true", help="print the full result record as JSON")
    parser.add_argument("--out", type=file_path, help="write the result record as JSON to this file")
    parser.add_argument("--merge-into", type=file_path, metavar="FILE",
                        help="merge the result into the entry of this shape in a JSON list / Pareto front file")
    parser.add_argument("--prepare-tasks", action="store_true",
                        help="make the local tasks from the bigbench sdist (pip download, ~360 MB, once) and exit")
    parser.add_argument("--bigbench-sdist", type=Path,
                        help="a bigbench-1.0.0.tar.gz (or its unpacked tree) you already have")
    parser.add_argument("--list-tasks", action="store_true", help="list the local tasks and exit")
    add_compute_arguments(parser, device_map=True)
    return parser


def _prepare(args) -> None:
    from amoeba_search.evaluation.bigbench import prepare_tasks

    manifest = prepare_tasks(sdist=args.bigbench_sdist, directory=args.task_dir)
    if args.json:
        emit_json(manifest)
        return
    for name, entry in sorted(manifest.get("tasks", {}).items()):
        parts = entry["parts"]
        print(f"{parts['eval']['task']:32s} {parts['eval']['items']:>5} items   "
              f"{parts['calib']['task']:38s} {parts['calib']['items']:>5} items   chance "
              f"{parts['eval']['random_baseline']:.3f}")


def _list(args) -> None:
    from amoeba_search.evaluation.bigbench import TASKS, load_manifest
    from amoeba_search.evaluation.local_tasks import local_task_names, random_baseline, task_items

    names = local_task_names(args.task_dir)
    described = {e["parts"][p]["task"]: e["description"] for e in load_manifest(args.task_dir)["tasks"].values()
                 for p in ("eval", "calib")}
    rows = []
    for name in names:
        items = task_items(name, directory=args.task_dir)
        rows.append({"task": name, "items": len(items), "random_baseline": random_baseline(items),
                     "description": described.get(name, "")})
    missing = [f"amoeba_{n}" for n in TASKS if f"amoeba_{n}" not in names]
    if args.json:
        emit_json({"local": rows, "not_prepared": missing, "ppl": PPL_HELP})
        return
    for row in rows:
        print(f"{row['task']:38s} {row['items']:>5} items  chance {row['random_baseline']:.3f}  {row['description']}")
    if missing:
        print(f"not prepared (run {PROG} --prepare-tasks): {', '.join(missing)}")
    print(f"also: {PPL_HELP}; and lm-eval task names where the hub is reachable")


def format_table(record: dict) -> str:
    """One line per task: main metric, random-choice baseline, items."""
    lines = [f"{record.get('model')}  shape {record.get('shape')}  layers {record.get('kept_layers')}",
             f"{'task':38s} {'metric':>8s} {'value':>9s} {'chance':>7s} {'n':>6s}  (n: items, or tokens for ppl)"]
    for name, task in record["tasks"].items():
        metrics = task.get("metrics", {})
        metric = "ppl" if "ppl" in metrics else "acc" if "acc" in metrics else next(iter(metrics), "-")
        value = metrics.get(metric)
        baseline = task.get("random_baseline")
        chance = baseline.get(metric) if isinstance(baseline, dict) else None
        n = task.get("n") if "n" in task else metrics.get("tokens")
        lines.append(f"{name:38s} {metric:>8s} {'-' if value is None else f'{value:.4f}':>9s} "
                     f"{'-' if chance is None else f'{chance:.3f}':>7s} {n if n is not None else '':>6}")
    lines.append(f"wall time {record['wall_s']:.1f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def body():
        if args.prepare_tasks:
            return _prepare(args)
        if args.list_tasks:
            return _list(args)
        if not args.tasks:
            raise InputError("--tasks is required (e.g. --tasks amoeba_goal_inference,ppl:wiki); "
                             f"see {PROG} --list-tasks")
        from amoeba_search.evaluation.harness import evaluate_tasks, resolve_tasks
        from amoeba_search.evaluation.records import merge_eval_file

        if args.limit is not None and args.limit < 1:
            raise InputError(f"--limit must be a positive number of items, got {args.limit}")
        resolve_tasks(args.tasks, task_dir=args.task_dir)  # fail on a bad name before loading any weights
        layers = args.layers or None  # a list of indices (layer_list)
        compute = compute_of(args)
        used = artefacts_of(args)
        model, tokenizer, shape = _open(args, used, layers, load_options(args, compute))
        record = evaluate_tasks(model, tokenizer, args.tasks, limit=args.limit, shape=shape, layers=layers,
                                batch_size=args.batch_size, task_dir=args.task_dir, ppl_seq_len=args.ppl_seq_len,
                                ppl_blocks=args.ppl_blocks)
        record["model"] = args.model
        record["compute"] = compute.to_dict()
        record.update(used.to_dict())
        if args.out:
            from amoeba_search.paths import atomic_write_text

            atomic_write_text(args.out, json.dumps(record, indent=2, default=str) + "\n")
        if args.merge_into:
            merge_eval_file(args.merge_into, record)
        if args.json:
            emit_json(record)
        else:
            print(format_table(record))
            print(compute_line(compute, args))
            print(f"used {used.describe()}")

    return run(PROG, body)


def _open(args, used, layers, options):
    """An exported checkpoint as it is; anything else as a supernet cut to --shape."""
    from amoeba_search.models.export import PROVENANCE_FILE
    from amoeba_search.shapes import SubnetShape

    shape = SubnetShape.parse(args.shape) if args.shape else None
    exported = Path(args.model).expanduser() / PROVENANCE_FILE
    if exported.is_file() and shape is None and used.strategy is None and layers is None and used.adapter is None:
        from amoeba_search.models.loading import load_model

        model, tokenizer = load_model(args.model, **options)
        return model, tokenizer, None
    from amoeba_search.session import open_supernet

    loaded = open_supernet(args.model, used.strategy, adapter=used.adapter, **options)
    shape = shape or loaded.supernet.full_shape()
    loaded.space(min_depth=1).validate(shape)
    if layers is None:
        layers = loaded.layers_for(shape)
    loaded.supernet.set_active(shape, layers)
    return loaded, None, shape


if __name__ == "__main__":
    raise SystemExit(main())
