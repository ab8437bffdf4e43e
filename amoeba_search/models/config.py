"""Model-family checks and the config of a physically cut subnet."""
from __future__ import annotations

import copy

from amoeba_search.errors import InputError
from amoeba_search.shapes import ModelDims, SubnetShape

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2")


class UnsupportedModelError(InputError):
    """The model is not a LLaMA-style decoder that amoeba-search knows how to cut."""


def check_supported(config) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported; amoeba-search cuts LLaMA-style decoders "
            f"({', '.join(SUPPORTED_FAMILIES)})"
        )


def subnet_config(config, shape: SubnetShape, layers=None):
    """A copy of ``config`` describing the standalone model of ``shape`` (fewer layers, channels, heads).

    ``layers`` (the kept layer indices) matters only for models whose layers differ in type (sliding window).

    ``head_dim`` is written explicitly because fewer heads no longer divide the hidden size into it.
    """
    dims = ModelDims.from_config(config)
    shape.check(dims)
    cut = copy.deepcopy(config)
    cut.num_hidden_layers = shape.depth
    cut.intermediate_size = shape.ffn_channels(dims)
    cut.num_attention_heads = shape.num_heads(dims)
    cut.num_key_value_heads = dims.num_kv_heads
    cut.head_dim = dims.head_dim
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        kept = range(shape.depth) if layers is None else layers
        cut.layer_types = [layer_types[i] for i in kept]
    return cut
