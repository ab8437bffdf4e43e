"""What a command uses when the user names no strategy, adapter or predictor: the committed artefacts of the
default model under ``profiles/<model>/``, and nothing for any other model (``amoeba_search.session`` composes
these with the rest; this module stays free of torch).

The default model ships the beam-4 DP strategy with FLAP channel means, the SMoL adapter fine-tuned on it (the
whole method: a search over the fine-tuned supernet) and the accuracy predictor fit with that adapter.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amoeba_search.errors import InputError
from amoeba_search.resources import committed_profiles

PROFILES = committed_profiles()  # the checkout's profiles/, or the installed copy (see amoeba_search.resources)

# model alias -> (strategy, adapter directory), relative to profiles/<model>/
COMMITTED = {"smollm2-135m": ("strategy-beam4.json", "adapter")}


@dataclass(frozen=True)
class Artefacts:
    """The strategy and adapter a command runs with, and where each came from (for its output)."""
    strategy: Path | None
    adapter: Path | None
    strategy_source: str
    adapter_source: str

    def describe(self) -> str:
        strategy = "no strategy" if self.strategy is None else f"strategy {_short(self.strategy)}"
        adapter = "no adapter" if self.adapter is None else f"adapter {_short(self.adapter)}"
        return f"{strategy} ({self.strategy_source}), {adapter} ({self.adapter_source})"

    def to_dict(self) -> dict:
        return {"strategy": None if self.strategy is None else str(self.strategy), "strategy_source": self.strategy_source,
                "adapter": None if self.adapter is None else str(self.adapter), "adapter_source": self.adapter_source}


def committed_dir(model: str) -> Path | None:
    """``profiles/<model>/`` for a model that ships artefacts, else None."""
    return PROFILES / model if model in COMMITTED else None


def committed_strategy(model: str) -> Path | None:
    return None if model not in COMMITTED else PROFILES / model / COMMITTED[model][0]


def committed_adapter(model: str) -> Path | None:
    """The shipped adapter directory, if the model has one and it is present in this installation."""
    if model not in COMMITTED:
        return None
    path = PROFILES / model / COMMITTED[model][1]
    return path if (path / "adapter.json").is_file() else None


def resolve_artefacts(model: str, strategy=None, adapter=None, *, no_adapter: bool = False,
                      layers: bool = False) -> Artefacts:
    """The strategy and adapter for ``model``: the ones given, else the committed defaults of the default model.

    ``layers``: the user picks layers by hand, so no default strategy (and no default adapter, which was trained
    on the default strategy's subnets). The default adapter comes only with the default strategy: an adapter is
    tied to the channel order it was trained with.
    """
    if adapter is not None and no_adapter:
        raise InputError("--adapter and --no-adapter contradict each other; pass one")
    if strategy is not None:
        chosen, strategy_source = Path(strategy), "given"
    elif layers or committed_strategy(model) is None:
        chosen, strategy_source = None, "none given" if model not in COMMITTED else "--layers given"
    else:
        chosen, strategy_source = committed_strategy(model), f"default for {model}"
    if adapter is not None:
        return Artefacts(chosen, Path(adapter), strategy_source, "given")
    if no_adapter:
        return Artefacts(chosen, None, strategy_source, "--no-adapter: the raw supernet")
    default = committed_adapter(model)
    if default is not None and chosen is not None and _same_file(chosen, committed_strategy(model)):
        return Artefacts(chosen, default, strategy_source, f"default for {model}; --no-adapter for the raw supernet")
    why = ("none given" if model not in COMMITTED else
           "none shipped in this installation" if default is None else
           "the default adapter fits only the default strategy")
    return Artefacts(chosen, None, strategy_source, why)


def _same_file(a: Path, b: Path | None) -> bool:
    return b is not None and Path(a).resolve() == Path(b).resolve()


def _short(path: Path) -> str:
    """``path`` relative to the profiles folder's parent when inside it (``profiles/...``), else as given."""
    try:
        return str(Path(path).resolve().relative_to(PROFILES.parent))
    except ValueError:
        return str(path)
