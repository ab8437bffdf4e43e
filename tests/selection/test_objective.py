"""Cached evaluation (shared prefix states, prefix tree) equals the model's own forward."""
import pytest
import torch

from amoeba_search.data.multiple_choice import MCItem
from amoeba_search.evaluation.perplexity import perplexity
from amoeba_search.models.supernet import Supernet
from amoeba_search.selection.calibration import MultipleChoiceMetric, PerplexityMetric
from amoeba_search.selection.depth_dp import depth_dp
from amoeba_search.selection.objective import ModelObjective, prefix_tree
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_model, tiny_tokenizer


def _blocks(n=5, t=16, seed=0):
    return torch.randint(3, 259, (n, t), generator=torch.Generator().manual_seed(seed))


TAILS = [(), (4,), (4, 5), (3, 5), (3, 4, 5), (5,)]


def _mc_metric(kind="loss"):
    items = [MCItem("the cat sat on the", [" mat", " moon", " xyz"], 0),
             MCItem("one two three", [" four", " five five"], 0),
             MCItem("a b c d e f", [" g", " h", " z", " q"], 1)]
    return MultipleChoiceMetric(items, tiny_tokenizer(), kind=kind, batch_size=4)


@pytest.mark.parametrize("metric_kind", ["ppl", "mc-loss", "mc-acc"])
def test_cached_equals_uncached(family, metric_kind):
    supernet = Supernet(tiny_model(family))
    metric = PerplexityMetric(_blocks(), batch_size=2) if metric_kind == "ppl" else _mc_metric(metric_kind[3:])
    results = {}
    for cache in ("none", "row", "tree"):
        objective = ModelObjective(supernet, metric, cache=cache, memory_limit=1 if cache == "row" else 4 << 30)
        results[cache] = [objective.full()] + objective.evaluate(2, TAILS) + objective.evaluate(0, [(1, 2, 5)])
    for cache in ("row", "tree"):
        assert results[cache] == pytest.approx(results["none"], rel=1e-5)
    assert results["row"] == results["tree"]  # the same operations on the same tensors


def test_uncached_path_is_the_standard_perplexity(family):
    supernet = Supernet(tiny_model(family))
    blocks = _blocks()
    objective = ModelObjective(supernet, PerplexityMetric(blocks, batch_size=2), cache="tree")
    got = objective.evaluate(1, [(3, 5)])[0]
    supernet.set_active(SubnetShape(3), [0, 3, 5])
    assert got == pytest.approx(perplexity(supernet, blocks, batch_size=3).ppl, rel=1e-5)


def test_a_plain_callable_metric_works_without_cache():
    supernet = Supernet(tiny_model())
    seen = []
    objective = ModelObjective(supernet, lambda model: seen.append(len(model.model.model.layers)) or 1.0, cache="none")
    assert objective.evaluate(3, [(4,), ()]) == [1.0, 1.0] and seen == [4, 3]
    assert len(supernet.model.model.layers) == 6  # restored
    with pytest.raises(ValueError, match="CalibrationMetric"):
        ModelObjective(supernet, lambda model: 1.0, cache="tree")


def test_caching_saves_layer_passes_but_not_results():
    supernet = Supernet(tiny_model())
    metric = PerplexityMetric(_blocks(6, 12), batch_size=3)
    runs = {}
    for cache in ("none", "row", "tree"):
        objective = ModelObjective(supernet, metric, cache=cache)
        result = depth_dp(objective, min_depth=2)
        runs[cache] = (result.depth_layers, objective.counters())
    assert runs["none"][0] == runs["row"][0] == runs["tree"][0]
    passes = {c: runs[c][1]["layer_passes"] for c in runs}
    assert passes["tree"] <= passes["row"] < passes["none"]
    assert len({runs[c][1]["evaluations"] for c in runs}) == 1


def test_prefix_tree_counts_shared_layers_once():
    root, edges = prefix_tree([(1, 2, 3), (1, 2), (1, 4), (5,), ()])
    assert edges == 5 and root.ends == [4] and sorted(root.children) == [1, 5]


def test_bad_tails_are_refused():
    objective = ModelObjective(Supernet(tiny_model()), PerplexityMetric(_blocks()), cache="tree")
    for tail in [(1,), (4, 3), (6,)]:
        with pytest.raises(ValueError, match="ascending"):
            objective.evaluate(2, [tail])
