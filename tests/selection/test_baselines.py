import math

import pytest
import torch

from amoeba_search.models.supernet import Supernet
from amoeba_search.selection.calibration import PerplexityMetric
from amoeba_search.selection.depth_baselines import (angular_layers, drop_last_layers, hidden_similarity,
                                                     ppl_rank_layers, score_layer_sets, shortgpt_layers)
from amoeba_search.selection.objective import FunctionObjective, ModelObjective
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_model


def _check(layers, n, min_depth):
    assert sorted(layers) == list(range(min_depth, n + 1))
    for depth, kept in layers.items():
        assert len(kept) == depth and kept == sorted(set(kept)) and all(0 <= i < n for i in kept)


def test_shortgpt_removes_lowest_block_influence():
    cos = torch.eye(5, dtype=torch.float64)
    for l, c in enumerate([0.1, 0.9, 0.5, 0.95]):  # cos(h_l, h_{l+1}) for 4 layers
        cos[l, l + 1] = cos[l + 1, l] = c
    layers = shortgpt_layers(cos, min_depth=1)
    _check(layers, 4, 1)
    assert layers[3] == [0, 1, 2] and layers[2] == [0, 2] and layers[1] == [0]
    assert shortgpt_layers(cos, min_depth=2, keep_last=1)[3] == [0, 2, 3]


def test_angular_removes_the_closest_contiguous_block():
    n = 6
    ang = torch.full((n + 1, n + 1), 0.5, dtype=torch.float64)
    ang[2, 4] = 0.1    # block of 2 starting at layer 2
    ang[1, 4] = 0.05   # block of 3 starting at layer 1
    ang[3, 4] = 0.01   # block of 1: layer 3
    layers = angular_layers(ang, min_depth=3)
    _check(layers, n, 3)
    assert layers[5] == [0, 1, 2, 4, 5] and layers[4] == [0, 1, 4, 5] and layers[3] == [0, 4, 5]
    ang[4, 6] = 0.0
    assert angular_layers(ang, min_depth=3)[4] == [0, 1, 2, 3]
    assert angular_layers(ang, min_depth=3, keep_last=1)[4] == [0, 1, 4, 5]


def test_ppl_rank_and_drop_last():
    costs = [5.0, 1.0, 3.0, 0.5, 2.0]
    obj = FunctionObjective(5, lambda kept: sum(c for i, c in enumerate(costs) if i not in kept))
    layers, single = ppl_rank_layers(obj, min_depth=2)
    _check(layers, 5, 2)
    assert single == {i: c for i, c in enumerate(costs)}
    assert layers[4] == [0, 1, 2, 4] and layers[3] == [0, 2, 4] and layers[2] == [0, 2]
    assert obj.evaluations == 5
    assert drop_last_layers(5, min_depth=2)[3] == [0, 1, 2]
    assert drop_last_layers(5, min_depth=2, keep_last=1)[3] == [0, 1, 4]
    assert score_layer_sets(obj, layers) == {5: 0.0, 4: 0.5, 3: 1.5, 2: 3.5}


def test_hidden_similarity_on_a_tiny_model(family):
    supernet = Supernet(tiny_model(family))
    batches = list(torch.randint(3, 259, (4, 12), generator=torch.Generator().manual_seed(0)).split(2))
    sims = hidden_similarity(supernet, batches)
    n = supernet.dims.num_layers
    assert sims["cos"].shape == (n + 1, n + 1)
    torch.testing.assert_close(torch.diagonal(sims["cos"]), torch.ones(n + 1, dtype=torch.float64))
    assert torch.allclose(sims["cos"], sims["cos"].T) and (sims["angular"] >= 0).all() and (sims["angular"] <= 1).all()
    # one direct check: the angle between the embeddings and the first layer's output
    with torch.no_grad():
        hs = [supernet.model(b, output_hidden_states=True).hidden_states for b in batches]
    cos = torch.cat([torch.nn.functional.cosine_similarity(h[0], h[1], dim=-1).reshape(-1) for h in hs])
    assert float(sims["cos"][0, 1]) == pytest.approx(cos.double().mean().item(), abs=1e-5)
    assert float(sims["angular"][0, 1]) == pytest.approx((torch.arccos(cos.double().clamp(-1, 1)) / math.pi).mean().item(),
                                                         abs=1e-4)
    _check(shortgpt_layers(sims["cos"], min_depth=3), n, 3)
    _check(angular_layers(sims["angular"], min_depth=3), n, 3)


def test_score_layer_sets_matches_direct_evaluation():
    supernet = Supernet(tiny_model())
    metric = PerplexityMetric(torch.randint(3, 259, (4, 12), generator=torch.Generator().manual_seed(0)), batch_size=2)
    sets = {6: list(range(6)), 5: [0, 1, 2, 3, 5], 4: [0, 2, 4, 5], 3: [1, 2, 3]}
    scores = score_layer_sets(ModelObjective(supernet, metric, cache="tree"), sets)
    for depth, kept in sets.items():
        supernet.set_active(SubnetShape(depth), kept)
        assert scores[depth] == pytest.approx(metric(supernet), rel=1e-5)
