"""Claim: a latency table measured on a small design of shapes predicts every other shape of the default
model to within ±10% (nn-Meter's bar: 99% of shapes), at a fraction of the cost of the full grid.

For each flow that runs here (``--flows torch,llamacpp,...``; unavailable ones are skipped with their
reason) this script
1. completes the table ``profiles/<model>/<device>/<flow>.csv`` (``amoeba-profile`` with ``--resume``),
2. measures ``--n-holdout`` (>= 30) random shapes that are not in the table, in a separate file,
3. scores the table's predictor on them (MAPE, share within ±10% and ±5%) for decode, prefill and e2e,
4. reports the measurements the table needed vs the full grid, total profiling time, the measured speed-up
   of the smallest shape over the full model, and the full model's decode latency vs this machine's
   memory-bandwidth limit (weight bytes per token / measured read bandwidth),
and merges the flow's results into ``benchmarks/results/latency.json`` (flows can be run separately).

    python benchmarks/latency_predictor.py --study absolute --flows torch

``--study drift-cancelled`` (the default) is the same claim with drift-cancelled measurement, on THIS machine,
for each flow that runs here:
1. measures a new interleaved table (every shape timed between rounds of a reference shape, the full model by
   default, as ``amoeba-profile`` does) of the design shapes into
   ``benchmarks/results/latency-<machine>-<flow>[-settings]-interleaved.csv`` and ``--n-holdout`` random held-out
   shapes, also interleaved, into ``...-interleaved-holdout.csv`` (both resumed when a run is interrupted);
2. scores on the held-out shapes: the predicted ratio to the reference against the measured ratio (target 99%
   within ±10%), the predicted absolute latency (predicted ratio x the reference measured once more at the end)
   against the measured ms (target 97%), and the table's plain absolute predictor; the noise floor (the
   reference's spread across loads) and the error relative to it; the measurements vs the full grid and time;
   with ``--passes P`` > 1, the ratio scores again from the first 1 .. P passes of both tables;
3. transfers the committed table of the same flow (another machine's) to this machine with 1, 3 and 5 anchors
   (taken from the table measured here) and scores it on the held-out shapes (target 95% within ±10%); from
   one flow to another for flows measured here; and, for a flow measured drift-cancelled on other machines too
   (their sections of latency.json), each machine's table to each other's;
4. merges all of it, with the CPU behind every table and score, under ``"drift_cancelled"."machines"."<machine>"``
   in ``benchmarks/results/latency.json`` (the rest of the file, other machines' sections included, is kept).

    python benchmarks/latency_predictor.py --flows torch,llamacpp
    nice -n 19 python benchmarks/latency_predictor.py --smoke --out-dir /tmp/latency-smoke   # a tiny model, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flows", default="torch", help="comma-separated flows (default torch)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default=None)
    p.add_argument("--n-holdout", type=int, default=30, help="random held-out shapes to verify (default 30)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--context-len", type=int, default=160)
    p.add_argument("--profiles", type=Path, default=ROOT / "profiles")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "latency.json")
    p.add_argument("--seed", type=int, default=1234, help="seed of the held-out shapes")
    p.add_argument("--max-other-load", type=float, default=None, metavar="CORES",
                   help="re-measure while other processes keep more than CORES cores busy (see amoeba-profile)")
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--passes", type=int, default=1, help="rows per shape, in separate passes")
    p.add_argument("--max-rounds", type=int, default=3)
    p.add_argument("--table", type=Path, default=None,
                   help="the table to complete and score (default profiles/<model>/<device>/<flow>[-settings].csv)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--study", choices=("drift-cancelled", "absolute", "cross-flow-committed", "transfer"),
                   default="drift-cancelled",
                   help="drift-cancelled (default): new interleaved tables of this machine, ratio and absolute "
                        "accuracy, transfer; absolute: complete and score the committed table (the first study); "
                        "cross-flow-committed: no measuring, one committed flow's table transferred to another "
                        "committed flow of the same machine with K anchors, scored on that flow's committed "
                        "held-out shapes; transfer: no measuring, the transfers of latency.json's drift-cancelled "
                        "flows scored again from their tables")
    p.add_argument("--reference", default="full", help="drift-cancelled: the reference shape (default full)")
    p.add_argument("--reference-reload", type=int, default=8, help="drift-cancelled: shapes per load of the reference")
    p.add_argument("--table-holdout", type=int, default=12,
                   help="drift-cancelled: random held-out shapes inside the table, as amoeba-profile --holdout")
    p.add_argument("--anchors", default="1,3,5", help="drift-cancelled: anchor counts K to transfer with")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="drift-cancelled: folder for the tables and latency.json (default benchmarks/results)")
    p.add_argument("--smoke", action="store_true",
                   help="drift-cancelled on a tiny random model (SmolLM2's shape space, 36 hidden), 2 held-out "
                        "shapes (and 2 in the table), 1 repeat, 1 thread, short prompts; needs --out-dir outside "
                        "benchmarks/results")
    return p.parse_args(argv)


def measure(request, flow, label):
    from tqdm import tqdm

    from amoeba_search.profiling.profiler import run_profile

    bar = {}

    def on_start(pending, done):
        bar["b"] = tqdm(total=len(pending) + done, initial=done, unit="shape", desc=label, file=sys.stderr)

    def on_row(row):
        bar["b"].set_postfix_str(f"{row['shape']} {row['decode_ms_median']:.1f} ms/token")
        bar["b"].update(1)

    try:
        return run_profile(request, flow, on_start=on_start, on_row=on_row)
    finally:
        if "b" in bar:
            bar["b"].close()


def errors(predicted, measured):
    import numpy as np

    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    ape = np.abs(predicted - measured) / measured
    return {"n": int(len(ape)), "mape_pct": round(float(ape.mean() * 100), 2),
            "within_10pct": round(float((ape <= 0.10).mean()), 4), "within_5pct": round(float((ape <= 0.05).mean()), 4),
            "max_ape_pct": round(float(ape.max() * 100), 2), "median_ape_pct": round(float(np.median(ape) * 100), 2)}


def _median(series):
    series = series.dropna()
    return round(float(series.median()), 3) if len(series) else None


def _max(series):
    series = series.dropna()
    return round(float(series.max()), 3) if len(series) else None


def _flow_settings(name, args, spec, machine):
    """The flow, its measure settings and the table-name suffix amoeba-profile gives such a table; or
    (None, why, None) when the flow cannot run here."""
    from amoeba_search.profiling.flows import FlowUnavailable, get_flow
    from amoeba_search.profiling.flows.base import MeasureSettings

    try:
        flow = get_flow(name)
    except FlowUnavailable as exc:
        return None, str(exc), None
    reason = flow.unavailable_reason()
    if reason:
        return None, reason, None
    threads = (args.threads or machine.cpu_cores) if spec.backend == "cpu" else None
    settings = MeasureSettings(prompt_len=args.prompt_len, decode_tokens=args.context_len - args.prompt_len,
                               repeats=args.repeats, threads=threads)
    suffix = "" if (args.prompt_len, args.context_len) == (128, 160) else f"-p{args.prompt_len}-c{args.context_len}"
    if args.threads and threads != machine.cpu_cores:
        suffix += f"-t{threads}"
    return flow, settings, suffix


def run_flow(name, args, spec, machine, source):
    from amoeba_search.profiling import model_slug
    from amoeba_search.profiling.design import PlannedShape, random_holdout
    from amoeba_search.profiling.latency_model import METHODS
    from amoeba_search.profiling.lut import LatencyTable
    from amoeba_search.profiling.profiler import ProfileRequest
    from amoeba_search.profiling.roofline import weight_bytes_per_token
    from amoeba_search.profiling.table_schema import LatencyTableError
    from amoeba_search.shapes import SearchSpace, SubnetShape

    flow, settings, suffix = _flow_settings(name, args, spec, machine)
    if flow is None:
        return name, {"skipped": settings}
    table_path = args.table or args.profiles / model_slug(source.name) / spec.name / f"{name}{suffix}.csv"
    quiet = {"max_other_load": args.max_other_load, "max_attempts": args.max_attempts, "wait_idle_s": args.wait_idle,
             "passes": args.passes, "max_rounds": args.max_rounds}
    load_start = os.getloadavg()
    started = time.perf_counter()
    measure(ProfileRequest(device=spec, machine=machine, flow_name=name, source=source, out=table_path,
                           settings=settings, resume=True, **quiet), flow, f"{name} table")
    table = LatencyTable.load(table_path)
    space = SearchSpace.default(source.dims)
    in_table = {SubnetShape.parse(s) for s in table.rows["shape"]}
    shapes = random_holdout(space, args.n_holdout, exclude=in_table, seed=args.seed)
    holdout_path = args.results.parent / f"latency-{spec.name}-{name}{suffix}-holdout.csv"
    measure(ProfileRequest(device=spec, machine=machine, flow_name=name, source=source, out=holdout_path,
                           settings=settings, resume=True, plan=[PlannedShape(s, "holdout") for s in shapes],
                           **quiet),
            flow, f"{name} held-out")
    holdout = LatencyTable.load(holdout_path)
    rows = holdout.rows[holdout.rows["shape"].isin([str(s) for s in shapes])]
    wall = time.perf_counter() - started

    def score(table):
        """Predictor error on the held-out shapes, for the statistic the table fits (median or min); a shape
        measured in several passes (separate model loads) counts once, at the median of its passes."""
        pre, dec = f"prefill_ms_{table.stat}", f"decode_ms_{table.stat}"
        truths = rows.groupby("shape", sort=False)[[pre, dec]].median()
        accuracy = {}
        for metric, column in (("decode", dec), ("prefill", pre), ("e2e", None)):
            truth = (truths[pre] + table.decode_tokens * truths[dec]) if column is None else truths[column]
            chosen = table.chosen_method("decode" if metric == "e2e" else metric)
            per_method = {}
            for method in METHODS:
                try:
                    per_method[method] = errors([table.predict(s, metric=metric, method=method)
                                                 for s in truths.index], truth)
                except LatencyTableError as exc:
                    per_method[method] = {"error": str(exc)}
            accuracy[metric] = {"chosen_method": chosen, **per_method[chosen], "by_method": per_method}
        return accuracy

    accuracy = score(table)
    by_shape = rows.groupby("shape")["decode_ms_median"]
    between_loads = (by_shape.max() - by_shape.min()) / by_shape.median()  # passes are separate model loads
    accuracy_min = score(LatencyTable.load(table_path, stat="min"))

    def measured(shape, column):
        hit = table.rows[table.rows["shape"] == shape][column]
        return float(hit.median()) if len(hit) else None

    full, small = str(space.largest()), str(space.smallest())
    bandwidth = spec.memory_bandwidth_gbs
    weight_bytes = weight_bytes_per_token(source.config, None, "fp32" if name != "torch" else settings.dtype)
    bound_ms = weight_bytes / (bandwidth * 1e9) * 1e3 if bandwidth else None
    full_decode = measured(full, "decode_ms_median")
    table_eval = json.loads((table_path.with_name(table_path.stem + ".eval.json")).read_text())
    return name + suffix, {
        "table": str(table_path.relative_to(ROOT)) if table_path.is_relative_to(ROOT) else str(table_path),
        "holdout_table": str(holdout_path.relative_to(ROOT)) if holdout_path.is_relative_to(ROOT) else str(holdout_path),
        "settings": {"prompt_len": args.prompt_len, "context_len": args.context_len, "decode_tokens": table.decode_tokens,
                     "repeats": args.repeats, "threads": settings.threads, "dtype": settings.dtype},
        "measurements_in_table": len(table), "full_grid": len(space),
        "measured_fraction_of_grid": round(len(table) / len(space), 3),
        "profiling_time_s": round(float(table.rows["elapsed_s"].fillna(0).sum()), 1),
        "holdout_measure_time_s": round(float(rows["elapsed_s"].fillna(0).sum()), 1),
        "wall_time_this_run_s": round(wall, 1),
        "accuracy_on_random_holdout": accuracy,
        "accuracy_on_random_holdout_fastest_repeat": accuracy_min,
        "holdout_passes_per_shape": int(by_shape.size().min()),
        "holdout_decode_range_between_loads_pct": (round(float(between_loads.median() * 100), 2)
                                                   if by_shape.size().min() > 1 else None),
        "accuracy_on_table_holdout_rows": {m: {"chosen": table_eval["chosen"].get(m),
                                               **table_eval["metrics"][m].get(table_eval["chosen"].get(m), {})}
                                           for m in table_eval.get("chosen", {})},
        "speedup_smallest_vs_full": {
            "smallest": small, "full": full,
            "decode_ms": {"full": full_decode, "smallest": measured(small, "decode_ms_median")},
            "prefill_ms": {"full": measured(full, "prefill_ms_median"), "smallest": measured(small, "prefill_ms_median")},
            "decode_speedup": round(full_decode / measured(small, "decode_ms_median"), 3),
            "prefill_speedup": round(measured(full, "prefill_ms_median") / measured(small, "prefill_ms_median"), 3)},
        "full_model_vs_bandwidth_limit": {
            "weight_bytes_per_token": weight_bytes, "read_bandwidth_gbs": bandwidth,
            "bandwidth_source": spec.sources[-1] if spec.sources else None,
            "bound_decode_ms": round(bound_ms, 3) if bound_ms else None, "measured_decode_ms": full_decode,
            "measured_over_bound": round(full_decode / bound_ms, 3) if bound_ms else None},
        "loadavg_at_start": [round(x, 2) for x in load_start], "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "loadavg_during_rows": {"table_median": round(float(table.rows["loadavg_1min"].median()), 2),
                                "holdout_median": round(float(rows["loadavg_1min"].median()), 2)},
        "other_processes_busy_cores": {  # CPU contention measured during each row (this run excluded)
            "table_median": _median(table.rows["other_load"]), "table_max": _max(table.rows["other_load"]),
            "holdout_median": _median(rows["other_load"]), "holdout_max": _max(rows["other_load"])},
        "contention_policy": quiet,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


# -- drift-cancelled study ------------------------------------------------------------------------------------

TARGETS = {"ratio_within_10pct": 0.99, "absolute_within_10pct": 0.97, "transfer_within_10pct": 0.95}
COMMITTED_MODEL = "smollm2-135m"  # the model of the committed tables, which the smoke test transfers from too
RATIO_COLUMNS = ("reference_shape", "decode_ratio", "prefill_ratio", "reference_decode_ms", "reference_prefill_ms")


def machine_slug(machine) -> str:
    """``Intel(R) Xeon(R) Processor`` with 2 cores -> ``intel-xeon-2c`` (names this machine's files)."""
    from amoeba_search.profiling.machine import short_cpu_name

    text = f"{short_cpu_name(machine.cpu_model)} {machine.cpu_cores}c"
    return "-".join("".join(c if c.isalnum() else " " for c in text).lower().split())


def smoke_model(folder: Path) -> str:
    """A tiny random model with SmolLM2-135M's shape space (30 layers, 9 heads in 3 KV groups, FFN ratios in
    eighths), so that the committed tables' shapes are its shapes too; returns its config.json."""
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=259, hidden_size=36, intermediate_size=64, num_hidden_layers=30, num_attention_heads=9,
                num_key_value_heads=3, head_dim=4, max_position_embeddings=64, tie_word_embeddings=True,
                bos_token_id=1, eos_token_id=2, pad_token_id=0).save_pretrained(folder)
    return str(folder / "config.json")


def _rel(path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _abs(path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else ROOT / path


def truths(holdout, shapes):
    """Per held-out shape (index: the shape string), the median over its rows of the measured latencies (ms)
    and ratios to the reference; e2e = prefill + decode_tokens x decode."""
    rows = holdout.rows[holdout.rows["shape"].isin([str(s) for s in shapes])]
    truth = rows.groupby("shape", sort=False)[["decode_ms_median", "prefill_ms_median", "decode_ratio",
                                               "prefill_ratio"]].median()
    truth["e2e_ms"] = truth["prefill_ms_median"] + int(holdout.decode_tokens) * truth["decode_ms_median"]
    return truth


def ratio_accuracy(table, truth) -> dict:
    """Predicted ratio to the reference (``predict_relative``) against the measured ratio, per metric."""
    from amoeba_search.profiling.latency_model import METHODS
    from amoeba_search.profiling.table_schema import LatencyTableError

    out = {}
    for metric in ("decode", "prefill"):
        chosen, by_method = table.chosen_method(metric), {}
        for method in METHODS:
            try:
                by_method[method] = errors([table.predict_relative(s, metric=metric, method=method)
                                            for s in truth.index], truth[f"{metric}_ratio"])
            except LatencyTableError as exc:
                by_method[method] = {"error": str(exc)}
        out[metric] = {"chosen_method": chosen, **by_method[chosen], "by_method": by_method}
    return out


def first_passes(table, k: int):
    """The table restricted to the first ``k`` rows of every (shape, role): what ``--passes k`` would have
    measured (passes run one after another, so a shape's i-th row belongs to pass i)."""
    from amoeba_search.profiling.lut import LatencyTable

    return LatencyTable(table.rows[table.pass_index() < k], path=table.path, stat=table.stat)


def accuracy_by_passes(table, holdout, shapes) -> dict:
    """Ratio accuracy on the held-out shapes when table and held-out truth use only their first k passes,
    k = 1 .. the passes measured: how much of the remaining error is measurement noise that more passes
    average away."""
    passes = int(min(table.rows.groupby(["shape", "role"]).size().min(),
                     holdout.rows.groupby(["shape", "role"]).size().min()))
    out = {}
    for k in range(1, passes + 1):
        sub_table, sub_holdout = first_passes(table, k), first_passes(holdout, k)
        spread = sub_holdout.ratio_spread_across_passes()
        out[f"passes_{k}"] = {"ratio": ratio_accuracy(sub_table, truths(sub_holdout, shapes)),
                              "holdout_decode_ratio_spread_across_passes": None if spread is None else round(spread, 4)}
        for metric in ("decode", "prefill"):
            out[f"passes_{k}"]["ratio"][metric].pop("by_method")
    return out


def absolute_accuracy(table, truth, reference_ms: dict | None = None) -> dict:
    """Predicted latency (ms) against the measured one for decode, prefill and e2e; with ``reference_ms``
    ({"decode": ms, "prefill": ms} of the reference measured now) the prediction is ratio x reference."""
    measured = {"decode": truth["decode_ms_median"], "prefill": truth["prefill_ms_median"], "e2e": truth["e2e_ms"]}
    out = {}
    for metric, values in measured.items():
        ref = None if reference_ms is None else (reference_ms if metric == "e2e" else reference_ms[metric])
        out[metric] = errors([table.predict(s, metric=metric, reference_ms=ref) for s in truth.index], values)
    return out


def measure_reference_now(common: dict, flow, shape) -> dict:
    """The reference shape measured once more (in ``passes`` fresh loads, no interleaving; the median of the
    loads), as a user would before trusting ratio x reference; the rows go to a temporary table."""
    from amoeba_search.profiling.design import PlannedShape
    from amoeba_search.profiling.lut import LatencyTable
    from amoeba_search.profiling.profiler import ProfileRequest

    with tempfile.TemporaryDirectory(prefix="latency-reference-") as tmp:
        out = Path(tmp) / "reference.csv"
        measure(ProfileRequest(**{**common, "resume": False}, out=out, plan=[PlannedShape(shape, "extra")],
                               reference=None), flow, "reference now")
        rows = LatencyTable.load(out).rows
    return {"shape": str(shape), "loads": len(rows), "decode": float(rows["decode_ms_median"].median()),
            "prefill": float(rows["prefill_ms_median"].median()),
            "decode_per_load": [round(float(v), 3) for v in rows["decode_ms_median"]],
            "elapsed_s": round(float(rows["elapsed_s"].sum()), 1), "timestamp": rows["timestamp"].iloc[-1],
            "other_load": _max(rows["other_load"])}


def pd_isna(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def _plain(value):
    if pd_isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def transfer_accuracy(source, here, truth, ks, provenance: dict, reference=None, reference_now_ms=None) -> dict:
    """For each K: this machine's table built from ``source`` (another machine's or flow's table) and K anchor
    shapes (chosen by the library among the shapes of ``here``, the table measured here, which stand in for
    measuring them; their latencies taken from it), with the library's correction; scored on the held-out ``truth`` (measured ms), and, given
    the ``reference`` shape of drift-cancelled truths, on their decode ratio to it (alone, and times
    ``reference_now_ms``)."""
    from amoeba_search.profiling.lut import LatencyTable
    from amoeba_search.profiling.table_schema import COLUMNS, append_row
    from amoeba_search.profiling.transfer import (TRANSFER_METRICS, choose_anchors, source_costs, source_latencies,
                                                  transfer_rows)

    measured_here = {m: source_latencies(here, m) for m in TRANSFER_METRICS}
    out = {}
    if reference is not None:  # anchors as drift-cancelled: each one's ratio x the table's median reference time
        rows = here.rows.dropna(subset=["decode_ratio", "prefill_ratio"])
        for m in TRANSFER_METRICS:
            ref_ms = float(rows[f"reference_{m}_ms"].median())
            ratio = rows.groupby("shape")[f"{m}_ratio"].median()
            measured_here[m] = {s: float(ratio[str(s)]) * ref_ms for s in measured_here[m] if str(s) in ratio.index}
        out["anchor_ms"] = "each anchor's measured ratio to the reference x the table's median reference time"
    candidates = source_costs(source, "decode", shapes=list(measured_here["decode"]))
    for k in ks:
        anchors = choose_anchors(candidates, k)
        ms = {s: {m: measured_here[m][s] for m in TRANSFER_METRICS} for s in anchors}
        rows, record = transfer_rows(source, ms, key=here.key, provenance=provenance)
        with tempfile.TemporaryDirectory(prefix="latency-transfer-") as tmp:
            path = Path(tmp) / "transferred.csv"
            for s in anchors:  # the anchors' rows as measured here, then the corrected source rows
                row = here.rows[here.rows["shape"] == str(s)].iloc[0]
                append_row(path, {**{c: _plain(row[c]) for c in COLUMNS}, "role": "extra",
                                  "decode_ms_median": ms[s]["decode"], "prefill_ms_median": ms[s]["prefill"],
                                  **dict.fromkeys(RATIO_COLUMNS)})
            for row in rows:
                append_row(path, row)
            transferred = LatencyTable.load(path)
            scores = absolute_accuracy(transferred, truth)
            if reference is not None and truth["decode_ratio"].notna().all():
                # drift-cancelled use of the transferred table: its ratio to the reference, against the measured
                # ratio, and that ratio x the reference timed now, against the measured ms
                ref = transferred.predict(reference, metric="decode")
                ratios = [transferred.predict(s, metric="decode") / ref for s in truth.index]
                scores["decode_ratio"] = errors(ratios, truth["decode_ratio"])
                if reference_now_ms:
                    scores["decode_ratio_x_reference_now"] = errors([r * reference_now_ms for r in ratios],
                                                                    truth["decode_ms_median"])
        out[f"k{k}"] = {"anchors": [str(s) for s in anchors], "corrections": record["corrections"], **scores}
    return out


def _transfer_met(transfer: dict, metric: str = "decode") -> bool:
    return any(v[metric]["within_10pct"] >= TARGETS["transfer_within_10pct"] for k, v in transfer.items()
               if isinstance(v, dict) and metric in v and k.startswith("k") and int(k[1:]) <= 5)


def drift_flow(name, args, spec, machine, source, csv_dir: Path, ks):
    from amoeba_search.profiling import model_slug
    from amoeba_search.profiling.design import PlannedShape, random_holdout
    from amoeba_search.profiling.lut import LatencyTable
    from amoeba_search.profiling.profiler import ProfileRequest
    from amoeba_search.profiling.table_schema import LatencyTableError
    from amoeba_search.shapes import SearchSpace, SubnetShape

    flow, settings, suffix = _flow_settings(name, args, spec, machine)
    if flow is None:
        return name, {"skipped": settings}
    slug = machine_slug(machine)
    stem = f"latency-{slug}-{name}{suffix}-interleaved"
    table_path, holdout_path = csv_dir / f"{stem}.csv", csv_dir / f"{stem}-holdout.csv"
    space = SearchSpace.default(source.dims)
    reference = space.largest() if args.reference == "full" else SubnetShape.parse(args.reference)
    common = dict(device=spec, machine=machine, flow_name=name, source=source, settings=settings, resume=True,
                  max_other_load=args.max_other_load, max_attempts=args.max_attempts, wait_idle_s=args.wait_idle,
                  passes=args.passes, max_rounds=args.max_rounds, reference_reload=args.reference_reload)
    started = time.perf_counter()
    # 1. the interleaved table (the design shapes and amoeba-profile's own held-out rows) and the held-out shapes
    measure(ProfileRequest(**common, out=table_path, holdout=args.table_holdout, reference=reference), flow,
            f"{name} table")
    table = LatencyTable.load(table_path)
    shapes = random_holdout(space, args.n_holdout, exclude={SubnetShape.parse(s) for s in table.rows["shape"]},
                            seed=args.seed)
    measure(ProfileRequest(**common, out=holdout_path, plan=[PlannedShape(s, "holdout") for s in shapes],
                           reference=reference), flow, f"{name} held-out")
    holdout = LatencyTable.load(holdout_path)
    for t in (table, holdout):
        if not t.has_ratios:
            raise LatencyTableError(f"{t.path} has no ratio columns (begun without a reference?); move it away")
    fresh = measure_reference_now(common, flow, reference)
    wall = time.perf_counter() - started
    truth = truths(holdout, shapes)

    # 2. accuracy on the held-out shapes: ratios, ratio x the reference now, and the plain absolute predictor
    ratio = ratio_accuracy(table, truth)
    absolute = absolute_accuracy(table, truth, {"decode": fresh["decode"], "prefill": fresh["prefill"]})
    plain = absolute_accuracy(table, truth)
    floor, holdout_floor = table.noise_floor(), holdout.noise_floor()
    floor_decode = floor["reference_decode_spread_across_loads"] if floor else None

    def over_floor(mape_pct):
        return round(mape_pct / 100 / floor_decode, 3) if floor_decode else None

    ref_then = {"table_median_ms": round(float(table.rows["reference_decode_ms"].median()), 3),
                "holdout_median_ms": round(float(holdout.rows["reference_decode_ms"].median()), 3),
                "now_ms": round(fresh["decode"], 3)}
    ref_then["now_vs_table_pct"] = round((fresh["decode"] / ref_then["table_median_ms"] - 1) * 100, 2)
    ref_then["now_vs_holdout_pct"] = round((fresh["decode"] / ref_then["holdout_median_ms"] - 1) * 100, 2)

    # 3. transfer from the committed table of this flow (another machine's), with K anchors from the table here
    committed_path = (args.profiles / COMMITTED_MODEL / spec.name / f"{name}.csv" if args.smoke
                      else args.profiles / model_slug(source.name) / spec.name / f"{name}{suffix}.csv")
    # the smoke model shares only the shape space with the committed tables' model
    transfer = committed_transfer(committed_path, table, truth, ks, reference, fresh["decode"],
                                  fingerprint=None if args.smoke else source.fingerprint())
    targets = {"ratio_decode": ratio["decode"]["within_10pct"] >= TARGETS["ratio_within_10pct"],
               "ratio_prefill": ratio["prefill"]["within_10pct"] >= TARGETS["ratio_within_10pct"],
               **{f"absolute_{m}": absolute[m]["within_10pct"] >= TARGETS["absolute_within_10pct"]
                  for m in ("decode", "prefill", "e2e")},
               **transfer_targets(transfer)}
    table_s = float(table.rows["elapsed_s"].fillna(0).sum())
    holdout_s = float(holdout.rows[holdout.rows["shape"].isin(truth.index)]["elapsed_s"].fillna(0).sum())
    return name + suffix, {
        "machine": {"this_run": machine.summary(), "slug": slug, "table": table.machine, "holdout_table": holdout.machine,
                    "transfer_source": transfer.get("source_machine")},
        "table": _rel(table_path), "holdout_table": _rel(holdout_path), "holdout_shapes": list(truth.index),
        "reference_shape": str(reference),
        "settings": {"prompt_len": args.prompt_len, "context_len": args.context_len,
                     "decode_tokens": int(table.decode_tokens), "repeats": args.repeats, "threads": settings.threads,
                     "dtype": settings.dtype, "max_rounds": args.max_rounds, "passes": args.passes,
                     "reference_reload": args.reference_reload, "table_holdout": args.table_holdout,
                     "n_holdout": args.n_holdout, "seed": args.seed, "anchors": ks, "smoke": args.smoke,
                     "contention_policy": {"max_other_load": args.max_other_load, "max_attempts": args.max_attempts,
                                           "wait_idle_s": args.wait_idle}},
        "ratio_accuracy_on_holdout": ratio,
        "ratio_accuracy_by_passes": accuracy_by_passes(table, holdout, truth.index) if args.passes > 1 else None,
        "absolute_accuracy_on_holdout_ratio_x_reference_now": absolute,
        "absolute_accuracy_on_holdout_table_ms": plain,
        "reference_now": fresh, "reference_decode_drift": ref_then,
        "noise_floor": {"table": floor, "holdout": holdout_floor},
        "error_over_noise_floor": {"noise_floor_decode_pct": round(floor_decode * 100, 2) if floor_decode else None,
                                   "ratio_decode": over_floor(ratio["decode"]["mape_pct"]),
                                   "absolute_decode": over_floor(absolute["decode"]["mape_pct"])},
        "transfer_from_committed": transfer,
        "cost": {"table_rows": len(table), "table_shapes": int(table.rows["shape"].nunique()),
                 "design_rows": int((table.rows["role"] == "design").sum()),
                 "table_holdout_rows": int((table.rows["role"] == "holdout").sum()), "full_grid": len(space),
                 "measured_fraction_of_grid": round(table.rows["shape"].nunique() / len(space), 3),
                 "table_profiling_s": round(table_s, 1), "holdout_profiling_s": round(holdout_s, 1),
                 "reference_now_s": fresh["elapsed_s"], "total_profiling_s": round(table_s + holdout_s
                                                                                   + fresh["elapsed_s"], 1),
                 "wall_time_this_run_s": round(wall, 1)},
        "other_processes_busy_cores": {"table_median": _median(table.rows["other_load"]),
                                       "table_max": _max(table.rows["other_load"]),
                                       "holdout_median": _median(holdout.rows["other_load"]),
                                       "holdout_max": _max(holdout.rows["other_load"])},
        "targets_met": targets, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def committed_transfer(committed_path: Path, table, truth, ks, reference, reference_now_ms, *,
                       fingerprint: str | None) -> dict:
    """``transfer_accuracy`` from the committed table at ``committed_path`` (another machine's) to ``table``, or
    why it was skipped."""
    from amoeba_search.profiling.lut import LatencyTable
    from amoeba_search.profiling.table_schema import LatencyTableError

    transfer = {"source_table": _rel(committed_path)}
    try:
        committed = LatencyTable.load(committed_path)
        if fingerprint is not None:
            committed.check_model(fingerprint)
        transfer.update(source_machine=committed.machine, target_machine=table.machine,
                        **transfer_accuracy(committed, table, truth, ks,
                                            {"table": _rel(committed_path), "machine": committed.machine},
                                            reference=reference, reference_now_ms=reference_now_ms))
    except LatencyTableError as exc:
        transfer["skipped"] = str(exc)
    return transfer


def transfer_targets(transfer: dict) -> dict:
    if "skipped" in transfer:
        return {}
    return {f"transfer_{m}_k_le_5": _transfer_met(transfer, m)
            for m in ("decode", "e2e", "decode_ratio", "decode_ratio_x_reference_now")}


def rescore_transfer(args) -> int:
    """No measuring: score the transfers again from the tables ``latency.json``'s drift-cancelled flows name (each
    flow's own transfer from its committed table, at the reference time it measured, and the cross-flow pairs),
    for a change in the transfer method."""
    from amoeba_search.paths import atomic_write_text
    from amoeba_search.profiling.lut import LatencyTable
    from amoeba_search.profiling.table_schema import LatencyTableError
    from amoeba_search.shapes import SubnetShape

    ks = sorted({int(k) for k in args.anchors.split(",") if k.strip()})
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    machines = results.get("drift_cancelled", {}).get("machines", {})
    if not any(m.get("flows") for m in machines.values()):
        print(f"{_rel(args.results)} has no drift-cancelled flows to score again; run the drift-cancelled study "
              f"first", file=sys.stderr)
        return 2
    for key, result in ((k, r) for m in machines.values() for k, r in m.get("flows", {}).items()):
        if "skipped" in result:
            continue
        try:
            table, holdout = LatencyTable.load(_abs(result["table"])), LatencyTable.load(_abs(result["holdout_table"]))
        except (LatencyTableError, OSError) as exc:
            print(f"{key}: not scored again, its results kept: {exc}", file=sys.stderr)
            continue
        truth = truths(holdout, result["holdout_shapes"])
        transfer = committed_transfer(_abs(result["transfer_from_committed"]["source_table"]), table, truth, ks,
                                      SubnetShape.parse(result["reference_shape"]), result["reference_now"]["decode"],
                                      fingerprint=None if result["settings"].get("smoke")
                                      else table.rows["model_fingerprint"].iloc[0])
        result["transfer_from_committed"] = transfer
        result["targets_met"].update(transfer_targets(transfer))
        for k in ks:
            t = transfer.get(f"k{k}", {})
            if "decode_ratio" in t:
                print(f"{key}: transfer from {transfer['source_machine']} with K={k} ({', '.join(t['anchors'])}; "
                      f"decode {t['corrections']['decode']['kind']}): decode ratio {_pct(t['decode_ratio'])}, "
                      f"decode ms {_pct(t['decode'])}")
    for slug, here in machines.items():
        here["cross_flow_transfer"] = cross_flow(here.get("flows", {}), ks)
        for pair, t in here["cross_flow_transfer"].items():
            print(f"{slug}: {_pair_line(pair, t)}")
        here["transfer_rescored"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    for line in other_machine_transfers(machines, ks):
        print(line)
    atomic_write_text(args.results, json.dumps(results, indent=2, default=str) + "\n")
    print(f"results: {args.results} (key drift_cancelled)")
    return 0


def comparable(a: dict, b: dict) -> bool:
    """Whether two flows' results (as ``drift_flow`` writes them) were measured at settings that let one's table
    be transferred to the other's."""
    return all(a["settings"].get(k) == b["settings"].get(k) for k in ("prompt_len", "context_len", "threads", "smoke"))


def transfer_between(src: dict, dst: dict, ks) -> tuple[dict, object, object]:
    """``transfer_accuracy`` from the table of result ``src`` to that of result ``dst`` (a flow's result in the
    form ``drift_flow`` writes), scored on ``dst``'s held-out shapes (and, when ``dst`` is drift-cancelled, on
    their ratios); returns it with ``dst``'s table and held-out truths."""
    from amoeba_search.profiling.lut import LatencyTable
    from amoeba_search.shapes import SubnetShape

    source, here = LatencyTable.load(_abs(src["table"])), LatencyTable.load(_abs(dst["table"]))
    truth = truths(LatencyTable.load(_abs(dst["holdout_table"])), dst["holdout_shapes"])
    drift = {}
    if "reference_shape" in dst:
        drift = {"reference": SubnetShape.parse(dst["reference_shape"]), "reference_now_ms": dst["reference_now"]["decode"]}
    scores = {"source_table": src["table"], "source_machine": source.machine, "target_machine": here.machine,
              **transfer_accuracy(source, here, truth, ks, {"table": src["table"], "machine": source.machine}, **drift)}
    return scores, here, truth


def cross_flow(flows: dict, ks) -> dict:
    """Transfer from one flow's table measured here to another's (e.g. torch -> llamacpp), for every pair of
    flows measured on this same kind of machine with the same prompt and context lengths."""
    from amoeba_search.profiling.table_schema import LatencyTableError

    done = {n: r for n, r in flows.items() if "skipped" not in r}
    out = {}
    for a, ra in done.items():
        for b, rb in done.items():
            if a == b or ra["machine"]["slug"] != rb["machine"]["slug"] or not comparable(ra, rb):
                continue
            try:
                scores, here, truth = transfer_between(ra, rb, ks)
                out[f"{a}->{b}"] = {"target_table": rb["table"], "holdout_table": rb["holdout_table"],
                                    "holdout_shapes": len(truth),
                                    # measuring every design shape
                                    "target_own_table": absolute_accuracy(here, truth),
                                    **({"target_own_table_ratio": ratio_accuracy(here, truth)["decode"]}
                                       if "reference_shape" in rb else {}),
                                    **scores}
            except (LatencyTableError, OSError) as exc:
                out[f"{a}->{b}"] = {"skipped": str(exc)}
            if "skipped" not in out[f"{a}->{b}"]:
                out[f"{a}->{b}"]["target_met_decode_k_le_5"] = _transfer_met(out[f"{a}->{b}"])
                if "target_own_table_ratio" in out[f"{a}->{b}"]:
                    out[f"{a}->{b}"]["target_met_decode_ratio_k_le_5"] = _transfer_met(out[f"{a}->{b}"],
                                                                                       "decode_ratio")
    return out


def other_machine_transfers(machines: dict, ks) -> list[str]:
    """For each flow measured drift-cancelled on several machines (``machines``: latency.json's sections by
    machine), every other machine's table transferred to this machine's with K anchors from the table here,
    scored on this machine's held-out shapes, into the flow's ``transfer_from_other_machines`` (keyed by the
    source machine) and its ``transfer_other_machine_decode_ratio_k_le_5`` target; returns one line per
    transfer and K. A table that is missing or unreadable makes its transfer ``{"skipped": why}``."""
    from amoeba_search.profiling.table_schema import LatencyTableError

    lines = []
    for slug, here in machines.items():
        for key, result in here.get("flows", {}).items():
            if "skipped" in result:
                continue
            out = {}
            for other, m in machines.items():
                src = m.get("flows", {}).get(key)
                if other == slug or not src or "skipped" in src or not comparable(src, result):
                    continue
                try:
                    out[other] = transfer_between(src, result, ks)[0]
                except (LatencyTableError, OSError) as exc:
                    out[other] = {"skipped": str(exc)}
                    lines.append(f"{key}: {other} -> {slug}: skipped: {exc}")
            if not out:
                continue
            lines += [f"{key}: {other} -> {slug} with K={k[1:]} ({t['corrections']['decode']['kind']}): decode ratio "
                      f"{_pct(t['decode_ratio'])}, decode ms {_pct(t['decode'])}"
                      for other in out for k, t in out[other].items() if k.startswith("k") and "decode_ratio" in t]
            result["transfer_from_other_machines"] = out
            result["targets_met"]["transfer_other_machine_decode_ratio_k_le_5"] = any(
                _transfer_met(t, "decode_ratio") for t in out.values())
    return lines


def _pct(score: dict) -> str:
    return f"{score['within_10pct'] * 100:.0f}% within ±10% (MAPE {score['mape_pct']}%)"


def _pair_line(pair: str, t: dict) -> str:
    """One line of a flow-to-flow transfer: its decode score per K, and the target flow's own table's."""
    if "skipped" in t:
        return f"{pair}: skipped: {t['skipped']}"
    target = pair.split('->')[1]
    own = f"; {target}'s own table: {_pct(t['target_own_table']['decode'])}"
    line = f"{pair}: " + ", ".join(f"K={k[1:]} decode {_pct(v['decode'])}" for k, v in t.items()
                                   if k.startswith("k") and "decode" in v) + own
    if "target_own_table_ratio" in t:
        line += ("\n  decode ratio: " + ", ".join(f"K={k[1:]} {_pct(v['decode_ratio'])}" for k, v in t.items()
                                                 if k.startswith("k") and "decode_ratio" in v)
                 + f"; {target}'s own table: {_pct(t['target_own_table_ratio'])}")
    return line


def drift_main(args) -> int:
    from transformers.utils import logging as hf_logging

    from amoeba_search.paths import atomic_write_text
    from amoeba_search.profiling.devices import check_device, get_device
    from amoeba_search.profiling.flows import resolve_flow_name
    from amoeba_search.profiling.machine import detect_machine
    from amoeba_search.profiling.model_source import load_model_source

    hf_logging.disable_progress_bar()
    ks = sorted({int(k) for k in args.anchors.split(",") if k.strip()})
    csv_dir = (args.out_dir or args.results.parent).resolve()
    results_path = csv_dir / "latency.json" if args.out_dir else args.results
    if args.smoke:
        if args.out_dir is None or csv_dir.is_relative_to((ROOT / "benchmarks" / "results").resolve()):
            print("--smoke needs --out-dir, a folder outside benchmarks/results", file=sys.stderr)
            return 2
        csv_dir.mkdir(parents=True, exist_ok=True)
        args.model = smoke_model(csv_dir / "smoke-model")
        args.n_holdout, args.repeats, args.max_rounds, args.prompt_len, args.context_len = 2, 1, 1, 16, 20
        args.table_holdout, args.threads = 2, 1  # one thread: a smoke test shares the machine with real work
    if args.n_holdout < 1 or args.context_len <= args.prompt_len or not ks or not all(1 <= k <= 5 for k in ks):
        print("need --n-holdout >= 1, --context-len > --prompt-len and --anchors between 1 and 5", file=sys.stderr)
        return 2
    flows = [resolve_flow_name(f) for f in args.flows.split(",") if f.strip()]
    machine = detect_machine()
    spec = get_device(args.device, profiles=args.profiles)
    check_device(spec, machine)
    source = load_model_source(args.model)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    section = results.setdefault("drift_cancelled", {})
    section.update({
        "claim": "drift-cancelled tables (each shape timed between rounds of a reference shape): ratio predictions "
                 "within ±10% on >= 99% of random held-out shapes (nn-Meter's bar), ratio x the reference measured "
                 "now within ±10% on >= 97%, and another machine's table transferred with <= 5 anchors within "
                 "±10% on >= 95%",
        "targets": TARGETS, "device": spec.name, "model": source.name})
    here = section.setdefault("machines", {}).setdefault(machine_slug(machine), {})
    here["last_run_machine"] = machine.summary()
    here.setdefault("flows", {})
    for name in flows:
        key, result = drift_flow(name, args, spec, machine, source, csv_dir, ks)
        if "skipped" in result:
            print(f"{key}: skipped: {result['skipped']}", file=sys.stderr)
            here["flows"].setdefault(key, result)  # never replace a real result with a skip
        else:
            here["flows"][key] = result
            floor = result["error_over_noise_floor"]
            print(f"{key} on {result['machine']['table']}: {result['cost']['table_shapes']} of "
                  f"{result['cost']['full_grid']} shapes measured, {result['cost']['total_profiling_s']:.0f} s profiling "
                  f"({result['cost']['wall_time_this_run_s']:.0f} s this run); on "
                  f"{len(result['holdout_shapes'])} held-out shapes:")
            print(f"  decode ratio to {result['reference_shape']}: {_pct(result['ratio_accuracy_on_holdout']['decode'])}")
            print(f"  prefill ratio: {_pct(result['ratio_accuracy_on_holdout']['prefill'])}")
            for metric, score in result["absolute_accuracy_on_holdout_ratio_x_reference_now"].items():
                plain = result["absolute_accuracy_on_holdout_table_ms"][metric]
                print(f"  {metric} ms, ratio x reference now: {_pct(score)}; table ms alone: {_pct(plain)}")
            print(f"  noise floor (reference decode across loads): {floor['noise_floor_decode_pct']}%; "
                  f"decode MAPE / floor: ratio {floor['ratio_decode']}, absolute {floor['absolute_decode']}; "
                  f"reference now vs table {result['reference_decode_drift']['now_vs_table_pct']}%")
            transfer = result["transfer_from_committed"]
            if "skipped" in transfer:
                print(f"  transfer from {transfer['source_table']}: skipped: {transfer['skipped']}")
            for k in ks:
                if f"k{k}" in transfer:
                    t = transfer[f"k{k}"]
                    print(f"  transfer from {transfer['source_machine']} with K={k}: " + (
                        t["skipped"] if "skipped" in t else f"decode {_pct(t['decode'])}, e2e {_pct(t['e2e'])}" + (
                            f"; decode ratio {_pct(t['decode_ratio'])}, x reference now "
                            f"{_pct(t['decode_ratio_x_reference_now'])}" if "decode_ratio_x_reference_now" in t else "")))
            print(f"  targets met: {result['targets_met']}")
        atomic_write_text(results_path, json.dumps(results, indent=2, default=str) + "\n")
    here["cross_flow_transfer"] = cross_flow(here["flows"], ks)
    for pair, t in here["cross_flow_transfer"].items():
        print(_pair_line(pair, t))
    for line in other_machine_transfers(section["machines"], ks):
        print(line)
    atomic_write_text(results_path, json.dumps(results, indent=2, default=str) + "\n")
    print(f"results: {results_path} (key drift_cancelled)")
    return 0


def cross_flow_committed(args) -> int:
    """Transfer between the committed tables of one machine (``profiles/<model>/<device>/<flow>.csv``), each
    pair of flows, scored on the target flow's committed held-out shapes
    (``benchmarks/results/latency-<device>-<flow>-holdout.csv``); merged into ``latency.json`` under
    ``drift_cancelled.cross_flow_transfer_committed``."""
    from amoeba_search.paths import atomic_write_text
    from amoeba_search.profiling.lut import LatencyTable

    ks = sorted({int(k) for k in args.anchors.split(",") if k.strip()})
    folder = args.profiles / COMMITTED_MODEL / args.device
    flows = {}  # in the form cross_flow reads drift_flow's results
    for name in [f.strip() for f in args.flows.split(",") if f.strip()]:
        table_path, holdout_path = folder / f"{name}.csv", args.results.parent / f"latency-{args.device}-{name}-holdout.csv"
        if not (table_path.is_file() and holdout_path.is_file()):
            print(f"{name}: skipped: {_rel(table_path)} or {_rel(holdout_path)} is missing", file=sys.stderr)
            continue
        table, holdout = LatencyTable.load(table_path), LatencyTable.load(holdout_path)
        flows[name] = {"machine": {"slug": table.machine}, "settings": {}, "table": _rel(table_path),
                       "holdout_table": _rel(holdout_path),
                       "holdout_shapes": sorted(set(holdout.rows["shape"]) - set(table.rows["shape"]))}
    out = cross_flow(flows, ks)
    for pair, t in out.items():
        print(_pair_line(pair, t))
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results.setdefault("drift_cancelled", {})["cross_flow_transfer_committed"] = {
        "claim": "one flow's table turned into another flow's with K <= 5 anchors measured in that flow: within "
                 "±10% on >= 95% of that flow's held-out shapes", "pairs": out,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(args.results, json.dumps(results, indent=2, default=str) + "\n")
    print(f"results: {args.results} (key drift_cancelled.cross_flow_transfer_committed)")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.study == "drift-cancelled":
        return drift_main(args)
    if args.study == "cross-flow-committed":
        return cross_flow_committed(args)
    if args.study == "transfer":
        return rescore_transfer(args)
    from transformers.utils import logging as hf_logging

    from amoeba_search.paths import atomic_write_text
    from amoeba_search.profiling.devices import check_device, get_device, measured_cpu_spec
    from amoeba_search.profiling.flows import resolve_flow_name
    from amoeba_search.profiling.machine import detect_machine, wait_until_quiet
    from amoeba_search.profiling.model_source import load_model_source

    hf_logging.disable_progress_bar()
    if args.n_holdout < 1 or args.context_len <= args.prompt_len:
        print("need --n-holdout >= 1 and --context-len > --prompt-len", file=sys.stderr)
        return 2
    flows = [resolve_flow_name(f) for f in args.flows.split(",") if f.strip()]
    if args.table and len(flows) != 1:
        print("--table names one flow's table: give exactly one flow with it", file=sys.stderr)
        return 2
    machine = detect_machine()
    spec = get_device(args.device, profiles=args.profiles)
    check_device(spec, machine)
    if spec.kind == "cpu":
        if args.max_other_load is not None and args.wait_idle > 0:
            wait_until_quiet(args.max_other_load, timeout=args.wait_idle)  # a busy CPU understates bandwidth
        spec = measured_cpu_spec(spec, machine, refresh=True)  # bandwidth measured now, beside the latencies
    source = load_model_source(args.model)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results.update({"claim": "table predictor within ±10% on random held-out shapes (target 99%, nn-Meter's bar)",
                    "device": spec.name, "machine": machine.summary(), "model": source.name,
                    "device_spec": spec.to_dict()})
    results.setdefault("flows", {})
    for name in flows:
        name, result = run_flow(name, args, spec, machine, source)  # name gains e.g. "-t1" for other settings
        if "skipped" in result:
            print(f"{name}: skipped: {result['skipped']}", file=sys.stderr)
            results["flows"].setdefault(name, result)  # never replace a real result with a skip
        else:
            results["flows"][name] = result
            acc = result["accuracy_on_random_holdout"]
            print(f"{name}: {result['measurements_in_table']} of {result['full_grid']} shapes measured "
                  f"({result['profiling_time_s']:.0f} s); decode MAPE {acc['decode']['mape_pct']}%, "
                  f"{acc['decode']['within_10pct'] * 100:.0f}% within ±10% on {acc['decode']['n']} held-out shapes; "
                  f"smallest shape {result['speedup_smallest_vs_full']['decode_speedup']}x faster decode; full model "
                  f"{result['full_model_vs_bandwidth_limit']['measured_over_bound']}x the bandwidth bound")
        atomic_write_text(args.results, json.dumps(results, indent=2, default=str) + "\n")
    print(f"results: {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
