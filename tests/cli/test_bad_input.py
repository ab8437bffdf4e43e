"""Every bad input is one line on stderr (``prog: error: ...``), exit status 2, and nothing left half-written.

Table-driven: each case makes its files under a fresh folder, runs one command's ``main(argv)`` in-process and
checks the status, the one error line and that the folder holds exactly what the case put there. Most cases fail
at argument validation or at reading a file, before any model is loaded; the tiny model of ``model_dir`` is built
only where a case needs it.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from amoeba_search.cli import eval as eval_cli
from amoeba_search.cli import export as export_cli
from amoeba_search.cli import finetune as finetune_cli
from amoeba_search.cli import ppl as ppl_cli
from amoeba_search.cli import prepare as prepare_cli
from amoeba_search.cli import profile as profile_cli
from amoeba_search.cli import search as search_cli
from amoeba_search.cli import select as select_cli

PROGS = {eval_cli: "amoeba-eval", export_cli: "amoeba-export", finetune_cli: "amoeba-finetune", ppl_cli: "amoeba-ppl",
         prepare_cli: "amoeba-prepare", profile_cli: "amoeba-profile", search_cli: "amoeba-search",
         select_cli: "amoeba-select"}


class Case:
    """What a case may use: ``tmp`` (its folder), ``out`` (an output path that must stay absent), ``model`` (the
    tiny model directory, built on first use) and ``write`` (a file under ``tmp``)."""

    def __init__(self, tmp: Path, request):
        self.tmp, self._request = tmp, request
        self.out = tmp / "out"

    @property
    def model(self) -> str:
        return str(self._request.getfixturevalue("model_dir"))

    def write(self, name: str, content: str | bytes = "") -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return str(path)

    def folder(self, name: str) -> str:
        (self.tmp / name).mkdir(parents=True, exist_ok=True)
        return str(self.tmp / name)

    def strategy(self) -> str:
        """A valid strategy of the tiny model."""
        from amoeba_search.fingerprint import model_fingerprint
        from amoeba_search.selection.strategy import SelectionStrategy
        from tests.conftest import tiny_model
        from tests.finetune.helpers import DEPTH_LAYERS

        path = self.tmp / "strategy.json"
        SelectionStrategy(model_fingerprint(tiny_model(), "tiny"),
                          {d: list(v) for d, v in DEPTH_LAYERS.items()}).save(path)
        return str(path)

    def adapter(self) -> Path:
        """A valid adapter of the tiny model (no strategy), in ``tmp/adapter``."""
        import torch

        from amoeba_search.finetune.smol import SMoLAdapter, SMoLConfig
        from amoeba_search.session import open_supernet

        loaded = open_supernet(self.model)
        path = self.tmp / "adapter"
        SMoLAdapter(loaded.supernet, SMoLConfig(num_experts=2, top_k=1, rank=2, alpha=4.0), seed=0,
                    dtype=torch.float32).save(path)
        return path


def _truncated_adapter(c: Case) -> list[str]:
    weights = c.adapter() / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    return ["--model", c.model, "--adapter", str(weights.parent), "--data", c.write("t.txt", "some text " * 50)]


def _adapter_without_dims(c: Case) -> list[str]:
    path = c.adapter()
    record = json.loads((path / "adapter.json").read_text())
    del record["dims"]
    (path / "adapter.json").write_text(json.dumps(record))
    return ["--model", c.model, "--adapter", str(path), "--data", c.write("t.txt", "some text " * 50)]


def _pickle_only_model(c: Case) -> list[str]:
    from tests.conftest import tiny_config

    folder = c.tmp / "pickled"
    tiny_config().save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    return ["--model", str(folder)]


def _search(c: Case, *extra: str) -> list[str]:
    return ["--budget-ms", "1000", "--roofline", "--device", "a5000", "--model", c.model, "--strategy", c.strategy(),
            "--method", "exhaustive", "--out", str(c.out), "--no-verify", *extra]


def _task(c: Case) -> str:
    from amoeba_search.data.multiple_choice import write_task_file

    return str(write_task_file(c.tmp / "tasks" / "toy_calib.jsonl",
                               [(f"Q: {w}?\nA:", ["yes", "no"], i % 2) for i, w in enumerate("ab cd ef gh".split())]))


def _search_with_bad_cache(c: Case) -> list[str]:
    c.write("out/evaluations.json", "[]")
    return _search(c, "--objective", _task(c), "--task-limit", "2")


CASES = [
    # -- numbers, refused at the edge (argparse)
    ("ppl-batch-negative", ppl_cli, lambda c: ["--batch-size", "-1"], "--batch-size: must be a positive integer"),
    ("ppl-batch-zero", ppl_cli, lambda c: ["--batch-size", "0"], "--batch-size: must be a positive integer"),
    ("eval-batch-zero", eval_cli, lambda c: ["--tasks", "ppl:wiki", "--batch-size", "0"], "--batch-size"),
    ("eval-limit-zero", eval_cli, lambda c: ["--tasks", "ppl:wiki", "--limit", "0"], "--limit"),
    ("select-batch-negative", select_cli, lambda c: ["--batch-size", "-1", "--out", str(c.out)], "--batch-size"),
    ("finetune-rank-zero", finetune_cli, lambda c: ["--rank", "0", "--out", str(c.out)], "--rank"),
    ("finetune-warmup-negative", finetune_cli, lambda c: ["--warmup-steps", "-1", "--out", str(c.out)],
     "--warmup-steps: must be 0 or more"),
    ("finetune-lr-inf", finetune_cli, lambda c: ["--lr", "inf", "--out", str(c.out)], "--lr: must be a finite"),
    ("finetune-lr-nan", finetune_cli, lambda c: ["--lr", "nan", "--out", str(c.out)], "--lr: must be a finite"),
    ("finetune-label-weight", finetune_cli, lambda c: ["--label-weight", "2", "--out", str(c.out)],
     "between 0 and 1"),
    ("profile-holdout-negative", profile_cli, lambda c: ["--holdout", "-1", "--out", str(c.out / "t.csv")],
     "--holdout"),
    ("profile-spread-nan", profile_cli, lambda c: ["--target-spread", "nan", "--out", str(c.out / "t.csv")],
     "--target-spread: must be a finite number"),
    ("profile-threads-zero", profile_cli, lambda c: ["--threads", "0", "--out", str(c.out / "t.csv")], "--threads"),
    ("search-trials-zero", search_cli, lambda c: ["--budget-ms", "40", "--trials", "0", "--out", str(c.out)],
     "--trials"),
    ("search-trials-negative", search_cli, lambda c: ["--budget-ms", "40", "--trials", "-1", "--out", str(c.out)],
     "--trials"),
    ("search-budget-inf", search_cli, lambda c: ["--budget-ms", "inf", "--out", str(c.out)], "--budget-ms"),
    ("search-budget-nan", search_cli, lambda c: ["--budget-ms", "nan", "--out", str(c.out)], "--budget-ms"),
    ("search-budget-word", search_cli, lambda c: ["--budget-ms", "fast", "--out", str(c.out)], "must be a number"),
    # -- a directory where a file belongs
    ("search-table-dir", search_cli, lambda c: ["--budget-ms", "40", "--table", c.folder("tables"),
                                                "--out", str(c.out)], "is a directory"),
    ("eval-out-dir", eval_cli, lambda c: ["--tasks", "ppl:wiki", "--out", c.folder("results")], "is a directory"),
    ("select-out-dir", select_cli, lambda c: ["--out", c.folder("strategies")], "is a directory"),
    # an output under a file: refused before the model is loaded, not after the compute
    ("select-out-under-a-file", select_cli, lambda c: ["--out", str(Path(c.write("plain.txt", "x")) / "s.json")],
     "is a file, not a directory"),
    ("export-out-under-a-file", export_cli, lambda c: ["--shape", "d30-f1-h1", "--no-adapter", "--out",
                                                       str(Path(c.write("plain.txt", "x")) / "export")],
     "is a file, not a directory"),
    ("profile-out-dir", profile_cli, lambda c: ["--out", c.folder("tables")], "is a directory"),
    ("export-strategy-dir", export_cli, lambda c: ["--shape", "d6-f1-h1", "--strategy", c.folder("s"),
                                                   "--out", str(c.out)], "is a directory"),
    ("finetune-strategy-dir", finetune_cli, lambda c: ["--strategy", c.folder("s"), "--out", str(c.out)],
     "is a directory"),
    # -- contradictions and malformed lists
    ("eval-layers-and-strategy", eval_cli, lambda c: ["--tasks", "ppl:wiki", "--layers", "0,1",
                                                      "--strategy", c.write("s.json", "{}")], "pick one"),
    ("export-layers-not-numbers", export_cli, lambda c: ["--shape", "d2-f1-h1", "--layers", "a,b",
                                                         "--out", str(c.out)], "comma-separated layer indices"),
    # -- files of the wrong type or content, named in the message
    ("ppl-strategy-list", ppl_cli, lambda c: ["--model", c.model, "--strategy", c.write("s.json", "[1, 2]")],
     "s.json holds a JSON list, not an object"),
    ("ppl-strategy-not-json", ppl_cli, lambda c: ["--model", c.model, "--strategy", c.write("s.json", "{")],
     "s.json is not valid JSON"),
    ("ppl-strategy-not-utf8", ppl_cli, lambda c: ["--model", c.model, "--strategy", c.write("s.json", b"\xff\xfe")],
     "s.json is not UTF-8"),
    ("export-strategy-no-depths", export_cli,
     lambda c: ["--model", c.model, "--shape", "d6-f1-h1", "--strategy",
                c.write("s.json", json.dumps({"schema_version": 1, "fingerprint": {}})), "--out", str(c.out)],
     "s.json is malformed (no 'depths' entry)"),
    ("finetune-strategy-list", finetune_cli, lambda c: ["--model", c.model, "--strategy", c.write("s.json", "[]"),
                                                        "--out", str(c.out)], "s.json holds a JSON list"),
    ("search-evaluations-list", search_cli, _search_with_bad_cache, "evaluations.json holds a JSON list"),
    ("search-predictor-list", search_cli,
     lambda c: _search(c, "--objective", _task(c), "--task-limit", "2", "--predictor", c.write("p.json", "[]")),
     "p.json holds a JSON list"),
    ("ppl-adapter-truncated", ppl_cli, _truncated_adapter, "adapter.safetensors cannot be read"),
    ("ppl-adapter-without-dims", ppl_cli, _adapter_without_dims, "adapter.json lacks 'dims'"),
    ("ppl-pickle-model", ppl_cli, _pickle_only_model, "loads safetensors only"),
    ("ppl-broken-config", ppl_cli, lambda c: ["--model", str(Path(c.write("broken/config.json", "{")).parent)],
     "cannot load the checkpoint in"),
    ("ppl-empty-txt", ppl_cli, lambda c: ["--model", c.model, "--data", c.write("empty.txt", "\n\n")],
     "empty.txt holds no text"),
    ("ppl-empty-dir", ppl_cli, lambda c: ["--model", c.model, "--data", c.folder("corpus")], "holds no .txt file"),
    ("prepare-empty-txt", prepare_cli, lambda c: [c.write("empty.txt")], "empty.txt holds no text"),
    ("prepare-empty-dir", prepare_cli, lambda c: [c.folder("corpus")], "holds no .txt file"),
]


@pytest.mark.parametrize("name, cli, make_args, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(name, cli, make_args, message, tmp_path, request, capsys,
                                                  monkeypatch):
    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path / "cache"))  # caches are not output: kept out of the check
    work = tmp_path / "work"
    work.mkdir()
    case = Case(work, request)
    argv = make_args(case)
    before = sorted(p for p in work.rglob("*"))
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # argparse refuses a bad value itself
        code = stop.code
    err = capsys.readouterr().err
    prog = PROGS[cli]
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: ")]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and err.endswith(lines[0] + "\n"), err
    assert message in lines[0], lines[0]
    # nothing written, not even a temporary file (amoeba-search may have made its empty --out folder)
    after = sorted(p for p in work.rglob("*"))
    assert [p for p in after if p not in before and not (p.is_dir() and not any(p.iterdir()))] == [], after


def test_a_user_error_is_one_line_even_when_the_message_is_not(capsys):
    from amoeba_search.cli._common import run
    from amoeba_search.errors import InputError

    def body():
        raise InputError("first line\n\nsecond line")

    assert run("amoeba-x", body) == 2
    assert capsys.readouterr().err == "amoeba-x: error: first line second line\n"


def test_an_unknown_name_is_a_user_error_but_a_bare_key_error_is_a_bug(capsys):
    from amoeba_search.cli._common import run
    from amoeba_search.errors import UnknownNameError

    def unknown():
        raise UnknownNameError("unknown task 'x'; did you mean y?")

    assert run("amoeba-x", unknown) == 2
    assert capsys.readouterr().err == "amoeba-x: error: unknown task 'x'; did you mean y?\n"
    with pytest.raises(KeyError):
        run("amoeba-x", lambda: {}["missing"])


def test_a_plain_value_error_is_a_bug_and_keeps_its_traceback():
    """The library raises InputError for what a user can fix; a ValueError from anywhere else is not hidden."""
    from amoeba_search.cli._common import run

    with pytest.raises(ValueError, match="could not convert"):
        run("amoeba-x", lambda: float("x"))


def test_sigterm_unwinds_like_ctrl_c(tmp_path, capsys):
    from amoeba_search.cli._common import run

    scratch = tmp_path / "scratch"
    before = signal.getsignal(signal.SIGTERM)

    def body():
        scratch.mkdir()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between two bytecodes, at the latest in this loop
                time.sleep(0.001)
            raise AssertionError("SIGTERM did not interrupt the body")
        finally:
            scratch.rmdir()

    assert run("amoeba-x", body) == 143
    err = capsys.readouterr().err
    assert err.startswith("amoeba-x: terminated") and err.count("\n") == 1
    assert not scratch.exists()
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back


def test_a_corrupt_finetune_log_names_the_file(tmp_path):
    from amoeba_search.finetune.trainer import read_log

    (tmp_path / "log.csv").write_text("garbage\n1\n")
    with pytest.raises(ValueError, match=r"log.csv is not an amoeba-finetune log \(no 'step' column"):
        read_log(tmp_path)
    (tmp_path / "log.csv").write_text("step,lr,shapes\n1,0.1,d6\nx,0.1,d6\n")
    with pytest.raises(ValueError, match=r"log.csv:3: step 'x' is not a number"):
        read_log(tmp_path)


def test_a_predictor_or_cache_of_the_wrong_shape_names_the_file(tmp_path):
    from amoeba_search.search.oracle import MetricOracle
    from amoeba_search.search.predictors import load_predictor

    path = tmp_path / "predictor.json"
    for text, message in [("[]", "holds a JSON list"), ('"x"', "holds a JSON string"), ("{", "not valid JSON"),
                          (json.dumps({"schema_version": 1, "kind": "ridge"}), "malformed|not an amoeba-search")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            load_predictor(path)
        assert str(path) in str(info.value)
    cache = tmp_path / "evaluations.json"
    for text, message in [("[]", "holds a JSON list"), (json.dumps({"settings": {}, "metrics": []}), "malformed")]:
        cache.write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            MetricOracle(lambda s: 1.0, {}, cache_path=cache)
        assert str(cache) in str(info.value)
