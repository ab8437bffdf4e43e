"""One call from a model spec (and optionally a strategy file) to a ready supernet: what every command needs."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from amoeba_search.models.fingerprint import model_fingerprint
from amoeba_search.models.loading import ALIASES, DEFAULT_MODEL, load_model
from amoeba_search.models.supernet import Supernet
from amoeba_search.strategy import SelectionStrategy
from amoeba_search.shapes import SearchSpace, SubnetShape

logger = logging.getLogger(__name__)


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
        raise ValueError(f"depth {shape.depth} needs a selection strategy (--strategy, made by amoeba-select) "
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


def open_supernet(spec: str = DEFAULT_MODEL, strategy: str | Path | None = None,
                  adapter: str | Path | None = None, *, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu", device_map: str | dict | None = None,
                  max_memory: dict | None = None) -> LoadedSupernet:
    """Load ``spec`` in ``dtype`` on ``device`` (or spread by ``device_map``), check ``strategy`` was made for
    it, order widths by the strategy's importance (and turn on bias compensation when the strategy stores
    channel means) and, with ``adapter`` (an amoeba-finetune output), add the fine-tuned SMoL adapter to every
    forward pass."""
    chosen = None if strategy is None else SelectionStrategy.load(strategy)  # fail fast, before the weights
    model, tokenizer = load_model(spec, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory)
    fingerprint = model_fingerprint(model, name=spec)
    if chosen is not None:
        chosen.check_model(fingerprint)
    supernet = Supernet(model,
                        ffn_orders=chosen.ffn_orders if chosen else None,
                        head_orders=chosen.head_orders if chosen else None,
                        channel_means=chosen.channel_means if chosen else None)
    provenance = {"source_model": spec, "source_fingerprint": fingerprint}
    if strategy is not None:
        provenance["strategy"] = str(strategy)
    if spec in ALIASES:
        provenance["source_gguf"] = str(ALIASES[spec].path())
    elif str(spec).endswith(".gguf"):
        provenance["source_gguf"] = str(Path(spec).expanduser().resolve())
    loaded = LoadedSupernet(spec, supernet, tokenizer, fingerprint, chosen,
                            None if strategy is None else str(strategy), provenance)
    if adapter is not None:
        from amoeba_search.finetune.smol import SMoLAdapter

        loaded.adapter = SMoLAdapter.load(adapter, supernet).attach().eval()
        loaded.provenance["adapter"] = str(adapter)
    logger.info("loaded %s (%s on %s), strategy %s, adapter %s", spec, dtype, device, strategy, adapter)
    return loaded
