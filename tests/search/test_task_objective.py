"""The task objective of amoeba-search on tiny random models: lower for right answers, cached, named in one line."""
import json
import math

import pytest
import torch

from amoeba_search.data.multiple_choice import write_task_file
from amoeba_search.search.oracle import check_objective, task_oracle
from amoeba_search.shapes import SubnetShape
from tests.finetune.helpers import tiny_loaded

WORDS = "alpha beta gamma delta epsilon zeta eta theta".split()
FULL, SMALL_SHAPE = SubnetShape(6, 1.0, 1.0), SubnetShape(4, 0.5, 2 / 3)


def _loglik(loaded, shape, context, choice):
    """Summed log-probability of ``" " + choice`` after ``context`` through the model's own full forward."""
    tok = loaded.tokenizer
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    cont = tok(" " + choice, add_special_tokens=False)["input_ids"]
    loaded.activate(shape)
    with torch.no_grad():
        logp = torch.log_softmax(loaded.supernet(input_ids=torch.tensor([ctx + cont])).logits[0].double(), -1)
    return sum(logp[len(ctx) + j - 1, t].item() for j, t in enumerate(cont))


def _tasks(loaded, directory):
    """Two-choice items whose answer is the model's preferred choice (right) or the other one (wrong)."""
    right, wrong = [], []
    for i, word in enumerate(WORDS):
        context, choices = f"Q: is {word} {i} odd?\nA:", ["yes", "no"]
        scores = [_loglik(loaded, FULL, context, c) for c in choices]
        best = max(range(2), key=lambda c: scores[c])
        right.append((context, choices, best))
        wrong.append((context, choices, 1 - best))
    return write_task_file(directory / "right.jsonl", right), write_task_file(directory / "wrong.jsonl", wrong)


def test_right_answers_score_lower_and_accuracy_rides_along(tmp_path):
    loaded = tiny_loaded()
    right, wrong = _tasks(loaded, tmp_path)
    good = task_oracle(loaded, str(right), limit=None, cache_path=tmp_path / "good.json")
    bad = task_oracle(loaded, str(wrong), limit=None, cache_path=tmp_path / "bad.json")
    (g,), (b,) = good([FULL]), bad([FULL])
    # Two choices: the answer's cross-entropy is below log 2 exactly when the model picks it.
    assert g < math.log(2) < b
    assert good.details[FULL] == {"accuracy": 1.0} and bad.details[FULL] == {"accuracy": 0.0}
    assert good([SMALL_SHAPE])[0] != pytest.approx(g, rel=1e-4)  # the cut subnet really is evaluated
    # Cached on disk, details included: a new oracle evaluates nothing.
    again = task_oracle(loaded, str(right), limit=None, cache_path=tmp_path / "good.json")
    assert list(again([FULL, SMALL_SHAPE])) == list(good([FULL, SMALL_SHAPE])) and again.evaluations == 0
    assert again.details == good.details
    assert "details" in json.loads((tmp_path / "good.json").read_text())


def test_settings_tell_tasks_limits_and_adapters_apart(tmp_path):
    from amoeba_search.finetune.smol import SMoLAdapter, SMoLConfig
    from tests.finetune.test_smol import _randomized

    loaded = tiny_loaded()
    right, wrong = _tasks(loaded, tmp_path)
    cache = tmp_path / "evaluations.json"
    a = task_oracle(loaded, str(right), limit=100, cache_path=cache)
    a([FULL])
    b = task_oracle(loaded, str(wrong), limit=100, cache_path=cache)
    c = task_oracle(loaded, str(right), limit=3)
    assert a.settings["metric"] == "task-loss:right" and b.settings["metric"] == "task-loss:wrong"
    assert a.settings["model"] == loaded.fingerprint and "strategy" in a.settings
    assert a.settings["items"] == len(WORDS) and c.settings["items"] == 3 and a.settings["limit"] == 100
    assert a.settings != b.settings != c.settings != a.settings
    assert b.values == {}  # another task's cache is never reused
    # With an adapter: its identity is part of the settings, and the number is the adapted model's.
    loaded.adapter = _randomized(SMoLAdapter(loaded.supernet, SMoLConfig(num_experts=4, top_k=2, rank=4))).attach().eval()
    adapted = task_oracle(loaded, str(right), limit=100)
    assert adapted.settings["adapter"] == loaded.adapter.identity()
    value = adapted([SMALL_SHAPE])[0]
    items = [json.loads(line) for line in right.read_text().splitlines()]
    want = 0.0
    for item in items:
        scores = torch.tensor([_loglik(loaded, SMALL_SHAPE, item["context"], ch) for ch in item["choices"]])
        want -= torch.log_softmax(scores, 0)[item["answer"]].item() / len(items)
    assert value == pytest.approx(want, rel=1e-4)
    loaded.adapter.detach()
    loaded.adapter = None
    assert task_oracle(loaded, str(right), limit=100)([SMALL_SHAPE])[0] != pytest.approx(value, rel=1e-4)


def test_accuracy_matches_lm_eval(tmp_path, monkeypatch):
    """The oracle scores a local task the way amoeba-eval (lm-eval) does: the same accuracy on every subnet.

    Same-length choices, so that the leading space matters (scoring without it gives other accuracies here).
    """
    from amoeba_search.evaluation.harness import evaluate_tasks

    monkeypatch.setenv("AMOEBA_CACHE", str(tmp_path / "cache"))
    loaded = tiny_loaded(seed=3)
    nouns = "apple river stone cloud light paper music night plant water".split()
    items = [(f"Q: {w} {i}?\nA:" + " " * (i % 2), [nouns[i % 10], nouns[(i + 3) % 10], nouns[(i + 6) % 10]], i % 3)
             for i, w in enumerate(WORDS * 3)]
    path = write_task_file(tmp_path / "toy.jsonl", items)
    shapes = [FULL, SMALL_SHAPE, SubnetShape(3, 0.75, 1 / 3)]
    oracle = task_oracle(loaded, str(path), limit=None)
    oracle(shapes)
    lm_eval = [evaluate_tasks(loaded, None, [str(path)], shape=s)["tasks"]["toy"]["metrics"]["acc"] for s in shapes]
    assert [oracle.details[s]["accuracy"] for s in shapes] == pytest.approx(lm_eval)


def test_objective_names(tmp_path):
    write_task_file(tmp_path / "amoeba_goal_inference_calib.jsonl", [("a", ["b", "c"], 0)])
    assert check_objective("ppl") is None
    assert check_objective("amoeba_goal_inference_calib", task_dir=tmp_path).name == "amoeba_goal_inference_calib.jsonl"
    with pytest.raises(ValueError, match="did you mean amoeba_goal_inference_calib"):
        check_objective("amoeba_goal_inferense_calib", task_dir=tmp_path)
    with pytest.raises(ValueError, match="did you mean ppl"):
        check_objective("pll", task_dir=tmp_path)
    with pytest.raises(ValueError, match="no local tasks are prepared"):
        check_objective("accuracy", task_dir=tmp_path / "none")
