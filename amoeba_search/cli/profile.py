"""amoeba-profile: measure subnet shapes of a model in a deployment flow on this machine and write a
latency lookup table (CSV), its predictor's held-out error (``.eval.json``) and the device's spec."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from amoeba_search.cli._common import (ArgumentParser, check_writable, file_path, non_negative_float, non_negative_int, positive_float, positive_int,
                                       run)
from amoeba_search.errors import InputError

PROG = "amoeba-profile"
DEFAULT_PROMPT, DEFAULT_CONTEXT = 128, 160


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--device", help="device name (see --list-devices), e.g. cpu, a5000, orin-nx, h100")
    p.add_argument("--flow", help="deployment flow (see --list-flows), e.g. torch, llamacpp, ort")
    p.add_argument("--model", default=None, help="model: default SmolLM2-135M; a local HF dir, .gguf or config.json")
    p.add_argument("--dtype", default="fp32", help="weight dtype the flow runs (default fp32)")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--prompt-len", type=positive_int, default=DEFAULT_PROMPT, help="prompt tokens in the timed prefill")
    p.add_argument("--context-len", type=positive_int, default=DEFAULT_CONTEXT,
                   help="tokens in the KV cache at the end of decode; decode steps = context - prompt")
    p.add_argument("--out", type=file_path, help="table path (default <profiles>/<model>/<device>/<flow>.csv, where "
                                            "<profiles> is --profiles, else $AMOEBA_PROFILES, else ./profiles)")
    p.add_argument("--resume", action="store_true", help="continue a table, skipping shapes already measured")
    p.add_argument("--overwrite", action="store_true", help="start the table again")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.add_argument("--list-devices", action="store_true", help="list known devices and exit")
    p.add_argument("--list-flows", action="store_true", help="list flows and whether each can run here, and exit")
    p.add_argument("--device-spec", action="append", default=[], metavar="FILE.json",
                   help="add a device from a spec file (repeatable)")
    p.add_argument("--force-device", action="store_true", help="label measurements with --device even if this "
                                                                "machine is not that device")
    p.add_argument("--compute-device", metavar="DEVICE",
                   help="the local device the flow runs on, e.g. cuda:1 (default: the --device's own: cpu, or the "
                        "first GPU); the same flag as amoeba-search's")
    p.add_argument("--compile", action="store_true", help="torch flow: run through torch.compile")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: all cores this process may use)")
    p.add_argument("--repeats", type=positive_int, default=7, help="timed repeats per measurement round (default 7)")
    p.add_argument("--max-rounds", type=positive_int, default=3, help="re-measure a noisy shape up to this many rounds")
    p.add_argument("--target-spread", type=positive_float, default=0.05, help="relative IQR good enough to stop (0.05)")
    p.add_argument("--max-other-load", type=non_negative_float, default=None, metavar="CORES",
                   help="re-measure a shape while other processes keep more than CORES cores busy (keeps the "
                        "least disturbed of --max-attempts); every row records this load in other_load")
    p.add_argument("--max-attempts", type=positive_int, default=3)
    p.add_argument("--wait-idle", type=non_negative_float, default=0.0, metavar="SECONDS",
                   help="with --max-other-load: before each attempt wait up to SECONDS for the machine to calm")
    p.add_argument("--passes", type=positive_int, default=1,
                   help="measure every shape in this many separate passes (one row each; the table's median is "
                        "used), so a burst of load on the machine spoils one pass, not the shape")
    p.add_argument("--reference", default="full", metavar="SHAPE",
                   help="time every shape between rounds of this reference shape (R S R S ... R, same process and "
                        "time window) and store the ratios beside the absolute numbers, which a drifting machine "
                        "cannot move (default: full, the largest shape)")
    p.add_argument("--no-interleave", action="store_true",
                   help="absolute timings only, no reference rounds (about half the profiling time)")
    p.add_argument("--transfer", type=Path, default=None, metavar="TABLE",
                   help="build this machine's table from TABLE (another machine's or flow's) and --anchors shapes "
                        "measured here; takes dtype, batch, prompt and context length (and --flow, unless given) "
                        "from TABLE")
    p.add_argument("--anchors", type=positive_int, default=3, metavar="K",
                   help="with --transfer: anchor shapes to measure here, chosen among TABLE's shapes so that their "
                        "fixed, attention and FFN costs differ (1-5, default 3; 1 fits a pure scale, 4-5 let the "
                        "correction price those parts separately)")
    p.add_argument("--correction", choices=("auto", "scale", "affine", "loglinear", "grouped"), default="auto",
                   help="with --transfer: the correction from TABLE's latency to this machine's (default auto: "
                        "scale for 1 anchor, affine for 2-3, for 4-5 affine or grouped, whichever predicts each "
                        "anchor better from the others; grouped: one factor each for the fixed, attention and FFN "
                        "parts)")
    p.add_argument("--holdout", type=non_negative_int, default=12, help="random held-out shapes that score the predictor")
    p.add_argument("--shapes", default=None, help="measure exactly these shapes (comma-separated, e.g. d20-f0.75-h1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profiles", type=Path, default=None,
                   help="profiles folder to write the table into and read devices/*.json from (default "
                        "$AMOEBA_PROFILES, else ./profiles)")
    return p


def _default_out(profiles: Path | None, args, flow: str, model: str, cores: int | None = None) -> Path:
    """``<profiles>/<model>/<device>/<flow>[-settings].csv`` by the one rule of :func:`table_path` (for writing:
    never a committed table of the checkout)."""
    from amoeba_search.profiling import table_path

    suffix = []
    if args.dtype != "fp32":
        suffix.append(args.dtype)
    if args.batch != 1:
        suffix.append(f"b{args.batch}")
    if (args.prompt_len, args.context_len) != (DEFAULT_PROMPT, DEFAULT_CONTEXT):
        suffix.append(f"p{args.prompt_len}-c{args.context_len}")
    if args.compile:
        suffix.append("compile")
    if args.threads and args.threads != cores:
        suffix.append(f"t{args.threads}")
    return table_path(model, args.device, "-".join([flow] + suffix), for_writing=True, profiles=profiles)


def _list_devices(args, profiles: Path) -> int:
    from amoeba_search.profiling.devices import list_devices, matches, measured_cpu_spec
    from amoeba_search.profiling.machine import detect_machine

    machine = detect_machine()
    devices = list_devices(profiles=profiles, spec_files=args.device_spec)
    rows = []
    for name, spec in sorted(devices.items()):
        if spec.kind == "cpu" and not spec.match:
            spec = measured_cpu_spec(spec, machine, measure=False)
        ok, reason = matches(spec, machine)
        rows.append({**spec.to_dict(), "this_machine": ok, "match_reason": reason})
    if args.json:
        print(json.dumps({"machine": machine.summary(), "devices": rows}, indent=2))
        return 0
    print(f"this machine: {machine.summary()}")
    for r in rows:
        bw = f"{r['memory_bandwidth_gbs']:g} GB/s" if r["memory_bandwidth_gbs"] else "bandwidth ?"
        mark = "*" if r["this_machine"] else " "
        print(f"{mark} {r['name']:<10} {r['kind']:<10} {bw:<12} {r['description']}")
    print("* = this machine. Add devices as profiles/devices/<name>.json or with --device-spec FILE.json")
    return 0


def _list_flows(args) -> int:
    from amoeba_search.profiling.flows import flow_availability

    status = flow_availability()
    if args.json:
        print(json.dumps({name: {"available": reason is None, "reason": reason} for name, reason in status.items()},
                         indent=2))
        return 0
    for name, reason in status.items():
        print(f"{name:<13} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0


def _compute_device(name: str | None, spec) -> str | None:
    """``--compute-device`` checked (it exists here) and of the kind the target device is (a GPU for a GPU)."""
    if name is None:
        return None
    from amoeba_search.compute import parse_device

    device = parse_device(name)
    if device.type != ("cuda" if spec.backend == "cuda" else "cpu"):
        raise InputError(f"--compute-device {name} cannot stand for {spec.name} (a {spec.kind} device); "
                         f"give a {'CUDA GPU, e.g. cuda:0' if spec.backend == 'cuda' else 'cpu'} or leave it out")
    return str(device)


def _run(args) -> int:
    from amoeba_search.profiling import profiles_dir
    from amoeba_search.profiling.design import PlannedShape
    from amoeba_search.profiling.devices import check_device, get_device, measured_cpu_spec
    from amoeba_search.profiling.flows import get_flow, resolve_flow_name
    from amoeba_search.profiling.flows.base import MeasureSettings
    from amoeba_search.profiling.machine import detect_machine
    from amoeba_search.profiling.model_source import load_model_source
    from amoeba_search.profiling.profiler import ProfileRequest, run_profile
    from amoeba_search.shapes import SubnetShape

    profiles = args.profiles or profiles_dir()  # device spec files (devices/*.json)
    if args.list_devices:
        return _list_devices(args, profiles)
    if args.list_flows:
        return _list_flows(args)
    source_table = None
    if args.transfer is not None:
        from amoeba_search.profiling.lut import LatencyTable
        from amoeba_search.profiling.transfer import MAX_ANCHORS

        if not 1 <= args.anchors <= MAX_ANCHORS:
            raise InputError(f"--anchors must be between 1 and {MAX_ANCHORS}, got {args.anchors}")
        if args.shapes:
            raise InputError("--transfer chooses its anchor shapes itself; leave out --shapes (or set --anchors)")
        source_table = LatencyTable.load(args.transfer)
        args.flow = args.flow or source_table.flow
        args.dtype, args.batch = source_table.dtype, int(source_table.batch)
        args.prompt_len, args.context_len = int(source_table.prompt_len), int(source_table.context_len)
    if not args.device or not args.flow:
        raise InputError("--device and --flow are required (see --list-devices and --list-flows)")
    for name in ("batch", "prompt_len", "repeats", "max_rounds", "passes", "max_attempts"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    if args.context_len <= args.prompt_len:
        raise InputError(f"--context-len ({args.context_len}) must exceed --prompt-len ({args.prompt_len}): "
                         f"decode runs from the prompt up to the context length")
    flow_name = resolve_flow_name(args.flow)
    spec = get_device(args.device, profiles=profiles, spec_files=args.device_spec)
    args.device = spec.name
    compute_device = _compute_device(args.compute_device, spec)
    machine = detect_machine()
    check_device(spec, machine, force=args.force_device)
    if spec.kind == "cpu":
        spec = measured_cpu_spec(spec, machine)
    flow = get_flow(flow_name, **({"compile": True} if args.compile else {}))
    reason = flow.unavailable_reason()
    if reason:
        from amoeba_search.profiling.flows.base import FlowUnavailable

        raise FlowUnavailable(f"flow {flow_name!r} cannot run here: {reason}")
    source = load_model_source(args.model)
    threads = args.threads if args.threads is not None else (machine.cpu_cores if spec.backend == "cpu" else None)
    settings = MeasureSettings(dtype=args.dtype, batch=args.batch, prompt_len=args.prompt_len,
                               decode_tokens=args.context_len - args.prompt_len, repeats=args.repeats, threads=threads)
    plan = None
    if source_table is not None:
        from amoeba_search.profiling.transfer import choose_anchors, source_costs

        source_table.check_model(source.fingerprint())
        plan = [PlannedShape(s, "extra") for s in choose_anchors(source_costs(source_table), args.anchors)]
    if args.shapes:
        plan = [PlannedShape(SubnetShape.parse(s), "extra") for s in args.shapes.split(",") if s.strip()]
        for p in plan:
            p.shape.check(source.dims)
    if spec.backend == "cpu" and (threads or 0) > 1:
        from amoeba_search.profiling.machine import cpu_snapshot, other_load

        start = cpu_snapshot()
        time.sleep(1.0)
        busy = other_load(start, cpu_snapshot())
        if busy is not None and busy > 0.3:
            print(f"{PROG}: warning: other processes keep {busy:.1f} of {machine.cpu_cores} cores busy; "
                  f"{threads}-thread CPU timings stall when a thread is descheduled. Measure on a quiet machine, "
                  f"or use --max-other-load/--wait-idle, or --threads 1", file=sys.stderr)
    out = args.out or _default_out(args.profiles, args, flow_name, source.name,
                                   machine.cpu_cores if spec.backend == "cpu" else None)
    check_writable(out)
    request = ProfileRequest(device=spec, machine=machine, flow_name=flow_name, source=source, out=out,
                             settings=settings, flow_options={"compile": True} if args.compile else {}, plan=plan,
                             holdout=args.holdout, seed=args.seed, resume=args.resume, overwrite=args.overwrite,
                             max_rounds=args.max_rounds, target_spread=args.target_spread,
                             max_other_load=args.max_other_load, max_attempts=args.max_attempts,
                             wait_idle_s=args.wait_idle, passes=args.passes, compute_device=compute_device,
                             reference=_reference(args, source))
    if source_table is not None and not args.overwrite:
        _check_not_transferred(out)
    from tqdm import tqdm

    bar = {}

    def on_start(pending, done):
        bar["tqdm"] = tqdm(total=len(pending) + done, initial=done, unit="shape", desc=f"{spec.name}/{flow_name}",
                           disable=None, file=sys.stderr)

    def on_row(row):
        bar["tqdm"].set_postfix_str(f"{row['shape']} decode {row['decode_ms_median']:.1f} ms")
        bar["tqdm"].update(1)

    try:
        summary = run_profile(request, flow, on_start=on_start, on_row=on_row)
    finally:
        if "tqdm" in bar:
            bar["tqdm"].close()
    from amoeba_search.paths import atomic_write_text

    atomic_write_text(out.parent / "device.json", json.dumps(spec.to_dict(), indent=2) + "\n")
    if source_table is not None:
        summary.eval_path = _write_transfer(source_table, request, plan, args.correction)
        summary.evaluation = json.loads(summary.eval_path.read_text())
    result = {"device": spec.name, "machine": machine.summary(), "flow": flow_name, "model": source.name,
              "settings": settings.__dict__, **summary.to_dict()}
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"{out}: {summary.measured} measured now, {summary.skipped} already there, {summary.planned} planned "
          f"(full grid {summary.full_grid}); {summary.elapsed_s:.0f} s")
    evaluation = summary.evaluation.get("metrics", {})
    for metric, chosen in summary.evaluation.get("chosen", {}).items():
        s = evaluation[metric][chosen]
        print(f"  {metric:<8} predictor {chosen}: MAPE {s['mape'] * 100:.1f}%, "
              f"{s['within_10pct'] * 100:.0f}% of {s['n']} held-out shapes within ±10%")
    if source_table is not None:
        fits = summary.evaluation["transfer"]["corrections"]
        print(f"  transferred {summary.evaluation['transfer']['shapes']} shapes from {args.transfer} with "
              f"{len(plan)} anchor(s): " + ", ".join(f"{m} {c['kind']} {[round(x, 4) for x in c['coef']]}"
                                                     for m, c in fits.items()))
    if summary.eval_path:
        print(f"  evaluation: {summary.eval_path}")
    busy = summary.evaluation.get("other_load_median")
    if busy is not None and busy > 0.2:
        print(f"  other processes kept {busy:.2f} cores busy (median) while measuring: CPU timings are disturbed; "
              f"re-run on a quiet machine or with --max-other-load")
    if summary.power is None and spec.power_source:
        print(f"  no power telemetry ({spec.power_source} unavailable): energy columns left empty")
    return 0


def _reference(args, source):
    """The reference shape to interleave with (``--reference``), or None with ``--no-interleave``."""
    if args.no_interleave:
        return None
    from amoeba_search.shapes import SearchSpace, SubnetShape

    if args.reference == "full":
        return SearchSpace.default(source.dims).largest()
    try:
        shape = SubnetShape.parse(args.reference)
    except ValueError as exc:
        raise InputError(f"--reference {args.reference}: {exc}; give a shape such as d30-f1-h1, or full") from None
    shape.check(source.dims)
    return shape


def _check_not_transferred(out: Path) -> None:
    from amoeba_search.profiling.lut import LatencyTable

    if out.exists() and out.stat().st_size > 0:
        try:
            rows = LatencyTable.load(out).rows
        except ValueError:
            return  # not a table yet (header only): run_profile decides
        if (rows["role"] == "transferred").any():
            raise InputError(f"{out} already holds transferred rows; pass --overwrite to transfer again")


def _write_transfer(source_table, request, plan, kind: str) -> dict:
    """Append the transferred rows (the source's shapes, corrected by the anchors measured here) to the new table
    and write its evaluation (returns its path)."""
    from amoeba_search.profiling.lut import LatencyTable
    from amoeba_search.profiling.table_schema import append_row
    from amoeba_search.profiling.transfer import TRANSFER_METRICS, source_latencies, transfer_rows

    here = {m: source_latencies(LatencyTable.load(request.out), m) for m in TRANSFER_METRICS}
    anchors = {p.shape: {m: here[m][p.shape] for m in TRANSFER_METRICS} for p in plan}
    provenance = {"table": str(source_table.path), **{k: source_table.key[k] for k in ("device", "machine", "flow")}}
    rows, record = transfer_rows(source_table, anchors, key=request.key(), kind=kind, provenance=provenance)
    for row in rows:
        append_row(request.out, row)
    return LatencyTable.load(request.out).write_eval(extra={"transfer": record})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from amoeba_search.errors import AmoebaError
        from amoeba_search.profiling.devices import DeviceMismatchError
        from amoeba_search.profiling.flows.base import FlowUnavailable

        try:
            return _run(args)
        except (FlowUnavailable, DeviceMismatchError) as exc:  # user-fixable: one line, exit 2
            raise AmoebaError(str(exc)) from None
        except KeyboardInterrupt:
            if args.overwrite:
                print(f"{PROG}: interrupted; the old table is unchanged (the new rows are in the .new.csv beside it, "
                      "and --overwrite starts again)", file=sys.stderr)
            else:
                print(f"{PROG}: interrupted; the rows measured so far are kept, --resume continues", file=sys.stderr)
            return 130

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
