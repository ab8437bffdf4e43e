"""FLAP's bias compensation computed directly, for one width, and applied with forward hooks: the reference the
supernet's own compensation (``Supernet.set_channel_means``) is tested against."""
from __future__ import annotations

from typing import Sequence

import torch

from amoeba_search.selection.width import ChannelStats, original_weights
from amoeba_search.shapes import SubnetShape


def bias_compensation(supernet, stats: ChannelStats, ffn_orders, head_orders, shape: SubnetShape
                      ) -> list[dict[str, torch.Tensor]]:
    """FLAP's bias: per layer, the mean output of the channels ``shape`` removes, for down_proj and o_proj.

    Adding it to the projection's output makes the pruned layer exact on average over calibration tokens.
    """
    dims = supernet.dims
    keep_ffn, keep_heads = shape.ffn_channels(dims), shape.heads_per_group(dims)
    group, hd = dims.group_size, dims.head_dim
    out = []
    for i in range(dims.num_layers):
        w = original_weights(supernet, i)
        gone = torch.tensor(ffn_orders[i][keep_ffn:], dtype=torch.long)
        ffn_bias = w["down"][:, gone] @ stats.ffn_mean[i][gone] if len(gone) else torch.zeros(dims.hidden_size,
                                                                                                dtype=torch.float64)
        heads_gone = [k * group + r for k in range(dims.num_kv_heads) for r in head_orders[i][k][keep_heads:]]
        cols = torch.tensor([h * hd + d for h in heads_gone for d in range(hd)], dtype=torch.long)
        attn_bias = w["o"][:, cols] @ stats.attn_mean[i][cols] if len(cols) else torch.zeros(dims.hidden_size,
                                                                                            dtype=torch.float64)
        out.append({"ffn": ffn_bias.float(), "attn": attn_bias.float()})
    return out


def add_output_biases(supernet, biases: Sequence[dict[str, torch.Tensor]]) -> list:
    """Add ``biases`` (from :func:`bias_compensation`) to down_proj / o_proj outputs; returns hook handles."""
    handles = []
    for layer, bias in zip(supernet.layers, biases):
        for module, b in ((layer.mlp.down_proj, bias["ffn"]), (layer.self_attn.o_proj, bias["attn"])):
            handles.append(module.register_forward_hook(lambda mod, args, out, b=b: out + b.to(out.dtype)))
    return handles
