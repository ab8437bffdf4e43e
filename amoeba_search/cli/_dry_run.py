"""``--dry-run`` of select, finetune and search: the job's plan from the model's config, nothing loaded."""
from __future__ import annotations

import sys


def add_dry_run_arguments(parser) -> None:
    g = parser.add_argument_group("dry run")
    g.add_argument("--dry-run", action="store_true",
                   help="print the job's plan (evaluations, tokens, FLOPs, bytes, peak memory, estimated time) "
                        "from the model's config alone, load no weights, and stop; works for a directory that "
                        "holds only a config.json")
    g.add_argument("--plan-device", metavar="NAME",
                   help="device whose spec sheet times the plan, e.g. h100, a5000, orin-nx (see amoeba-profile "
                        "--list-devices; default: this machine's CPU, timed only once amoeba-profile measured it)")


def plan_device(args):
    """The DeviceSpec named by ``--plan-device``, else this machine's CPU with any cached measurement."""
    from amoeba_search.profiling.devices import get_device, measured_cpu_spec
    from amoeba_search.profiling.machine import detect_machine

    if args.plan_device:
        return get_device(args.plan_device)
    return measured_cpu_spec(get_device("cpu"), detect_machine(), measure=False)


def plan_dtype(args, spec) -> str:
    """``--dtype``, with auto resolved for the planned device (bf16 on GPUs; this CPU's rule on a CPU)."""
    if args.dtype != "auto":
        return args.dtype
    if spec.kind != "cpu":
        return "bf16"
    from amoeba_search.compute import resolve_compute

    return resolve_compute("cpu", "auto").dtype_name


def emit_plan(prog: str, plan, *, json_output: bool) -> None:
    from amoeba_search.cli._common import emit_json

    if json_output:
        emit_json({"dry_run": True, **plan.to_dict()})
        return
    gib = 2 ** 30
    print(f"{prog} --dry-run: the plan of this {plan.job} job (no weights loaded, nothing run)")
    print(f"  model       {plan.parameters:,} parameters, {plan.weight_bytes / gib:.2f} GiB of weights in {plan.dtype}, "
          f"KV cache {plan.kv_cache_bytes_per_token:,} bytes per token")
    if plan.trainable_parameters:
        print(f"  trainable   {plan.trainable_parameters:,} adapter parameters (fp32)")
    print(f"  work        {plan.evaluations:,} evaluations, {plan.tokens:,} tokens, {plan.flops:.3g} FLOPs, "
          f"{plan.bytes_moved / gib:,.1f} GiB read")
    parts = ", ".join(f"{k} {v / gib:.2f}" for k, v in plan.memory_breakdown.items())
    print(f"  peak memory {plan.peak_memory_bytes / gib:.2f} GiB ({parts})")
    if plan.estimated_seconds is None:
        print(f"  time        not estimated for {plan.device} (see the assumptions)")
    else:
        print(f"  time        {plan.estimated_hours:.3g} h on {plan.device} in {plan.dtype}, at spec-sheet peak: "
              f"a lower bound")
    print("  assumptions:")
    for line in plan.assumptions:
        print(f"    - {line}")
    sys.stdout.flush()
