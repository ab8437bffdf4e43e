"""Logging: the library only logs through module loggers; the commands' ``-v/--verbose`` shows them on stderr."""
from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import amoeba_search

PACKAGE = Path(amoeba_search.__file__).parent

# Run in a fresh interpreter: import every module of the package while every addHandler, setLevel and
# basicConfig called directly from a file of the package is recorded (third-party libraries set up their own
# loggers on import, which is theirs to do).
_IMPORT_ALL = r"""
import importlib, json, logging, pkgutil, sys, traceback
import amoeba_search

package_dir = amoeba_search.__path__[0]
calls = []

def from_package():
    frame = sys._getframe(2)  # whoever called the spied function
    if frame.f_code.co_filename.startswith(package_dir):
        return f"{frame.f_code.co_filename}:{frame.f_lineno}"
    return None

def spy(name, real):
    def wrapper(*args, **kwargs):
        where = from_package()
        if where is not None:
            calls.append(f"{name} from {where}")
        return real(*args, **kwargs)
    return wrapper

logging.Logger.addHandler = spy("addHandler", logging.Logger.addHandler)
logging.Logger.setLevel = spy("setLevel", logging.Logger.setLevel)
logging.basicConfig = spy("basicConfig", logging.basicConfig)
root = logging.getLogger()
before = {"handlers": list(root.handlers), "level": root.level}
failed = []
for info in pkgutil.walk_packages(amoeba_search.__path__, "amoeba_search."):
    try:
        importlib.import_module(info.name)
    except Exception:
        failed.append(info.name + ": " + traceback.format_exc(limit=1))
ours = {name: {"handlers": len(lg.handlers), "level": lg.level, "propagate": lg.propagate}
        for name, lg in logging.Logger.manager.loggerDict.items()
        if isinstance(lg, logging.Logger) and (name == "amoeba_search" or name.startswith("amoeba_search."))}
print(json.dumps({"calls": calls, "failed": failed, "modules": len(sys.modules),
                  "root_handlers_same": list(root.handlers) == before["handlers"],
                  "root_level": [before["level"], root.level], "ours": ours}))
"""


def test_importing_every_module_configures_no_logging():
    out = subprocess.run([sys.executable, "-c", _IMPORT_ALL], capture_output=True, text=True, check=True,
                         timeout=600)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["failed"] == []
    assert report["calls"] == []                       # no addHandler / setLevel / basicConfig from our code
    assert report["root_handlers_same"]
    assert report["root_level"][0] == report["root_level"][1] == logging.WARNING
    assert report["ours"], "no module logger was created on import"
    for name, state in report["ours"].items():
        assert state == {"handlers": 0, "level": logging.NOTSET, "propagate": True}, name


# -- the library's getLogger calls, read from the sources --------------------------------------------------------

def _library_sources():
    return [p for p in sorted(PACKAGE.rglob("*.py")) if "cli" not in p.relative_to(PACKAGE).parts]


def _get_logger_calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name == "getLogger":
                yield node


def test_module_loggers_are_named_after_their_module():
    problems, with_logger = [], 0
    for path in _library_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(PACKAGE.parent)
        module_level = {id(node.value): node for node in tree.body if isinstance(node, ast.Assign)}
        for call in _get_logger_calls(tree):
            args = call.args
            is_name = len(args) == 1 and isinstance(args[0], ast.Name) and args[0].id == "__name__"
            at_module_level = id(call) in module_level
            if at_module_level:
                targets = module_level[id(call)].targets
                if not is_name or [getattr(t, "id", None) for t in targets] != ["logger"]:
                    problems.append(f"{where}:{call.lineno}: write `logger = logging.getLogger(__name__)`")
                with_logger += 1
            elif is_name:
                problems.append(f"{where}:{call.lineno}: create the module logger once, at module level")
            elif not args or (isinstance(args[0], ast.Constant)
                              and str(args[0].value).split(".")[0] in ("", "root", "amoeba_search")):
                # inside a function only other libraries' loggers may be fetched (to quiet them): never the
                # root logger and never one of ours by a literal name
                problems.append(f"{where}:{call.lineno}: {ast.unparse(call)} names the root logger or one of "
                                "ours; use the module's `logger`")
    assert problems == []
    assert with_logger >= 15


def test_no_log_call_formats_its_message_eagerly():
    """Lazy %-formatting: the message is a constant string, never an f-string or a ``%``/``.format`` result."""
    methods = {"debug", "info", "warning", "error", "exception", "critical"}
    problems = []
    for path in _library_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in methods
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "logger"):
                if not node.args or not (isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                    problems.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert problems == []


# -- the commands' -v ---------------------------------------------------------------------------------------------

@pytest.fixture
def restore_logging():
    """The package logger as it was: a command run in-process configures it (as a command should)."""
    package = logging.getLogger("amoeba_search")
    handlers, level = list(package.handlers), package.level
    yield
    package.handlers[:] = handlers
    package.setLevel(level)


@pytest.fixture
def select_inputs(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path / "cache"))
    calib = tmp_path / "calib.txt"
    words = "river stone light cloud garden window paper music winter number".split()
    calib.write_text("\n\n".join(" ".join(words[(i * 3 + j) % 10] for j in range(50)) for i in range(40)))
    return ["--model", str(model_dir), "--calib", str(calib), "--split", "train", "--samples", "3",
            "--seq-len", "20", "--min-depth", "4", "--batch-size", "2", "--json"]


def _library_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("amoeba_search.")]


MILESTONES = ("amoeba_search.selection.depth_dp: depth DP row ", "amoeba_search.selection.width: width ranking",
              "amoeba_search.selection.pipeline: depth selection (dp) done")


def test_verbose_shows_the_librarys_milestones_on_stderr(select_inputs, tmp_path, capsys, restore_logging):
    from amoeba_search.cli import select as select_cli

    root_level = logging.getLogger().level
    assert select_cli.main([*select_inputs, "--out", str(tmp_path / "quiet.json")]) == 0
    quiet = capsys.readouterr()
    assert not [line for line in _library_lines(quiet.err) if line.startswith(MILESTONES)], quiet.err
    quiet_summary = json.loads(quiet.out)  # stdout stays machine-readable

    assert select_cli.main([*select_inputs, "--out", str(tmp_path / "loud.json"), "-v"]) == 0
    loud = capsys.readouterr()
    lines = _library_lines(loud.err)
    for milestone in MILESTONES:
        assert any(line.startswith(milestone) for line in lines), (milestone, loud.err)
    assert not any(": prefix pass:" in line for line in lines)  # DEBUG needs -vv
    assert json.loads(loud.out)["depth_layers"] == quiet_summary["depth_layers"]  # same result, more words

    assert select_cli.main([*select_inputs, "--out", str(tmp_path / "debug.json"), "-vv"]) == 0
    assert any(": prefix pass:" in line for line in _library_lines(capsys.readouterr().err))

    # only our namespace is configured, with one handler however often a command runs
    package, root = logging.getLogger("amoeba_search"), logging.getLogger()
    assert len(package.handlers) == 1 and package.handlers[0] not in root.handlers
    assert root.level == root_level


def test_every_command_has_verbose_in_its_help(capsys):
    import importlib

    for name in ("eval", "export", "finetune", "ppl", "prepare", "profile", "search", "select"):
        with pytest.raises(SystemExit) as stop:
            importlib.import_module(f"amoeba_search.cli.{name}").main(["--help"])
        assert stop.value.code == 0
        assert "-v, --verbose" in capsys.readouterr().out, name
