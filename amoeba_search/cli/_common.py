"""What every command shares: one-line errors instead of tracebacks, and JSON output."""
from __future__ import annotations

import json
import os
import sys
from typing import Callable

from amoeba_search.errors import AmoebaError

# Errors a user can cause and fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (AmoebaError, ValueError, FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)


def run(prog: str, body: Callable[[], int | None]) -> int:
    """Run ``body``; turn a user error into ``prog: error: message`` on stderr and exit status 2."""
    quiet_libraries()
    try:
        return body() or 0
    except USER_ERRORS as err:
        if os.environ.get("AMOEBA_DEBUG"):
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def emit_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def quiet_libraries() -> None:
    """Our own progress bars and messages only: silence transformers' per-load bars and advice."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def add_compute_arguments(parser, *, device_flag: str = "--device", device_map: bool = False) -> None:
    """``--device`` and ``--dtype`` of the model's own computation. Where ``--device`` already names the target
    device of a latency table (search, profile), the computation's device is ``--compute-device``."""
    from amoeba_search.compute import DEVICE_HELP, DTYPE_CHOICES, DTYPE_HELP

    g = parser.add_argument_group("compute")
    g.add_argument(device_flag, dest="compute_device", default="auto", metavar="DEVICE",
                   help=f"where the model runs: {DEVICE_HELP} (default: %(default)s)")
    g.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=f"{DTYPE_HELP} (default: %(default)s)")
    if device_map:
        g.add_argument("--device-map", choices=["auto", "balanced", "sequential"],
                       help="spread a model larger than one device over several (accelerate); replaces --device")
        g.add_argument("--max-memory", type=parse_max_memory, metavar="DEV=SIZE,...",
                       help="memory --device-map may use per device, e.g. 0=70GiB,1=70GiB,cpu=200GiB")


def add_artefact_arguments(parser, *, layers: bool = False) -> None:
    """``--strategy``, ``--adapter`` and ``--no-adapter`` (and ``--layers``): the supernet a command runs on.
    Their defaults (the committed artefacts of the default model) are resolved by ``artefacts_of``."""
    from pathlib import Path

    g = parser.add_argument_group("supernet (default for smollm2-135m: its committed strategy and fine-tuned adapter)")
    g.add_argument("--strategy", type=Path,
                   help="selection strategy JSON from amoeba-select (default for smollm2-135m: "
                        "profiles/smollm2-135m/strategy-beam4.json; none for other models)")
    if layers:
        g.add_argument("--layers", help="comma-separated kept layer indices (instead of a strategy)")
    g.add_argument("--adapter", type=Path,
                   help="fine-tuned SMoL adapter: an amoeba-finetune --out or checkpoint (default for smollm2-135m "
                        "with its default strategy: profiles/smollm2-135m/adapter)")
    g.add_argument("--no-adapter", action="store_true", help="run the supernet without the default adapter")


def artefacts_of(args):
    """The ``defaults.Artefacts`` of ``add_artefact_arguments``' flags."""
    from amoeba_search.defaults import resolve_artefacts

    return resolve_artefacts(args.model, args.strategy, args.adapter, no_adapter=args.no_adapter,
                             layers=bool(getattr(args, "layers", None)))


def parse_max_memory(text: str) -> dict:
    """``0=70GiB,cpu=100GiB`` as accelerate's ``max_memory`` ({0: "70GiB", "cpu": "100GiB"})."""
    import argparse

    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, size = part.partition("=")
        key = key.strip().removeprefix("cuda:")
        if not sep or not size.strip() or not (key.isdigit() or key == "cpu"):
            raise argparse.ArgumentTypeError(f"{part!r}: write DEVICE=SIZE with DEVICE a GPU number or cpu, "
                                             "e.g. 0=70GiB,cpu=100GiB")
        out[int(key) if key.isdigit() else key] = size.strip()
    if not out:
        raise argparse.ArgumentTypeError("give at least one DEVICE=SIZE, e.g. 0=70GiB")
    return out


def compute_of(args, *, rank: int = 0):
    """The resolved ``Compute`` of a command's ``--device``/``--dtype`` (see ``add_compute_arguments``)."""
    from amoeba_search.compute import resolve_compute

    return resolve_compute(args.compute_device, args.dtype, rank=rank)


def load_options(args, compute) -> dict:
    """Keyword arguments of ``open_supernet`` for ``compute`` and any ``--device-map``/``--max-memory``."""
    options = {"dtype": compute.dtype, "device": compute.device}
    if getattr(args, "device_map", None):
        options.update(device_map=args.device_map, max_memory=args.max_memory)
    return options


def compute_line(compute, args) -> str:
    """Where and in what precision the model ran, for the end of a command's output."""
    spread = f", spread by device_map={args.device_map}" if getattr(args, "device_map", None) else ""
    return f"ran on {compute.describe()}{spread}"
