"""amoeba-search end to end on a tiny random model with a multiple-choice task objective (roofline latency)."""
import json

import pytest

from amoeba_search.cli import search as search_cli
from amoeba_search.data.multiple_choice import write_task_file
from amoeba_search.fingerprint import model_fingerprint
from amoeba_search.selection.strategy import SelectionStrategy
from tests.conftest import tiny_model, tiny_tokenizer
from tests.finetune.helpers import DEPTH_LAYERS


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "tiny"
    model = tiny_model()
    model.save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    strategy = tmp_path / "strategy.json"
    SelectionStrategy(model_fingerprint(model, "tiny"), {d: list(v) for d, v in DEPTH_LAYERS.items()}).save(strategy)
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    task = write_task_file(tmp_path / "tasks" / "toy_calib.jsonl",
                           [(f"Q: {w} {i}?\nA:", ["yes", "no", "maybe"][: 2 + i % 2], i % 2) for i, w in enumerate(words)])
    return model_dir, strategy, task


def _args(setup, out, *extra):
    model_dir, strategy, _ = setup
    return ["--budget-ms", "1000", "--roofline", "--device", "a5000", "--model", str(model_dir),
            "--strategy", str(strategy), "--method", "exhaustive", "--out", str(out), *extra]


def test_search_on_a_task_objective(setup, tmp_path, capsys):
    out = tmp_path / "out"
    task_dir = setup[2].parent
    assert search_cli.main(_args(setup, out, "--objective", "toy_calib", "--task-dir", str(task_dir),
                                 "--task-limit", "3", "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    settings = summary["settings"]
    assert settings["objective"] == "toy_calib" and settings["task_limit"] == 3
    assert "answer cross-entropy" in settings["objective_label"] and "3 items" in settings["objective_label"]
    checked = [row for row in summary["front"] if row["verified_metric"] is not None]
    assert checked and all(0 <= row["verified_accuracy"] <= 1 and row["verified_metric"] > 0 for row in checked)
    predictor = out / "predictor-task-toy_calib-3.json"
    assert predictor.is_file() and json.loads(predictor.read_text())["oracle_settings"]["metric"] == "task-loss:toy_calib"
    assert "details" in json.loads((out / "evaluations.json").read_text())
    # Again, in words, by path: predictor and evaluations are reused; the table names the metric, not ppl.
    assert search_cli.main(_args(setup, out, "--objective", str(setup[2]), "--task-limit", "3")) == 0
    text = capsys.readouterr().out
    assert "(reused)" in text and "0 real evaluations" in text
    assert "pred metric" in text and "real acc" in text and "ppl" not in text


@pytest.mark.parametrize("objective, message", [
    ("toy_calb", "did you mean toy_calib?"),
    ("pll", "did you mean ppl"),
])
def test_unknown_objective_is_one_line(setup, tmp_path, capsys, objective, message):
    out = tmp_path / "never"
    code = search_cli.main(_args(setup, out, "--objective", objective, "--task-dir", str(setup[2].parent)))
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.startswith("amoeba-search: error: unknown objective")
    assert err.count("\n") == 1 and not out.exists()


def _write_table(path, fingerprint, flow="torch"):
    """A tiny measured-looking table: 2 depths x 2 widths, latency growing with depth and width."""
    from amoeba_search.profiling.table_schema import append_row
    from tests.profiling.test_lut import synthetic_rows

    for row in synthetic_rows():
        append_row(path, {**row, "model_fingerprint": fingerprint, "flow": flow})
    return path


@pytest.mark.parametrize("case, message", [
    ("budget", "no shape meets 1e-06 ms: the fastest"),
    ("table", "was measured for other|llama-L30"),
    ("strategy", "was computed for"),
    ("storage", "cannot open the Optuna storage"),
    ("memory", "no shape fits 0.01 MB: the smallest, d3-f0.5-h0.333"),
    ("flow", "is a table for flow 'torch', not 'ort'"),
])
def test_search_bad_input_is_one_line(setup, tmp_path, capsys, case, message):
    model_dir, strategy, _ = setup
    args = _args(setup, tmp_path / "out", "--method", "exhaustive")
    if case == "budget":
        args[args.index("--budget-ms") + 1] = "1e-6"
    elif case == "table":
        table = _write_table(tmp_path / "t.csv", "other|llama-L30-h576-f1536-a9-kv3-d64-v49152-tied")
        args.remove("--roofline")
        del args[args.index("--device"):args.index("--device") + 2]
        args += ["--table", str(table)]
    elif case == "strategy":
        from amoeba_search.fingerprint import model_fingerprint
        other = tmp_path / "other-strategy.json"
        SelectionStrategy(model_fingerprint(tiny_model(seed=5), "tiny"),
                          {d: list(v) for d, v in DEPTH_LAYERS.items()}).save(other)
        args[args.index("--strategy") + 1] = str(other)
    elif case == "flow":
        from amoeba_search.profiling.model_source import table_fingerprint
        from transformers import AutoConfig
        table = _write_table(tmp_path / "t.csv", table_fingerprint(str(model_dir), AutoConfig.from_pretrained(model_dir)))
        args.remove("--roofline")
        del args[args.index("--device"):args.index("--device") + 2]
        args += ["--table", str(table), "--flow", "ort"]
    elif case == "memory":
        args += ["--memory-budget-mb", "0.01"]
    else:
        args += ["--storage", "postgresql+psycopg2://nobody@127.0.0.1:9/none"]
    code = search_cli.main(args)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_memory_budget_keeps_the_front_within_it(setup, tmp_path, capsys):
    args = _args(setup, tmp_path / "out", "--json")
    assert search_cli.main(args) == 0
    free = json.loads(capsys.readouterr().out)
    sizes = sorted(r["memory_mb"] for r in free["front"]) if "memory_mb" in free["front"][0] else None
    assert sizes is None  # no memory column without a memory budget
    from amoeba_search.profiling.roofline import memory_footprint_bytes
    from transformers import AutoConfig
    from amoeba_search.shapes import SubnetShape
    config = AutoConfig.from_pretrained(setup[0])
    assert free["settings"]["dtype"] == "fp16"  # --roofline on a GPU: the flow's dtype, not fp32
    assert free["settings"]["latency_source"].startswith("estimate: roofline (a5000 spec sheet, fp16) + torch")
    need = {r["shape"]: memory_footprint_bytes(config, SubnetShape.parse(r["shape"]), dtype="fp16") / 2**20
            for r in free["front"]}
    budget = sorted(need.values())[len(need) // 2]  # half the unconstrained front no longer fits
    assert search_cli.main(_args(setup, tmp_path / "out2", "--json", "--memory-budget-mb", str(budget))) == 0
    bound = json.loads(capsys.readouterr().out)
    assert bound["memory_budget_mb"] == budget and "weights + KV cache" in bound["settings"]["memory_source"]
    assert bound["front"] and all(r["memory_mb"] <= budget for r in bound["front"])
    assert need[bound["best"]] <= budget < max(need.values())
