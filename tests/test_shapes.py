import json
import random

import pytest

from amoeba_search.shapes import ModelDims, SearchSpace, SubnetShape

SMOL = ModelDims(num_layers=30, hidden_size=576, ffn_size=1536, num_heads=9, num_kv_heads=3, head_dim=64)


def test_string_and_json_round_trip():
    shape = SubnetShape(20, 0.75, 2 / 3)
    assert str(shape) == "d20-f0.75-h0.667"
    assert SubnetShape.parse(str(shape)) == shape
    assert SubnetShape.from_dict(json.loads(json.dumps(shape.to_dict()))) == shape


def test_shape_is_frozen_and_hashable():
    shape = SubnetShape(10)
    with pytest.raises(AttributeError):
        shape.depth = 3
    assert len({SubnetShape(10, 1, 1), SubnetShape(10)}) == 1


@pytest.mark.parametrize("args", [(0, 1, 1), (-3, 1, 1), (2.5, 1, 1), (5, 0, 1), (5, 1.2, 1), (5, 1, -0.1)])
def test_invalid_shapes_are_refused(args):
    with pytest.raises(ValueError):
        SubnetShape(*args)


@pytest.mark.parametrize("text", ["d20", "20-f1-h1", "d20-f1-hx", ""])
def test_unparseable_strings(text):
    with pytest.raises(ValueError, match="expected the form"):
        SubnetShape.parse(text)


def test_resolution_keeps_gqa_valid():
    assert SubnetShape(30, 0.5, 1 / 3).num_heads(SMOL) == 3
    assert SubnetShape(30, 0.5, 2 / 3).num_heads(SMOL) == 6
    assert SubnetShape(30, 0.5, 2 / 3).ffn_channels(SMOL) == 768
    for h in SearchSpace.default(SMOL).heads_ratios:
        assert SubnetShape(30, 1, h).num_heads(SMOL) % SMOL.num_kv_heads == 0


def test_depth_outside_model_is_refused():
    with pytest.raises(ValueError, match="outside 1..30"):
        SubnetShape(31).check(SMOL)


def test_default_space_enumerates_and_validates():
    space = SearchSpace.default(SMOL)
    assert space.depths == tuple(range(15, 31))
    assert space.heads_ratios == (0.333, 0.667, 1.0)
    shapes = list(space)
    assert len(shapes) == len(space) == 16 * 5 * 3
    assert all(space.validate(s) is s for s in shapes)
    assert space.largest() == SubnetShape(30) and space.smallest() == SubnetShape(15, 0.5, 1 / 3)
    with pytest.raises(ValueError, match="not in the search space"):
        space.validate(SubnetShape(20, 0.6, 1))
    with pytest.raises(ValueError, match="depth 14"):
        space.validate(SubnetShape(14, 1, 1))
    assert space.sample(random.Random(0)) in space


def test_heads_ratio_that_breaks_gqa_is_refused():
    with pytest.raises(ValueError, match="whole number of query heads per KV head"):
        SearchSpace(SMOL, (30,), (1.0,), (0.5,))


def test_space_json_round_trip():
    space = SearchSpace.default(SMOL, min_depth=20, depth_step=2)
    assert SearchSpace.from_json(space.to_json()) == space
    assert space.encode(SubnetShape(30, 0.5, 1)) == [1.0, 0.5, 1.0]


def test_default_space_keeps_only_head_counts_that_divide_the_hidden_size():
    from transformers import LlamaConfig

    from amoeba_search.shapes import ModelDims, SearchSpace

    llama_1b = ModelDims.from_config(LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                                                 num_key_value_heads=8, head_dim=64, intermediate_size=8192))
    assert SearchSpace.default(llama_1b).heads_ratios == (0.25, 0.5, 1.0)  # 24 heads do not divide 2048
    smollm2 = ModelDims.from_config(LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                                num_key_value_heads=3, head_dim=64, intermediate_size=1536))
    assert len(SearchSpace.default(smollm2).heads_ratios) == 3
