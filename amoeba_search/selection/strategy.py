"""Moved to :mod:`amoeba_search.strategy` (an artefact every stage reads, so it sits below them all); this name
stays for existing imports."""
from amoeba_search.strategy import SCHEMA_VERSION, SelectionStrategy, StrategyMismatchError

__all__ = ["SCHEMA_VERSION", "SelectionStrategy", "StrategyMismatchError"]
