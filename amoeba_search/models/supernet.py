"""A zero-copy view of a Hugging Face decoder as a supernet of every depth and width.

Widths are prefixes: FFN channels and attention heads are reordered once (by importance when a strategy
gives the order) so that keeping the top-k is slicing ``weight[:k]``. Depth is a list of kept layers, run in
order. Nothing is copied, so a smaller shape really does fewer FLOPs, and the HF model object stays what
every HF tool expects (lm-eval, generate, PEFT-style wrapping).

Head layout. HF attention maps query head ``i`` to KV head ``i // group``; a prefix of that layout would drop
whole KV groups. The view stores query heads **rank-major** instead: position ``r * kv + k`` holds the r-th most
important head of KV group k, so the first ``g * kv`` positions keep g heads of every group. A registered
attention function turns rank-major queries into the group-major order the kernels expect and back.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.models.llama.modeling_llama import eager_attention_forward

from amoeba_search.errors import InputError
from amoeba_search.models.config import check_supported
from amoeba_search.shapes import ModelDims, SubnetShape

def _sdpa_fp32_backward_on_cpu(module, query, key, value, attention_mask, **kwargs):
    """SDPA, but in fp32 where autograd will run PyTorch's CPU flash-attention backward in bf16/fp16, which is
    about 2x slower than the fp32 one at these sizes (fine-tuning's forward + backward, (4, 9, 128, 64): 14 ms
    in bf16 against 6.5 ms in fp32 on an AMX Xeon); inference keeps the faster 16-bit forward."""
    if (query.device.type != "cpu" or query.dtype not in (torch.bfloat16, torch.float16)
            or not torch.is_grad_enabled() or not any(t.requires_grad for t in (query, key, value))):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    mask = attention_mask.float() if attention_mask is not None and attention_mask.is_floating_point() else attention_mask
    with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs back to 16 bits
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), mask, **kwargs)
    return out.to(query.dtype), weights


_BASE_ATTENTION = {"sdpa": _sdpa_fp32_backward_on_cpu, "eager": eager_attention_forward}


def _rank_major(base):
    def attention(module, query, key, value, attention_mask, **kwargs):
        b, h, t, d = query.shape  # (B, g*kv, T, hd), rank-major heads
        kv = key.shape[1]
        g = h // kv
        query = query.view(b, g, kv, t, d).transpose(1, 2).reshape(b, h, t, d)
        out, weights = base(module, query, key, value, attention_mask, **kwargs)  # (B, T, H, hd) group-major
        out = out.reshape(b, t, kv, g, d).transpose(2, 3).reshape(b, t, h, d)
        return out, weights

    return attention


for _name, _fn in _BASE_ATTENTION.items():
    AttentionInterface.register(f"amoeba_{_name}", _rank_major(_fn))


class SlicedLinear(nn.Linear):
    """``nn.Linear`` whose forward uses only the first ``active_out`` rows and ``active_in`` columns.

    Installed by swapping the class of an existing layer, so parameter names and storage are unchanged.
    ``compensation`` (FLAP bias compensation, set by the supernet) is added to the output like a bias.
    """

    active_in: int | None = None
    active_out: int | None = None
    compensation: torch.Tensor | None = None

    @classmethod
    def convert(cls, layer: nn.Linear) -> "SlicedLinear":
        layer.__class__ = cls
        layer.active_in = layer.active_out = layer.compensation = None
        return layer

    def active_weight(self) -> torch.Tensor:
        return self.weight[: self.active_out, : self.active_in]  # a view, never a copy

    def active_bias(self) -> torch.Tensor | None:
        bias = None if self.bias is None else self.bias[: self.active_out]
        if self.compensation is not None:
            bias = self.compensation if bias is None else bias + self.compensation
        return bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.active_weight(), self.active_bias())


def _permute_rows(layer: nn.Linear, index: torch.Tensor) -> None:
    layer.weight.data = layer.weight.data[index].contiguous()
    if layer.bias is not None:
        layer.bias.data = layer.bias.data[index].contiguous()


def _permute_cols(layer: nn.Linear, index: torch.Tensor) -> None:
    layer.weight.data = layer.weight.data[:, index].contiguous()


class Supernet:
    """Wrap ``model`` (modified in place) so that ``set_active(shape, layers)`` selects a subnet."""

    def __init__(self, model, *, ffn_orders: Sequence[Sequence[int]] | None = None,
                 head_orders: Sequence[Sequence[Sequence[int]]] | None = None,
                 channel_means: dict[str, Sequence[Sequence[float]]] | None = None):
        check_supported(model.config)
        self.model = model
        self.base_config = copy.deepcopy(model.config)
        self.dims = ModelDims.from_config(model.config)
        self.layers: list[nn.Module] = list(model.model.layers)
        self._base_layer_types = getattr(model.config, "layer_types", None)
        base = model.config._attn_implementation or "sdpa"
        base = base if base in _BASE_ATTENTION else "sdpa"
        self.base_config._attn_implementation = base
        model.set_attn_implementation(f"amoeba_{base}")

        n, kv, group = self.dims.num_layers, self.dims.num_kv_heads, self.dims.group_size
        # Current physical position -> original index, per layer.
        self.ffn_index = [torch.arange(self.dims.ffn_size) for _ in range(n)]
        identity_heads = torch.tensor([k * group + r for r in range(group) for k in range(kv)])
        self.head_index = [identity_heads.clone() for _ in range(n)]
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj,
                        mlp.gate_proj, mlp.up_proj, mlp.down_proj):
                SlicedLinear.convert(lin)
        # HF layout is group-major; move every layer to rank-major with identity ranking.
        self._reorder_heads([identity_heads] * n, from_hf=True)
        self.set_order(ffn_orders=ffn_orders, head_orders=head_orders)
        self.channel_means: dict[str, list[torch.Tensor]] | None = None
        self.set_channel_means(channel_means)
        self.active_shape: SubnetShape | None = None
        self.active_layers: tuple[int, ...] = ()
        self.set_active(self.full_shape())

    # -- ordering ------------------------------------------------------------------------------------

    def full_shape(self) -> SubnetShape:
        return SubnetShape(self.dims.num_layers, 1.0, 1.0)

    def set_order(self, *, ffn_orders=None, head_orders=None) -> None:
        """Put channels and heads in the given importance order (indices of the ORIGINAL model).

        ``ffn_orders[l]`` ranks layer l's FFN channels, most important first. ``head_orders[l][k]`` ranks the
        query heads of KV group k by their index within the group (0..group-1). ``None`` keeps what is there.
        """
        n, kv, group = self.dims.num_layers, self.dims.num_kv_heads, self.dims.group_size
        if ffn_orders is not None:
            if len(ffn_orders) != n:
                raise InputError(f"ffn_orders has {len(ffn_orders)} layers, the model has {n}")
            for i, (layer, order) in enumerate(zip(self.layers, ffn_orders)):
                order = torch.as_tensor(order, dtype=torch.long)
                if sorted(order.tolist()) != list(range(self.dims.ffn_size)):
                    raise InputError(f"ffn order of layer {i} is not a permutation of 0..{self.dims.ffn_size - 1}")
                where = torch.argsort(self.ffn_index[i])  # original index -> current position
                index = where[order]
                _permute_rows(layer.mlp.gate_proj, index)
                _permute_rows(layer.mlp.up_proj, index)
                _permute_cols(layer.mlp.down_proj, index)
                self.ffn_index[i] = order.clone()
        if head_orders is not None:
            if len(head_orders) != n:
                raise InputError(f"head_orders has {len(head_orders)} layers, the model has {n}")
            targets = []
            for i, ranks in enumerate(head_orders):
                ranks = torch.stack([torch.as_tensor(r, dtype=torch.long) for r in ranks])
                if ranks.shape != (kv, group) or any(sorted(r.tolist()) != list(range(group)) for r in ranks):
                    raise InputError(f"head order of layer {i} must rank 0..{group - 1} within each of {kv} KV groups")
                targets.append(torch.stack([k * group + ranks[k, r] for r in range(group) for k in range(kv)]))
            self._reorder_heads(targets, from_hf=False)

    def _reorder_heads(self, targets: Sequence[torch.Tensor], *, from_hf: bool) -> None:
        hd = self.dims.head_dim
        for i, (layer, target) in enumerate(zip(self.layers, targets)):
            current = torch.arange(self.dims.num_heads) if from_hf else self.head_index[i]
            heads = torch.argsort(current)[target]  # current head positions to gather, in target order
            rows = (heads[:, None] * hd + torch.arange(hd)).reshape(-1)
            _permute_rows(layer.self_attn.q_proj, rows)
            _permute_cols(layer.self_attn.o_proj, rows)
            self.head_index[i] = target.clone()

    def set_channel_means(self, means: dict[str, Sequence[Sequence[float]]] | None) -> None:
        """Turn FLAP bias compensation on with per-layer input means of down_proj (``"ffn"``) and o_proj
        (``"attn"``) in ORIGINAL indices (a strategy's ``channel_means``), or off with ``None``.

        At a reduced width, each kept layer's down_proj / o_proj then adds the mean output of the channels the
        width removes, ``W[:, removed] @ mean[removed]``, as a bias (FLAP, An et al. 2024).
        """
        if means is None:
            self.channel_means = None
        else:
            n, width = self.dims.num_layers, {"ffn": self.dims.ffn_size, "attn": self.dims.num_heads * self.dims.head_dim}
            weight = self.layers[0].mlp.down_proj.weight
            tensors = {k: [torch.as_tensor(row, dtype=torch.float64) for row in means[k]] for k in width}
            if any(len(tensors[k]) != n or any(t.shape != (w,) for t in tensors[k]) for k, w in width.items()):
                raise InputError(f"channel means must be {n} x {width['ffn']} (ffn) and {n} x {width['attn']} (attn)")
            # fp32 whatever the weights' dtype: the compensation is a sum over up to all removed channels
            self.channel_means = {k: [t.to(weight.device, torch.float32) for t in v] for k, v in tensors.items()}
        if getattr(self, "active_shape", None) is not None:
            self.set_active(self.active_shape, self.active_layers)

    def _compensation(self, index: int, kind: str, keep: int) -> torch.Tensor | None:
        """W[:, keep:] @ mean[keep:] in the current physical order, or None when nothing is removed."""
        layer = self.layers[index]
        linear = layer.mlp.down_proj if kind == "ffn" else layer.self_attn.o_proj
        if self.channel_means is None or keep >= linear.in_features:
            return None
        mean = self.channel_means[kind][index]
        if kind == "ffn":
            physical = mean[self.ffn_index[index]]
        else:  # physical head position p holds original head head_index[p]
            physical = mean.view(self.dims.num_heads, -1)[self.head_index[index]].reshape(-1)
        return (linear.weight.data[:, keep:].float() @ physical[keep:]).to(linear.weight.dtype)

    # -- the active subnet ---------------------------------------------------------------------------

    def set_active(self, shape: SubnetShape, layers: Sequence[int] | None = None) -> None:
        """Run only ``layers`` (all when ``shape`` is full depth) at ``shape``'s widths."""
        shape.check(self.dims)
        n = self.dims.num_layers
        if layers is None:
            if shape.depth != n:
                raise InputError(f"depth {shape.depth} < {n} needs the kept layers (from a selection strategy)")
            layers = range(n)
        layers = tuple(int(i) for i in layers)
        if len(layers) != shape.depth or len(set(layers)) != len(layers) or any(not 0 <= i < n for i in layers):
            raise InputError(f"shape {shape} needs {shape.depth} distinct layer indices in 0..{n - 1}, got {list(layers)}")
        layers = tuple(sorted(layers))
        channels, g = shape.ffn_channels(self.dims), shape.heads_per_group(self.dims)
        q_width = g * self.dims.num_kv_heads * self.dims.head_dim
        for position, index in enumerate(layers):
            layer = self.layers[index]
            attn, mlp = layer.self_attn, layer.mlp
            mlp.gate_proj.active_out = mlp.up_proj.active_out = mlp.down_proj.active_in = channels
            attn.q_proj.active_out = attn.o_proj.active_in = q_width
            mlp.down_proj.compensation = self._compensation(index, "ffn", channels)
            attn.o_proj.compensation = self._compensation(index, "attn", q_width)
            attn.num_key_value_groups = g
            attn.layer_idx = position  # KV-cache slot of the shortened stack
        config = self.model.config
        config.num_hidden_layers = shape.depth
        if self._base_layer_types is not None:
            config.layer_types = [self._base_layer_types[i] for i in layers]
        self.model.model.layers = nn.ModuleList([self.layers[i] for i in layers])
        self.active_shape, self.active_layers = shape, layers

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    # -- weights of the active subnet, in a standard layout ------------------------------------------

    def compensated_biases(self) -> dict[str, bool]:
        """Which bias flags a standard checkpoint of the active subnet needs for its bias compensation:
        ``{"mlp_bias": ..., "attention_bias": ...}`` (HF LLaMA sets them for all projections of a kind)."""
        kept = [self.layers[i] for i in self.active_layers]
        return {"mlp_bias": any(layer.mlp.down_proj.compensation is not None for layer in kept),
                "attention_bias": any(layer.self_attn.o_proj.compensation is not None for layer in kept)}

    def subnet_state_dict(self) -> dict[str, torch.Tensor]:
        """Contiguous copies of the active subnet's weights, named and laid out as a standard HF model.

        With bias compensation active, the compensated kind's projections all get a bias (zeros except
        down_proj / o_proj), as ``compensated_biases`` tells the config."""
        shape = self.active_shape
        kv, g, hd = self.dims.num_kv_heads, shape.heads_per_group(self.dims), self.dims.head_dim
        # Rank-major position r*kv+k -> group-major k*g+r, the layout plain HF attention expects.
        heads = torch.tensor([r * kv + k for k in range(kv) for r in range(g)])
        rows = (heads[:, None] * hd + torch.arange(hd)).reshape(-1)
        out: dict[str, torch.Tensor] = {}
        for name, tensor in self.model.state_dict().items():
            if not name.startswith("model.layers."):
                out[name] = tensor.contiguous().clone()
        for position, index in enumerate(self.active_layers):
            layer = self.layers[index]
            prefix = f"model.layers.{position}."
            modules = dict(layer.named_modules())
            for pname, param in layer.named_parameters():
                owner_name, _, leaf = pname.rpartition(".")
                owner = modules[owner_name]
                tensor = param
                if isinstance(owner, SlicedLinear):
                    tensor = owner.active_weight() if leaf == "weight" else owner.active_bias()
                    if owner_name.endswith("q_proj"):
                        tensor = tensor[rows]
                    elif owner_name.endswith("o_proj") and leaf == "weight":
                        tensor = tensor[:, rows]
                out[prefix + pname] = tensor.detach().contiguous().clone()
            flags = self.compensated_biases()
            for flag, owner, names in (("mlp_bias", layer.mlp, ("gate_proj", "up_proj", "down_proj")),
                                       ("attention_bias", layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj"))):
                for name in names if flags[flag] else ():
                    linear = getattr(owner, name)
                    key = f"{prefix}{'mlp' if owner is layer.mlp else 'self_attn'}.{name}.bias"
                    if key not in out:  # no bias parameter: the compensation, or zeros (never permuted rows)
                        bias = linear.active_bias()
                        if bias is None:
                            bias = torch.zeros(linear.active_out or linear.out_features, dtype=linear.weight.dtype,
                                               device=linear.weight.device)
                        out[key] = bias.detach().contiguous().clone()
        if getattr(self.base_config, "tie_word_embeddings", False):
            out.pop("lm_head.weight", None)
        return out
