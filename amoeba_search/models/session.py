"""A supernet ready to run: the model with its selection strategy and, when fine-tuned, its attached adapter.

:func:`amoeba_search.session.open_supernet` builds one from a model spec, a strategy file and an adapter directory."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from amoeba_search.errors import InputError
from amoeba_search.models.supernet import Supernet
from amoeba_search.shapes import SearchSpace, SubnetShape
from amoeba_search.strategy import SelectionStrategy


@dataclass
class LoadedSupernet:
    spec: str
    supernet: Supernet
    tokenizer: Any
    fingerprint: dict[str, Any]
    strategy: SelectionStrategy | None = None
    strategy_path: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    adapter: Any = None  # finetune.smol.SMoLAdapter, attached, when a fine-tuned adapter was given

    def layers_for(self, shape: SubnetShape) -> list[int] | None:
        """Kept layers for ``shape``: from the strategy, or all of them at full depth."""
        if self.strategy is not None:
            return self.strategy.layers_for(shape.depth)
        if shape.depth == self.supernet.dims.num_layers:
            return None
        raise InputError(f"depth {shape.depth} needs a selection strategy (--strategy, made by amoeba-select) "
                         f"or explicit --layers")

    def space(self, **kwargs) -> SearchSpace:
        """The default search space of this model, limited to the depths the strategy covers."""
        if self.strategy is not None and kwargs.get("min_depth") is None:
            kwargs["min_depth"] = min(self.strategy.depth_layers)
        return SearchSpace.default(self.supernet.dims, **kwargs)

    def routes(self, space: SearchSpace) -> list[tuple[SubnetShape, list[int] | None]]:
        """Every shape of ``space`` with its kept layers (what an adapter's gate is centred on)."""
        return [(shape, self.layers_for(shape)) for shape in space]

    def activate(self, shape: SubnetShape) -> None:
        self.supernet.set_active(shape, self.layers_for(shape))

    def export(self, shape: SubnetShape, out_dir, *, layers=None, **kwargs):
        """``export_subnet`` of ``shape``, with the adapter's mixture for that shape merged into the weights."""
        from amoeba_search.models.export import export_subnet

        layers = self.layers_for(shape) if layers is None else layers
        provenance = {**self.provenance, **kwargs.pop("provenance", {})}
        merged = contextlib.nullcontext() if self.adapter is None else self.adapter.merged(shape, layers)
        with merged:
            return export_subnet(self.supernet, shape, out_dir, layers=layers, tokenizer=self.tokenizer,
                                 provenance=provenance, **kwargs)
