"""The default search space of a supernet starts at its strategy's smallest depth, also when asked for None."""
from tests.finetune.helpers import tiny_loaded


def test_the_strategy_sets_the_smallest_depth():
    loaded = tiny_loaded()  # its strategy covers depths 3..6 of 6 layers; half the layers would be 3 as well
    loaded.strategy.depth_layers.pop(3)
    assert min(loaded.space().depths) == 4
    assert min(loaded.space(min_depth=None).depths) == 4  # what a CLI passes when --min-depth is not given
    assert min(loaded.space(min_depth=5).depths) == 5
