import json

import pytest
import torch

from amoeba_search.data.multiple_choice import MCItem, TaskFileError, read_task_file
from amoeba_search.selection.calibration import MultipleChoiceMetric, PerplexityMetric, better, check_metric_name
from tests.conftest import tiny_model, tiny_tokenizer


def _naive_loglik(model, tok, context, choice):
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    cont = tok(choice, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return sum(logp[len(ctx) + j - 1, t].item() for j, t in enumerate(cont))


def _task():
    """A tiny synthetic task: continue a pattern; the answer is not always choice 0."""
    return [MCItem("abcabcabc", ["abc", "xyz"], 0),
            MCItem("1 2 3 4", [" 9 9", " 5"], 1),
            MCItem("hello hello", [" world", " hello", " q"], 1),
            MCItem("zz", ["z", "zzzz"], 0),
            MCItem("the end of the", [" story", " the", " a b c d"], 0)]


@pytest.mark.parametrize("normalize", [False, True])
def test_multiple_choice_scores_match_one_sequence_at_a_time(normalize):
    model, tok = tiny_model(), tiny_tokenizer()
    items = _task()
    metric = MultipleChoiceMetric(items, tok, kind="acc", batch_size=3, normalize=normalize)
    stats = []
    for i, batch in enumerate(metric.batches()):
        with torch.no_grad():
            hidden = model.model(input_ids=batch).last_hidden_state
        stats.append(metric.batch_stats(i, hidden, model.lm_head))
    got = metric.choice_loglik(stats)
    for item, scores in zip(items, got):
        for choice, score in zip(item.choices, scores):
            want = _naive_loglik(model, tok, item.context, choice)
            if normalize:
                want /= len(tok(choice, add_special_tokens=False)["input_ids"])
            assert score == pytest.approx(want, abs=1e-4)
    acc = metric.finish(stats)
    manual = sum(max(range(len(s)), key=lambda c: (s[c], -c)) == it.answer for s, it in zip(got, items)) / len(items)
    assert acc == manual and metric(model) == acc
    loss = MultipleChoiceMetric(items, tok, kind="loss")
    assert loss(model) > 0 and not loss.higher_is_better and metric.higher_is_better


def test_perplexity_metric_matches_evaluation_perplexity():
    from amoeba_search.evaluation.perplexity import perplexity

    model = tiny_model()
    blocks = torch.randint(3, 259, (5, 10), generator=torch.Generator().manual_seed(0))
    assert PerplexityMetric(blocks, batch_size=2)(model) == pytest.approx(perplexity(model, blocks).ppl, rel=1e-6)


@pytest.mark.parametrize("row, message", [
    ({"context": "a", "choices": ["b"], "answer": 0}, "at least 2 non-empty strings"),
    ({"context": "a", "choices": ["b", "c"], "answer": 2}, "integer index"),
    ({"context": "a", "choices": ["b", "c"], "answer": True}, "integer index"),  # a bool is no index
    ({"context": "a", "choices": ["b", "b"], "answer": 0}, "repeats a choice"),
])
def test_calibration_items_are_checked_as_every_task_file_is(tmp_path, row, message):
    """Stage 1 reads its multiple-choice items with the one reader of the format, so the checks are the same."""
    from amoeba_search.selection.pipeline import SelectionSettings, calibration_metric

    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(json.dumps({"context": "a", "choices": ["b", "c"], "answer": 1}) for _ in range(3)))
    assert len(read_task_file(path)) == 3
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(TaskFileError, match=message):
        calibration_metric(SelectionSettings(metric="mc-loss", calib=str(path), samples=1), tiny_tokenizer())


def test_metric_names_and_comparison():
    assert check_metric_name("ppl") == "ppl"
    with pytest.raises(ValueError, match="did you mean 'ppl'"):
        check_metric_name("pppl")
    assert better(1.0, 2.0, higher_is_better=False) and better(2.0, 1.0, higher_is_better=True)
    assert not better(float("nan"), 1.0, higher_is_better=False) and better(1.0, float("nan"), higher_is_better=False)


def test_spread_blocks_are_evenly_spaced():
    from amoeba_search.selection.calibration import spread_blocks

    blocks = torch.arange(10)[:, None].repeat(1, 3)
    assert spread_blocks(blocks, 4)[:, 0].tolist() == [0, 3, 6, 9]
    assert spread_blocks(blocks, 1)[:, 0].tolist() == [0]
    with pytest.raises(ValueError):
        spread_blocks(blocks, 11)


def test_selection_scores_choices_as_lm_eval_does(tmp_path):
    """amoeba-select's mc metrics, the search's task objective and lm-eval all score ``context + " " + choice``."""
    from amoeba_search.selection.calibration import lm_eval_items
    from amoeba_search.selection.pipeline import SelectionSettings, calibration_metric

    path = tmp_path / "task.jsonl"
    rows = [{"context": "the river is", "choices": ["wide", "stone"], "answer": 0},
            {"context": "music in winter\n", "choices": ["paper", "light"], "answer": 1}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    model, tok = tiny_model(), tiny_tokenizer()
    metric = calibration_metric(SelectionSettings(metric="mc-loss", calib=str(path), samples=2), tok)
    assert [item.choices for item in metric.items] == [[" wide", " stone"], ["\n paper", "\n light"]]
    assert metric.items[1].context == "music in winter"
    want = [[_naive_loglik(model, tok, r["context"].rstrip(), c) for c in item.choices]
            for r, item in zip(rows, lm_eval_items((r["context"], r["choices"], r["answer"]) for r in rows))]
    got = metric.choice_loglik(metric.statistics(model))
    assert [x for row in got for x in row] == pytest.approx([x for row in want for x in row], rel=1e-6)
