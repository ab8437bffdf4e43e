import json

import pytest

from amoeba_search.cli import eval as eval_cli
from amoeba_search.data.multiple_choice import write_task_file
from amoeba_search.models.export import export_subnet
from amoeba_search.models.supernet import Supernet
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_model, tiny_tokenizer


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "tiny"
    tiny_model().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    tasks = tmp_path / "tasks"
    write_task_file(tasks / "toy.jsonl", [(f"Q: word {i}?\nA:", ["yes", "no"], i % 2) for i in range(6)])
    return model_dir, tasks


def test_supernet_subnet_json_out_and_merge(setup, tmp_path, capsys):
    model_dir, tasks = setup
    out, front = tmp_path / "eval.json", tmp_path / "front.json"
    front.write_text(json.dumps([{"shape": "d4-f0.5-h0.667", "latency_ms": 12.5}]))
    code = eval_cli.main(["--model", str(model_dir), "--shape", "d4-f0.5-h0.667", "--layers", "0,2,4,5",
                          "--tasks", "toy", "--task-dir", str(tasks), "--limit", "4", "--json",
                          "--out", str(out), "--merge-into", str(front)])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["shape"] == "d4-f0.5-h0.667" and record["kept_layers"] == [0, 2, 4, 5]
    assert record["tasks"]["toy"]["n"] == 4 and record["model"] == str(model_dir)
    assert json.loads(out.read_text()) == record
    merged = json.loads(front.read_text())
    assert merged[0]["latency_ms"] == 12.5 and merged[0]["eval"]["tasks"]["toy"] == record["tasks"]["toy"]


def test_exported_checkpoint_labels_itself(setup, tmp_path, capsys):
    model_dir, tasks = setup
    shape = SubnetShape(4, 0.5, 2 / 3)
    exported = export_subnet(Supernet(tiny_model()), shape, tmp_path / "sub", layers=[0, 2, 4, 5],
                             tokenizer=tiny_tokenizer())
    code = eval_cli.main(["--model", str(exported), "--tasks", str(tasks / "toy.jsonl")])
    assert code == 0
    text = capsys.readouterr().out
    assert "shape d4-f0.5-h0.667" in text and "toy" in text and "chance" in text


@pytest.mark.parametrize("args, message", [
    (["--tasks", "tyo"], "did you mean toy"),
    (["--tasks", "BAD"], "row 2: field 'answer'"),
    (["--tasks", "toy", "--adapter", "adapters/x"], "not an adapter directory"),
    (["--tasks", "toy", "--limit", "0"], "--limit must be a positive"),
    ([], "--tasks is required"),
    (["--tasks", "toy", "--shape", "d4-f1-h1"], "needs a selection strategy"),
])
def test_bad_input_is_one_line_exit_2(setup, tmp_path, capsys, args, message, monkeypatch):
    from amoeba_search.evaluation import harness

    class Registry:  # lm-eval's own task index takes seconds to build; these names are not in it anyway
        all_tasks = ["hellaswag", "arc_easy"]

    monkeypatch.setattr(harness, "_task_manager", lambda include_defaults: Registry())
    model_dir, tasks = setup
    bad = tasks / "bad.jsonl"
    bad.write_text('{"context": "c", "choices": ["a", "b"], "answer": 0}\n{"context": "c", "choices": ["a", "b"], "answer": 9}\n')
    args = [str(bad) if a == "BAD" else a for a in args]
    code = eval_cli.main(["--model", str(model_dir), "--task-dir", str(tasks)] + args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("amoeba-eval: error: ")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_list_tasks(setup, capsys):
    _, tasks = setup
    assert eval_cli.main(["--list-tasks", "--task-dir", str(tasks), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [row["task"] for row in listing["local"]] == ["toy"]
    assert listing["local"][0]["random_baseline"] == 0.5
    assert "amoeba_goal_inference" in listing["not_prepared"]
