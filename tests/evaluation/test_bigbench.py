import io
import json
import tarfile

import pytest

from amoeba_search.data.multiple_choice import read_task_file
from amoeba_search.evaluation import bigbench
from amoeba_search.evaluation.bigbench import (BigBenchTask, convert_task, format_context, prepare_tasks,
                                               split_items)

SPEC = BigBenchTask("toy", "toy_task/sub", "a toy")


def _task(n=60, **extra):
    examples = [{"input": f"question {i}", "target_scores": {f"right {i}": 1, f"wrong {i}": 0, "other": 0}}
                for i in range(n)]
    examples += [{"input": "tie", "target_scores": {"a": 1, "b": 1}},        # two best answers: skipped
                 {"input": "dup", "target_scores": {"a": 1, "a ": 0}},       # same choice twice: skipped
                 {"input": "generative", "target": "free text"}]              # not multiple choice: skipped
    return {"name": "toy", "examples": examples, **extra}


def test_format_context_follows_bigbench():
    example = {"input": "How many legs?", "target_scores": {"two": 0, "four": 1}}
    assert format_context({}, example) == "Q: How many legs?\n  choice: two\n  choice: four\nA:"
    assert format_context({}, example, append_choices=False) == "Q: How many legs?\nA:"
    task = {"task_prefix": "Facts.", "example_input_prefix": "\nQuestion: ", "example_output_prefix": "\nAnswer: ",
            "append_choices_to_input": False}
    assert format_context(task, example) == "Facts.\nQuestion: How many legs?\nAnswer:"
    assert format_context({"example_input_prefix": "", "example_output_prefix": "",
                           "append_choices_to_input": False}, {"input": "", "target_scores": {}}) == ""


def test_convert_and_split_are_deterministic():
    keyed = convert_task(_task(), SPEC)
    assert len(keyed) == 60
    item = dict(keyed)["question 0"]
    assert item.choices[item.answer] == "right 0"
    parts = split_items(keyed, "toy")
    again = split_items(list(reversed(keyed)), "toy")
    assert parts == again                                   # independent of the order of the source file
    calib, evals = parts["calib"], parts["eval"]
    assert len(calib) + len(evals) == 60 and 8 <= len(calib) <= 32
    assert not {i.context for i in calib} & {i.context for i in evals}
    assert split_items(keyed, "other_name") != parts        # the task name salts the shuffle
    assert len(sum(split_items(keyed, "toy", max_items=10).values(), [])) == 10


def _sdist(path, tasks):
    with tarfile.open(path, "w:gz") as archive:
        for source, task in tasks.items():
            data = json.dumps(task).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{source}/task.json")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_prepare_from_a_given_sdist(tmp_path, monkeypatch):
    monkeypatch.setattr(bigbench, "TASKS", {"toy": SPEC, "toy2": BigBenchTask("toy2", "other", "another")})
    sdist = _sdist(tmp_path / "bigbench-1.0.0.tar.gz", {"toy_task/sub": _task(), "other": _task(30)})
    out = tmp_path / "tasks"
    manifest = prepare_tasks(sdist=sdist, directory=out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json"] + [f"amoeba_{t}{s}.{e}" for t in ("toy", "toy2") for s in ("", "_calib")
                             for e in ("jsonl", "yaml")])
    entry = manifest["tasks"]["toy"]["parts"]
    assert entry["eval"]["items"] + entry["calib"]["items"] == 60
    assert entry["eval"]["random_baseline"] == pytest.approx(1 / 3)
    assert len(read_task_file(out / "amoeba_toy_calib.jsonl")) == entry["calib"]["items"]
    yaml_text = (out / "amoeba_toy.yaml").read_text()
    assert "dataset_path: json" in yaml_text and str(out / "amoeba_toy.jsonl") in yaml_text
    # Prepared already: nothing is read again, so a missing sdist does not matter.
    assert prepare_tasks(sdist=tmp_path / "gone.tar.gz", directory=out) == manifest
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_tasks(sdist=tmp_path / "gone.tar.gz", directory=out, force=True)
    with pytest.raises(KeyError, match="unknown BIG-bench task 'nope'"):
        prepare_tasks(["nope"], directory=out)


def test_prepare_from_an_unpacked_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(bigbench, "TASKS", {"toy": SPEC})
    task_file = tmp_path / "tree" / "bigbench-1.0.0" / "bigbench" / "benchmark_tasks" / "toy_task" / "sub" / "task.json"
    task_file.parent.mkdir(parents=True)
    task_file.write_text(json.dumps(_task(20)))
    manifest = prepare_tasks(sdist=tmp_path / "tree", directory=tmp_path / "tasks")
    assert manifest["tasks"]["toy"]["parts"]["eval"]["items"] + manifest["tasks"]["toy"]["parts"]["calib"]["items"] == 20
    with pytest.raises(FileNotFoundError, match="no bigbench/benchmark_tasks"):
        prepare_tasks(sdist=tmp_path / "tasks", directory=tmp_path / "t2")


def test_catalogue_names():
    assert all(name.startswith("amoeba_") for name in bigbench.task_names())
    assert all(name.endswith("_calib") for name in bigbench.task_names(calib=True))
    assert 3 <= len(bigbench.TASKS) <= 5
