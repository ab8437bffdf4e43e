"""What every command shares: one-line errors instead of tracebacks, ``-v/--verbose`` logging, and JSON output."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from amoeba_search.errors import AmoebaError, InputError

# Errors a user can cause and fix: the library's own (errors.AmoebaError: InputError with the fix in the message,
# UnknownNameError, MissingDependency, ...) and the OS's about paths. Anything else, a plain ValueError included,
# is a bug and keeps its traceback.
USER_ERRORS = (AmoebaError, FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError)
TERMINATED_STATUS = 128 + signal.SIGTERM  # 143, what a shell reports for a process ended by SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally:`` (temporary directories) runs on the way out."""


def _raise_terminated(signum, frame):
    raise Terminated()


def run(prog: str, body: Callable[[], int | None]) -> int:
    """Run ``body``; turn a user error into one line ``prog: error: message`` on stderr and exit status 2.

    SIGTERM and Ctrl-C unwind like an exception (temporary files are removed) and end in one line too, with
    status 143 and 130."""
    quiet_libraries()
    main_thread = threading.current_thread() is threading.main_thread()  # signals can be caught only there
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        return body() or 0
    except USER_ERRORS as err:
        if os.environ.get("AMOEBA_DEBUG"):
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
        return TERMINATED_STATUS
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (library messages from transformers and others span several)."""
    return " ".join(str(err).split()) or type(err).__name__


# -- argparse types: bad numbers and paths are refused at the edge, before anything is loaded ------------------

def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def finite_float(text: str) -> float:
    """A finite number (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _checked(parse: Callable[[str], float], ok: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    """An argparse type: ``parse`` the text, then refuse values that are not ``ok`` with ``rule`` in the message."""
    def check(text: str):
        value = parse(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        return value
    return check


positive_int = _checked(_int, lambda v: v >= 1, "must be a positive integer")          # a count, a size, steps
non_negative_int = _checked(_int, lambda v: v >= 0, "must be 0 or more")
positive_float = _checked(finite_float, lambda v: v > 0, "must be a positive number")
non_negative_float = _checked(finite_float, lambda v: v >= 0, "must be 0 or more")
unit_float = _checked(finite_float, lambda v: 0 <= v <= 1, "must be between 0 and 1")


def check_writable(path: Path) -> None:
    """Refuse an output path that cannot be written, before any compute: its nearest existing ancestor must be
    a writable directory."""
    ancestor = Path(path).absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {ancestor} is a file, not a directory; choose another --out")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: {ancestor} is not writable; choose another --out")


def file_path(text: str) -> Path:
    """A path that names a file (it may not exist yet), never a directory."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file path")
    return path


def layer_list(text: str) -> list[int]:
    """Comma-separated layer indices, e.g. ``0,2,4,5`` (checked against the model once it is known)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        layers = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated layer indices, e.g. 0,2,4,5") from None
    if not layers or any(i < 0 for i in layers):
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated layer indices >= 0, e.g. 0,2,4,5")
    return layers


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors on one line (``prog: error: ...; see prog --help``) and exit status 2, like
    every other user error of the commands (argparse itself prints the usage block first).

    Every command gets ``-v/--verbose`` here, and parsing configures logging from it (``configure_logging``),
    so no command has to."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("-v", "--verbose", action="count", default=0,
                          help="show the library's progress on stderr: -v its milestones (INFO), -vv details "
                               "(DEBUG); default: warnings only")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        configure_logging(getattr(namespace, "verbose", 0))
        return namespace, extras

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


LOG_NAMESPACE = "amoeba_search"
LOG_FORMAT = "%(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """A ``StreamHandler`` writing to whatever ``sys.stderr`` is at the time of each record, so a command run
    in-process (tests, notebooks) writes where stderr goes now, not where it went when logging was set up."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ and setStream assign it; stderr is always looked up
        pass


def configure_logging(verbose: int = 0) -> None:
    """Show the ``amoeba_search`` loggers' records on stderr as ``amoeba_search.selection.depth_dp: message``:
    warnings and errors by default, INFO with ``verbose=1``, DEBUG with 2 or more.

    Only the ``amoeba_search`` logger is touched (one handler, replaced on every call; records still propagate
    to the root logger's handlers, if an application set any); other libraries' loggers are left alone."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    package = logging.getLogger(LOG_NAMESPACE)
    for old in [h for h in package.handlers if isinstance(h, _StderrHandler)]:
        package.removeHandler(old)
    handler = _StderrHandler()
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    package.addHandler(handler)
    package.setLevel(logging.NOTSET if verbose <= 0 else level)  # quiet: the root's level (WARNING) decides


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
    g = parser.add_argument_group("supernet (default for smollm2-135m: its committed strategy and fine-tuned adapter)")
    g.add_argument("--strategy", type=file_path,
                   help="selection strategy JSON from amoeba-select (default for smollm2-135m: "
                        "profiles/smollm2-135m/strategy-beam4.json; none for other models)")
    if layers:
        g.add_argument("--layers", type=layer_list,
                       help="comma-separated kept layer indices (instead of a strategy; not with --strategy)")
    g.add_argument("--adapter", type=Path,
                   help="fine-tuned SMoL adapter: an amoeba-finetune --out or checkpoint (default for smollm2-135m "
                        "with its default strategy: profiles/smollm2-135m/adapter)")
    g.add_argument("--no-adapter", action="store_true", help="run the supernet without the default adapter")


def artefacts_of(args):
    """The ``defaults.Artefacts`` of ``add_artefact_arguments``' flags."""
    from amoeba_search.defaults import resolve_artefacts

    if getattr(args, "layers", None) and args.strategy is not None:
        raise InputError("--layers and --strategy both choose the kept layers; pick one")
    return resolve_artefacts(args.model, args.strategy, args.adapter, no_adapter=args.no_adapter,
                             layers=bool(getattr(args, "layers", None)))


def parse_max_memory(text: str) -> dict:
    """``0=70GiB,cpu=100GiB`` as accelerate's ``max_memory`` ({0: "70GiB", "cpu": "100GiB"})."""
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
