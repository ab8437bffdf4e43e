"""The quality floor: a subnet whose metric is far above the full model's is unusable (it generates gibberish),
whatever its speed. Search marks such shapes and never chooses them; export warns before writing one."""
from __future__ import annotations

import math
from dataclasses import dataclass

from amoeba_search.errors import InputError

DEFAULT_FLOOR = "10x"  # ten times the full model's held-out perplexity


def quality_floor(max_metric: float | str | None, full_metric: float) -> float | None:
    """``max_metric`` as a number: a number as it is, ``"<k>x"`` as k times the full model's metric."""
    if max_metric is None:
        return None
    text = str(max_metric).strip().lower()
    try:
        value = float(text[:-1]) * full_metric if text.endswith("x") else float(text)
    except ValueError:
        raise InputError(f"quality floor {max_metric!r}: give a number (e.g. 400) or a multiple of the full "
                         f"model's metric (e.g. 10x)") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"quality floor {max_metric!r} must be a positive, finite number")
    return value


def parse_floor(text: str) -> str | None:
    """A ``--max-metric`` value checked now (before any work): None for ``none``, else the rule as given."""
    if str(text).strip().lower() == "none":
        return None
    quality_floor(text, 1.0)  # raises ValueError, one line, for a malformed rule
    return text


@dataclass(frozen=True)
class QualityCheck:
    shape: str
    metric: float
    full_metric: float
    floor: float
    rule: str

    @property
    def usable(self) -> bool:
        return self.metric <= self.floor

    def warning(self) -> str:
        return (f"{self.shape} has held-out perplexity {self.metric:.4g}, above the quality floor {self.floor:.4g} "
                f"({self.rule}; the full model has {self.full_metric:.4g}): it is likely to generate gibberish")


def check_quality(loaded, shape, blocks, *, layers=None, max_metric: float | str = DEFAULT_FLOOR) -> QualityCheck:
    """Held-out perplexity of ``shape`` of ``loaded`` (with ``layers``, default the strategy's) and of the full
    model on ``blocks``, against the floor. Leaves ``shape`` active."""
    from amoeba_search.evaluation.perplexity import perplexity

    full_shape = loaded.supernet.full_shape()
    loaded.activate(full_shape)
    full = perplexity(loaded.supernet, blocks, batch_size=4).ppl
    loaded.supernet.set_active(shape, loaded.layers_for(shape) if layers is None else layers)
    metric = perplexity(loaded.supernet, blocks, batch_size=4).ppl
    return QualityCheck(str(shape), metric, full, quality_floor(max_metric, full), str(max_metric))
