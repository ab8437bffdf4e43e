"""lm-eval on the tiny random model: fully offline, supernet view == exported checkpoint, clear bad-input errors."""
import json
import socket

import pytest
from transformers import AutoModelForCausalLM

from amoeba_search.data.multiple_choice import TaskFileError, write_task_file
from amoeba_search.evaluation import harness
from amoeba_search.evaluation.harness import TaskUnavailable, evaluate_tasks, resolve_tasks
from amoeba_search.evaluation.records import merge_eval_file, merge_eval_record
from amoeba_search.models.export import export_subnet
from amoeba_search.models.supernet import Supernet
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_model, tiny_tokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
SHAPE, LAYERS = SubnetShape(4, 0.5, 2 / 3), [0, 2, 3, 5]


def toy_items():
    return [(f"Q: {w} {i}?\nA:", ["yes", "no", "maybe"][: 2 + i % 2], i % 2) for i, w in enumerate(WORDS)]


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path / "cache"))  # token blocks of ppl: tasks land here
    directory = tmp_path / "tasks"
    write_task_file(directory / "toy.jsonl", toy_items())
    write_task_file(directory / "toy_calib.jsonl", toy_items()[:4])
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(f"document {i}: " + "some words here and there. " * 30 for i in range(40)))
    return directory


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_offline_run_and_record(task_dir, no_network, tmp_path):
    supernet = Supernet(tiny_model())
    record = evaluate_tasks(supernet, tiny_tokenizer(), f"toy,toy_calib,ppl:{tmp_path / 'text.txt'}",
                            shape=SHAPE, layers=LAYERS, task_dir=task_dir, ppl_seq_len=32, ppl_blocks=3)
    assert record["shape"] == str(SHAPE) and record["kept_layers"] == LAYERS and record["num_layers"] == 4
    assert record["versions"]["lm_eval"] and record["limit"] is None
    toy = record["tasks"]["toy"]
    assert toy["kind"] == "local" and toy["n"] == len(WORDS) and toy["version"] == 1 and len(toy["config_sha256"]) == 64
    assert 0 <= toy["metrics"]["acc"] <= 1 and "acc_norm" in toy["metrics"]
    assert toy["random_baseline"]["acc"] == pytest.approx(sum(1 / (2 + i % 2) for i in range(len(WORDS))) / len(WORDS))
    assert record["tasks"]["toy_calib"]["n"] == 4
    ppl = record["tasks"][f"ppl:{tmp_path / 'text.txt'}"]
    assert ppl["kind"] == "ppl" and ppl["metrics"]["ppl"] > 1 and ppl["blocks"] == 3
    json.dumps(record)  # JSON-ready
    assert supernet.active_shape == SHAPE


def test_supernet_view_and_exported_checkpoint_agree(task_dir, tmp_path):
    tokenizer = tiny_tokenizer()
    supernet = Supernet(tiny_model())
    tasks = ["toy", f"ppl:{tmp_path / 'text.txt'}"]
    view = evaluate_tasks(supernet, tokenizer, tasks, shape=SHAPE, layers=LAYERS, task_dir=task_dir,
                          ppl_seq_len=32, ppl_blocks=3)
    out = export_subnet(supernet, SHAPE, tmp_path / "sub", layers=LAYERS, tokenizer=tokenizer)
    exported = AutoModelForCausalLM.from_pretrained(out)
    plain = evaluate_tasks(exported, tokenizer, tasks, task_dir=task_dir, ppl_seq_len=32, ppl_blocks=3)
    assert plain["shape"] == str(SHAPE) and plain["kept_layers"] == LAYERS  # read from the export's provenance
    assert plain["view"] == "model" and view["view"] == "supernet"
    for name in tasks:
        for metric, value in view["tasks"][name]["metrics"].items():
            assert plain["tasks"][name]["metrics"][metric] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, metric)
    # A different shape scores differently: the view really is cut.
    full = evaluate_tasks(supernet, tokenizer, tasks[1:], shape=supernet.full_shape(), ppl_seq_len=32, ppl_blocks=3)
    assert full["tasks"][tasks[1]]["metrics"]["ppl"] != pytest.approx(view["tasks"][tasks[1]]["metrics"]["ppl"], rel=1e-3)


def test_limit_and_loaded_supernet(task_dir):
    from amoeba_search.models.session import LoadedSupernet

    loaded = LoadedSupernet("tiny", Supernet(tiny_model()), tiny_tokenizer(), {})
    record = evaluate_tasks(loaded, None, ["toy"], limit=3, task_dir=task_dir)
    assert record["model"] == "tiny" and record["shape"] == "d6-f1-h1" and record["kept_layers"] == list(range(6))
    assert record["tasks"]["toy"]["n"] == 3 and record["limit"] == 3
    assert record["tasks"]["toy"]["random_baseline"]["acc"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    with pytest.raises(ValueError, match="needs a selection strategy"):
        evaluate_tasks(loaded, None, ["toy"], shape=SubnetShape(4), task_dir=task_dir)


class FakeRegistry:
    all_tasks = ["hellaswag", "arc_easy", "arc_challenge", "toy_story"]


def test_unknown_task_lists_close_names(task_dir):
    with pytest.raises(KeyError) as info:
        resolve_tasks("toy,tyo", task_dir=task_dir, registry=FakeRegistry())
    message = info.value.args[0]
    assert "unknown task 'tyo'" in message and "did you mean" in message and "toy" in message
    with pytest.raises(KeyError, match="arc_easy"):
        resolve_tasks(["arc_esy"], task_dir=task_dir, registry=FakeRegistry())
    with pytest.raises(KeyError, match="local tasks: toy, toy_calib"):
        resolve_tasks(["zzzzzz"], task_dir=task_dir, registry=FakeRegistry())
    kinds = [r.kind for r in resolve_tasks("toy,ppl:wiki,hellaswag,toy", task_dir=task_dir, registry=FakeRegistry())]
    assert kinds == ["local", "ppl", "lm_eval"]
    with pytest.raises(ValueError, match="no tasks"):
        resolve_tasks(" , ", task_dir=task_dir)
    with pytest.raises(ValueError, match="names no text source"):
        resolve_tasks("ppl:", task_dir=task_dir)


def test_malformed_task_file_is_reported(task_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "c", "choices": ["a", "b"], "answer": 0}\n{"context": "c", "choices": ["a", "b"]}\n')
    with pytest.raises(TaskFileError, match=r"bad.jsonl: row 2: missing field 'answer'"):
        evaluate_tasks(tiny_model(), tiny_tokenizer(), [str(bad)])


def test_hub_task_offline_is_one_clear_error(task_dir, monkeypatch):
    class Manager:
        all_tasks = ["hellaswag"]

        def load(self, specs):
            raise ConnectionError("Couldn't reach 'Rowan/hellaswag' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(harness, "_task_manager", lambda include_defaults: Manager())
    with pytest.raises(TaskUnavailable) as info:
        evaluate_tasks(tiny_model(), tiny_tokenizer(), ["hellaswag"], task_dir=task_dir)
    message = str(info.value)
    assert "'hellaswag'" in message and "Hugging Face Hub" in message and "\n" not in message


def test_bad_arguments(task_dir):
    with pytest.raises(ValueError, match="limit"):
        evaluate_tasks(tiny_model(), tiny_tokenizer(), ["toy"], limit=0, task_dir=task_dir)
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate_tasks(tiny_model(), None, ["toy"], task_dir=task_dir)


def test_hub_offline_restores_environment(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import os

    import datasets.config
    import huggingface_hub.constants

    before = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    with harness.hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
        assert datasets.config.HF_HUB_OFFLINE and huggingface_hub.constants.HF_HUB_OFFLINE
    assert "HF_HUB_OFFLINE" not in os.environ
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == before


def test_merge_by_shape(tmp_path):
    front = [{"shape": "d24-f0.75-h0.667", "latency_ms": 30.0}, {"shape": "d30-f1-h1", "latency_ms": 50.0}]
    first = {"shape": "d24-f0.75-h0.667", "limit": 100, "tasks": {"a": {"metrics": {"acc": 0.5}}}}
    second = {"shape": "d24-f0.75-h0.6670", "limit": 200, "tasks": {"b": {"metrics": {"acc": 0.6}}}}
    merge_eval_record(front, first)
    merge_eval_record(front, second)
    merge_eval_record(front, {"shape": "d12-f0.5-h0.333", "tasks": {}})
    assert [e["shape"] for e in front] == ["d24-f0.75-h0.667", "d30-f1-h1", "d12-f0.5-h0.333"]
    assert front[0]["latency_ms"] == 30.0 and set(front[0]["eval"]["tasks"]) == {"a", "b"}
    assert front[0]["eval"]["limit"] == 200
    with pytest.raises(ValueError, match="no shape"):
        merge_eval_record(front, {"tasks": {}})
    path = tmp_path / "pareto.json"
    path.write_text(json.dumps({"budget_ms": 40, "front": [{"shape": "d30-f1-h1"}]}))
    merge_eval_file(path, first)
    data = json.loads(path.read_text())
    assert data["budget_ms"] == 40 and [e["shape"] for e in data["front"]] == ["d30-f1-h1", "d24-f0.75-h0.667"]
    fresh = merge_eval_file(tmp_path / "new.json", first)
    assert json.loads(fresh.read_text())[0]["eval"]["tasks"]["a"]["metrics"]["acc"] == 0.5
    (tmp_path / "odd.json").write_text('{"x": 1}')
    with pytest.raises(ValueError, match="without a list"):
        merge_eval_file(tmp_path / "odd.json", first)
