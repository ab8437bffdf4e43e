"""What a LLaMA-style model (llama, mistral, qwen2) or one of its subnets costs, from its config alone.

Parameter counts are exact (``check_param_count`` compares them with a model built on the meta device, which
allocates nothing, so an 8B config is checked in seconds). FLOPs are the usual approximation: 2 FLOPs per
multiply-add of every matmul weight, plus the attention scores and their weighted sum; norms, rotary
embeddings, activations and softmax are left out.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from amoeba_search.errors import InputError
from amoeba_search.models.config import check_supported, subnet_config
from amoeba_search.shapes import ModelDims, SubnetShape

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[str(dtype).lower()]
    except KeyError:
        raise InputError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class ParamCount:
    """Parameters of one model, by part. ``embedding`` is the vocabulary matrices (input embedding, plus the
    LM head unless tied); ``non_embedding`` is everything else."""

    embed_tokens: int
    lm_head: int                 # 0 when tied to the input embedding
    per_layer: int               # q/k/v/o, gate/up/down, their biases, two RMSNorms
    per_layer_matmul: int        # the weight matrices of ``per_layer`` only
    layers: int
    final_norm: int
    tied: bool

    @property
    def embedding(self) -> int:
        return self.embed_tokens + self.lm_head

    @property
    def non_embedding(self) -> int:
        return self.per_layer * self.layers + self.final_norm

    @property
    def total(self) -> int:
        return self.embedding + self.non_embedding

    def to_dict(self) -> dict:
        return {**asdict(self), "embedding": self.embedding, "non_embedding": self.non_embedding, "total": self.total}


def _cut(config, shape: SubnetShape | None):
    check_supported(config)
    return config if shape is None else subnet_config(config, shape)


def _biases(config) -> tuple[bool, bool, bool]:
    """(q/k/v bias, o bias, MLP bias), as each family's modeling code builds them."""
    family = config.model_type
    if family == "qwen2":
        return True, False, False
    if family == "llama":
        attn = bool(getattr(config, "attention_bias", False))
        return attn, attn, bool(getattr(config, "mlp_bias", False))
    return False, False, False  # mistral


def param_count(config, shape: SubnetShape | None = None) -> ParamCount:
    """Exact parameter count of the model of ``config``, or of the standalone subnet of ``shape``."""
    cut = _cut(config, shape)
    d = ModelDims.from_config(cut)
    h, q_dim, kv_dim, f = d.hidden_size, d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim, d.ffn_size
    qkv_bias, o_bias, mlp_bias = _biases(cut)
    matmul = h * q_dim + 2 * h * kv_dim + q_dim * h + 3 * h * f   # q, k, v, o; gate, up, down
    bias = (q_dim + 2 * kv_dim) * qkv_bias + h * o_bias + (2 * f + h) * mlp_bias
    embed = cut.vocab_size * h
    tied = bool(getattr(cut, "tie_word_embeddings", False))
    return ParamCount(embed_tokens=embed, lm_head=0 if tied else embed, per_layer=matmul + bias + 2 * h,
                      per_layer_matmul=matmul, layers=d.num_layers, final_norm=h, tied=tied)


def weight_bytes(config, shape: SubnetShape | None = None, *, dtype: str) -> int:
    return param_count(config, shape).total * dtype_bytes(dtype)


def forward_read_bytes(config, shape: SubnetShape | None = None, *, dtype: str) -> int:
    """Weight bytes one forward pass reads: every layer, the final norm and the vocab x hidden LM head (the
    embedding lookup reads only the rows of its tokens; with tied embeddings the head *is* the embedding)."""
    p = param_count(config, shape)
    return (p.non_embedding + p.embed_tokens) * dtype_bytes(dtype)


def kv_cache_bytes_per_token(config, shape: SubnetShape | None = None, *, dtype: str) -> int:
    """2 (K and V) x layers x KV heads x head_dim x bytes per element."""
    d = ModelDims.from_config(_cut(config, shape))
    return 2 * d.num_layers * d.num_kv_heads * d.head_dim * dtype_bytes(dtype)


def kv_cache_bytes(config, shape: SubnetShape | None = None, *, context: int, batch: int = 1, dtype: str) -> int:
    if context < 0 or batch < 1:
        raise InputError(f"need context >= 0 and batch >= 1, got context={context}, batch={batch}")
    return kv_cache_bytes_per_token(config, shape, dtype=dtype) * context * batch


def forward_flops_per_token(config, shape: SubnetShape | None = None, *, context: int) -> int:
    """Forward FLOPs of one token attending to ``context`` tokens: 2 x layer matmul weights + 2 x hidden x
    vocab (LM head) + 4 x layers x heads x head_dim x context (QK^T and the weighted sum of V)."""
    cut = _cut(config, shape)
    p, d = param_count(cut), ModelDims.from_config(cut)
    attention = 4 * d.num_layers * d.num_heads * d.head_dim * context
    return 2 * p.per_layer_matmul * p.layers + 2 * p.embed_tokens + attention


def sequence_flops(config, shape: SubnetShape | None = None, *, seq_len: int) -> int:
    """Forward FLOPs of one causal sequence of ``seq_len`` tokens (position t attends to t + 1 tokens)."""
    if seq_len < 1:
        raise InputError(f"seq_len must be >= 1, got {seq_len}")
    base = forward_flops_per_token(config, shape, context=0)
    per_context = forward_flops_per_token(config, shape, context=1) - base
    return seq_len * base + per_context * seq_len * (seq_len + 1) // 2


# -- the meta-device check ---------------------------------------------------------------------------

def meta_model(config):
    """The model of ``config`` on the meta device: real modules and shapes, no memory, no weights."""
    from transformers import AutoModelForCausalLM

    check_supported(config)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def meta_param_count(config) -> int:
    """``sum(p.numel())`` of the meta model (``parameters()`` lists a tied matrix once)."""
    return sum(p.numel() for p in meta_model(config).parameters())


def check_param_count(config, shape: SubnetShape | None = None) -> int:
    """The analytic count, after checking it equals the meta model's; ``ValueError`` if it does not."""
    cut = _cut(config, shape)
    analytic, built = param_count(cut).total, meta_param_count(cut)
    if analytic != built:
        raise InputError(f"analytic parameter count {analytic:,} differs from the {built:,} of the "
                         f"{cut.model_type} model transformers builds: this config has parts footprint.py "
                         "does not count; extend param_count for it")
    return analytic
