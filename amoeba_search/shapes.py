"""Subnet shapes and the search space they live in.

A shape is what a user picks: how many layers to keep and what fraction of the FFN channels and of the
attention heads each kept layer keeps. Which layers and which channels is the strategy's business
(``amoeba_search.selection``); a shape only says how many.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import random
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

from amoeba_search.errors import InputError

_SHAPE_RE = re.compile(r"^d(\d+)-f([0-9.]+)-h([0-9.]+)$")
_RATIO_DECIMALS = 3


def _ratio(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise InputError(f"{name} must be in (0, 1], got {value}")
    return round(value, _RATIO_DECIMALS)


def _fmt(value: float) -> str:
    return format(value, "g")


@dataclass(frozen=True)
class ModelDims:
    """The sizes of a LLaMA-style decoder that shapes are resolved against."""

    num_layers: int
    hidden_size: int
    ffn_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head (grouped-query attention)."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_config(cls, config) -> "ModelDims":
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            ffn_size=config.intermediate_size,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True, order=True)
class SubnetShape:
    """``SubnetShape(depth, ffn_ratio, heads_ratio)``; string form ``d20-f0.75-h0.667``.

    Ratios are rounded to three decimals so that the string form round-trips exactly.
    """

    depth: int
    ffn_ratio: float = 1.0
    heads_ratio: float = 1.0

    def __post_init__(self):
        if isinstance(self.depth, bool) or int(self.depth) != self.depth or self.depth < 1:
            raise InputError(f"depth must be a positive integer, got {self.depth!r}")
        object.__setattr__(self, "depth", int(self.depth))
        object.__setattr__(self, "ffn_ratio", _ratio(self.ffn_ratio, "ffn_ratio"))
        object.__setattr__(self, "heads_ratio", _ratio(self.heads_ratio, "heads_ratio"))

    def __str__(self) -> str:
        return f"d{self.depth}-f{_fmt(self.ffn_ratio)}-h{_fmt(self.heads_ratio)}"

    @classmethod
    def parse(cls, text: str) -> "SubnetShape":
        match = _SHAPE_RE.match(text.strip())
        unreadable = InputError(f"cannot read shape {text!r}: expected the form d20-f0.75-h0.667")
        if not match:
            raise unreadable
        try:
            ffn, heads = float(match[2]), float(match[3])
        except ValueError:  # e.g. 0.7.5, which the pattern lets through
            raise unreadable from None
        return cls(int(match[1]), ffn, heads)

    def to_dict(self) -> dict:
        return {"depth": self.depth, "ffn_ratio": self.ffn_ratio, "heads_ratio": self.heads_ratio}

    @classmethod
    def from_dict(cls, data: dict) -> "SubnetShape":
        return cls(data["depth"], data["ffn_ratio"], data["heads_ratio"])

    # -- resolution against a concrete model ---------------------------------------------------------

    def check(self, dims: ModelDims) -> None:
        """Raise ``ValueError`` if this shape cannot be cut from a model of ``dims``."""
        if not 1 <= self.depth <= dims.num_layers:
            raise InputError(f"depth {self.depth} is outside 1..{dims.num_layers} for this model")

    def ffn_channels(self, dims: ModelDims) -> int:
        return max(1, round(self.ffn_ratio * dims.ffn_size))

    def heads_per_group(self, dims: ModelDims) -> int:
        """Query heads kept per KV head; every KV head is kept so GQA stays valid."""
        return max(1, round(self.heads_ratio * dims.group_size))

    def num_heads(self, dims: ModelDims) -> int:
        return self.heads_per_group(dims) * dims.num_kv_heads


@dataclass(frozen=True)
class SearchSpace:
    """The allowed choices of depth, FFN ratio and heads ratio for one model."""

    dims: ModelDims
    depths: tuple[int, ...]
    ffn_ratios: tuple[float, ...]
    heads_ratios: tuple[float, ...]

    def __post_init__(self):
        if not self.depths or not self.ffn_ratios or not self.heads_ratios:
            raise InputError("a search space needs at least one choice of depth, ffn ratio and heads ratio")
        depths = tuple(sorted(set(int(d) for d in self.depths)))
        if depths[0] < 1 or depths[-1] > self.dims.num_layers:
            raise InputError(f"depth choices must lie in 1..{self.dims.num_layers}, got {list(depths)}")
        ffn = tuple(sorted(set(_ratio(r, "ffn ratio") for r in self.ffn_ratios)))
        heads = tuple(sorted(set(_ratio(r, "heads ratio") for r in self.heads_ratios)))
        group = self.dims.group_size
        for r in heads:
            if abs(r * group - round(r * group)) > 0.02 or round(r * group) < 1:
                allowed = ", ".join(_fmt(round(g / group, _RATIO_DECIMALS)) for g in range(1, group + 1))
                raise InputError(
                    f"heads ratio {r} does not keep a whole number of query heads per KV head "
                    f"({self.dims.num_heads} heads / {self.dims.num_kv_heads} KV heads); use one of {allowed}"
                )
        object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "ffn_ratios", ffn)
        object.__setattr__(self, "heads_ratios", heads)

    @classmethod
    def default(cls, dims: ModelDims, *, min_depth: int | None = None, depth_step: int = 1,
                ffn_ratios: Sequence[float] = (0.5, 0.625, 0.75, 0.875, 1.0)) -> "SearchSpace":
        """Depths from ``min_depth`` (half the layers by default) to all; every GQA-valid head count that
        divides the hidden size (transformers refuses a Llama/Qwen2 config whose heads do not, so an export of
        such a shape could not be loaded: Llama-3.2-1B keeps 8, 16 and 32 of its 32 heads, not 24)."""
        n = dims.num_layers
        min_depth = max(1, n // 2) if min_depth is None else min_depth
        if not 1 <= min_depth <= n:
            raise InputError(f"min_depth must lie in 1..{n}, got {min_depth}")
        depths = sorted(set(range(n, min_depth - 1, -depth_step)) | {min_depth})
        group = dims.group_size
        heads = [g / group for g in range(1, group + 1) if dims.hidden_size % (g * dims.num_kv_heads) == 0]
        return cls(dims, tuple(depths), tuple(ffn_ratios), tuple(heads))

    def __contains__(self, shape: SubnetShape) -> bool:
        return (shape.depth in self.depths and shape.ffn_ratio in self.ffn_ratios
                and shape.heads_ratio in self.heads_ratios)

    def validate(self, shape: SubnetShape) -> SubnetShape:
        """Return ``shape`` if allowed, else raise ``ValueError`` naming the allowed choices."""
        shape.check(self.dims)
        for value, choices, name in ((shape.depth, self.depths, "depth"),
                                     (shape.ffn_ratio, self.ffn_ratios, "ffn ratio"),
                                     (shape.heads_ratio, self.heads_ratios, "heads ratio")):
            if value not in choices:
                listed = ", ".join(_fmt(c) for c in choices)
                raise InputError(f"{name} {_fmt(value)} of shape {shape} is not in the search space; choose from {listed}")
        return shape

    def __len__(self) -> int:
        return len(self.depths) * len(self.ffn_ratios) * len(self.heads_ratios)

    def __iter__(self) -> Iterator[SubnetShape]:
        for d, f, h in itertools.product(self.depths, self.ffn_ratios, self.heads_ratios):
            yield SubnetShape(d, f, h)

    def largest(self) -> SubnetShape:
        return SubnetShape(self.depths[-1], self.ffn_ratios[-1], self.heads_ratios[-1])

    def smallest(self) -> SubnetShape:
        return SubnetShape(self.depths[0], self.ffn_ratios[0], self.heads_ratios[0])

    def sample(self, rng: random.Random) -> SubnetShape:
        return SubnetShape(rng.choice(self.depths), rng.choice(self.ffn_ratios), rng.choice(self.heads_ratios))

    def encode(self, shape: SubnetShape) -> list[float]:
        """Features in [0, 1] for predictors: depth fraction, FFN ratio, heads ratio."""
        return [shape.depth / self.dims.num_layers, shape.ffn_ratio, shape.heads_ratio]

    def to_dict(self) -> dict:
        return {"dims": self.dims.to_dict(), "depths": list(self.depths),
                "ffn_ratios": list(self.ffn_ratios), "heads_ratios": list(self.heads_ratios)}

    @classmethod
    def from_dict(cls, data: dict) -> "SearchSpace":
        return cls(ModelDims(**data["dims"]), tuple(data["depths"]), tuple(data["ffn_ratios"]),
                   tuple(data["heads_ratios"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "SearchSpace":
        return cls.from_dict(json.loads(text))
