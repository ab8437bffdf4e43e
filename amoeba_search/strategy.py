"""The selection strategy file: which layers each depth keeps, and the importance order of every width.

Versioned JSON, never pickle. Made by ``amoeba-select`` (stage 1) and read by everything that cuts a subnet.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amoeba_search.errors import InputError
from amoeba_search.fingerprint import WEIGHT_KEYS, same_weights
from amoeba_search.paths import atomic_write_text
from amoeba_search.shapes import SubnetShape

SCHEMA_VERSION = 1


def _dumps(value: Any, indent: int = 0) -> str:
    """JSON with nested objects indented but every list of scalars on one line (one line per layer's order)."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k))}: {_dumps(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _dumps(v, indent + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value)


class StrategyMismatchError(InputError):
    """The strategy was computed for another model."""


@dataclass
class SelectionStrategy:
    fingerprint: dict[str, Any]                               # models.fingerprint.model_fingerprint(...)
    depth_layers: dict[int, list[int]]                        # depth -> kept layer indices (ascending)
    depth_metric: dict[int, float] = field(default_factory=dict)  # depth -> calibration metric reached
    ffn_orders: list[list[int]] | None = None                 # per layer: FFN channels, most important first
    head_orders: list[list[list[int]]] | None = None          # per layer, per KV group: heads ranked in group
    calibration: dict[str, Any] = field(default_factory=dict) # source, samples, seq_len, metric, ...
    extra: dict[str, Any] = field(default_factory=dict)       # method details worth keeping
    # FLAP bias compensation (optional): per layer, the mean over calibration tokens of every down_proj input
    # ("ffn", F values) and o_proj input ("attn", H*head_dim values), ORIGINAL indices.
    channel_means: dict[str, list[list[float]]] | None = None

    def layers_for(self, depth: int) -> list[int]:
        if depth not in self.depth_layers:
            known = sorted(self.depth_layers)
            raise InputError(f"the strategy has no layer set for depth {depth}; it covers depths {known[0]}..{known[-1]}")
        return list(self.depth_layers[depth])

    def layers_for_shape(self, shape: SubnetShape) -> list[int]:
        return self.layers_for(shape.depth)

    @property
    def depths(self) -> list[int]:
        return sorted(self.depth_layers)

    def validate(self) -> None:
        """Raise ``ValueError`` if the layer sets or orders cannot belong to the fingerprinted model."""
        dims = self.fingerprint.get("dims") if isinstance(self.fingerprint, dict) else None
        if not dims:
            return
        n, ffn, kv = dims["num_layers"], dims["ffn_size"], dims["num_kv_heads"]
        group = dims["num_heads"] // kv
        for depth, layers in self.depth_layers.items():
            if (len(layers) != depth or list(layers) != sorted(set(layers))
                    or any(not 0 <= i < n for i in layers)):
                raise InputError(f"depth {depth} of the strategy lists {layers}: expected {depth} ascending "
                                 f"distinct layer indices in 0..{n - 1}")
        if self.ffn_orders is not None:
            if len(self.ffn_orders) != n or any(sorted(o) != list(range(ffn)) for o in self.ffn_orders):
                raise InputError(f"ffn_orders must hold, for each of {n} layers, a permutation of 0..{ffn - 1}")
        if self.head_orders is not None:
            if len(self.head_orders) != n or any(len(g) != kv or any(sorted(r) != list(range(group)) for r in g)
                                                 for g in self.head_orders):
                raise InputError(f"head_orders must hold, for each of {n} layers and {kv} KV groups, "
                                 f"a permutation of 0..{group - 1}")
        if self.channel_means is not None:
            width = {"ffn": ffn, "attn": dims["num_heads"] * dims["head_dim"]}
            if (set(self.channel_means) != set(width) or any(
                    len(self.channel_means[k]) != n or any(len(row) != w for row in self.channel_means[k])
                    for k, w in width.items())):
                raise InputError(f"channel_means must hold 'ffn' ({n} x {width['ffn']}) and "
                                 f"'attn' ({n} x {width['attn']}) means")

    def check_model(self, fingerprint: dict[str, Any]) -> None:
        """Raise ``StrategyMismatchError`` unless ``fingerprint`` is the model this strategy was made for."""
        mine, theirs = self.fingerprint, fingerprint
        differs = "dims" if mine.get("dims", theirs.get("dims")) != theirs.get("dims", mine.get("dims")) else None
        if differs is None and same_weights(mine, theirs) is False:
            differs = "weights"
        if differs:
            raise StrategyMismatchError(
                f"strategy was computed for another model ({differs} differ: "
                f"{mine.get('name', '?')} vs {theirs.get('name', '?')}); run amoeba-select on this model")
        if same_weights(mine, theirs) is None and any(k in mine for k in WEIGHT_KEYS.values()):
            raise StrategyMismatchError(
                "strategy records no weight checksum for a model loaded in this dtype; load the model with "
                "--dtype fp32, or re-make the strategy with amoeba-select")

    # -- JSON ----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "fingerprint": self.fingerprint,
            "calibration": self.calibration,
            "depths": {str(d): {"layers": self.depth_layers[d], "metric": self.depth_metric.get(d)}
                       for d in sorted(self.depth_layers)},
            "ffn_orders": self.ffn_orders,
            "head_orders": self.head_orders,
            "extra": self.extra,
            # only when present, so strategies without it keep their digest
            **({"channel_means": self.channel_means} if self.channel_means is not None else {}),
        }

    def digest(self) -> str:
        """A hash of the strategy's content: what identifies it wherever its file lives."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "strategy") -> "SelectionStrategy":
        """The strategy in ``data``; ``source`` names where it came from in error messages (its file)."""
        if not isinstance(data, dict):
            raise InputError(f"{source} is a JSON {type(data).__name__}, not a selection strategy object; "
                             "make one with amoeba-select")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InputError(f"{source} has schema version {version!r}, not {SCHEMA_VERSION}; recompute it with "
                             "amoeba-select")
        try:
            if not isinstance(data["fingerprint"], dict):
                raise TypeError("'fingerprint' is not an object")
            depths = {int(d): v for d, v in data["depths"].items()}
            strategy = cls(
                fingerprint=data["fingerprint"],
                depth_layers={d: list(v["layers"]) for d, v in depths.items()},
                depth_metric={d: v["metric"] for d, v in depths.items() if v.get("metric") is not None},
                ffn_orders=data.get("ffn_orders"),
                head_orders=data.get("head_orders"),
                calibration=data.get("calibration", {}),
                extra=data.get("extra", {}),
                channel_means=data.get("channel_means"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            what = f"no {err.args[0]!r} entry" if isinstance(err, KeyError) and err.args else str(err)
            raise InputError(f"{source} is malformed ({what}); make it again with amoeba-select") from err
        try:
            strategy.validate()
        except ValueError as err:
            raise InputError(f"{source}: {err}") from err
        except (KeyError, TypeError, AttributeError) as err:
            raise InputError(f"{source} is malformed (its fingerprint's dims: {err!r}); make it again with "
                             "amoeba-select") from err
        return strategy

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, _dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "SelectionStrategy":
        from amoeba_search.jsonfile import read_json

        data = read_json(path, what="strategy file", fix="make one with amoeba-select")
        return cls.from_dict(data, source=f"strategy file {path}")
