import json

import pytest

from amoeba_search.data.multiple_choice import MCItem, TaskFileError, read_task_file, write_task_file
from amoeba_search.errors import MissingDependency
from amoeba_search.evaluation.local_tasks import lm_eval_config, local_task_names, random_baseline, task_items

ITEMS = [("Q: one?\nA:", ["yes", "no"], 0), ("Q: two?\nA:", ["a", "b", "c"], 2), ("", ["x y", "y x"], 1)]


def test_round_trip_and_items(tmp_path):
    path = write_task_file(tmp_path / "toy.jsonl", ITEMS)
    items = read_task_file(path)
    assert items == [MCItem(*item) for item in ITEMS]
    context, choices, answer = task_items("toy", directory=tmp_path)[1]  # plain tuples for other stages
    assert (context, choices, answer) == ITEMS[1]
    assert task_items(str(path), limit=2) == items[:2]
    assert local_task_names(tmp_path) == ["toy"]
    assert random_baseline(items) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)


@pytest.mark.parametrize("row, message", [
    ('{"context": "c", "choices": ["a", "b"], "answer": 1', "row 2: not valid JSON"),
    ('["c", ["a", "b"], 1]', "row 2: expected a JSON object"),
    ('{"context": "c", "choices": ["a", "b"]}', "row 2: missing field 'answer'"),
    ('{"context": 3, "choices": ["a", "b"], "answer": 0}', "row 2: field 'context' must be a string"),
    ('{"context": "c", "choices": "ab", "answer": 0}', "row 2: field 'choices' must be a list"),
    ('{"context": "c", "choices": ["a"], "answer": 0}', "row 2: field 'choices' must be a list of at least 2"),
    ('{"context": "c", "choices": ["a", "a"], "answer": 0}', "row 2: field 'choices' repeats"),
    ('{"context": "c", "choices": ["a", "b"], "answer": 2}', "row 2: field 'answer' must be an integer index into 'choices' (0..1), got 2"),
    ('{"context": "c", "choices": ["a", "b"], "answer": "1"}', "row 2: field 'answer'"),
    ('{"context": "c", "choices": ["a", "b"], "answer": true}', "row 2: field 'answer'"),
])
def test_malformed_rows_name_row_and_field(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"context": "ok", "choices": ["a", "b"], "answer": 0}) + "\n" + row + "\n")
    with pytest.raises(TaskFileError) as info:
        read_task_file(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_empty_file_and_bad_items(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TaskFileError, match="no rows"):
        read_task_file(tmp_path / "empty.jsonl")
    with pytest.raises(TaskFileError, match="item 0: field 'answer'"):
        write_task_file(tmp_path / "x.jsonl", [("c", ["a", "b"], 5)])
    assert not (tmp_path / "x.jsonl").exists()


def test_unknown_and_unprepared_names(tmp_path):
    write_task_file(tmp_path / "amoeba_toy.jsonl", ITEMS)
    with pytest.raises(KeyError, match="did you mean amoeba_toy"):
        task_items("amoeba_tyo", directory=tmp_path)
    with pytest.raises(KeyError, match="known: amoeba_toy"):  # tasks are prepared here: this name is not one
        task_items("amoeba_goal_inference_calib", directory=tmp_path)
    with pytest.raises(MissingDependency, match="--prepare-tasks"):  # none prepared yet
        task_items("amoeba_goal_inference_calib", directory=tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        task_items(str(tmp_path / "nope.jsonl"))


def test_lm_eval_config_is_offline_json(tmp_path):
    path = write_task_file(tmp_path / "toy.jsonl", ITEMS)
    config = lm_eval_config("toy", path)
    assert config["dataset_path"] == "json" and config["output_type"] == "multiple_choice"
    (data,) = config["dataset_kwargs"]["data_files"].values()
    assert data == str(path.resolve()) and data.startswith("/")
