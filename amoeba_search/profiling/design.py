"""Which shapes a latency table measures: a small design, not the whole grid.

Latency ~ fixed part + depth x per-layer part(width), so each width (FFN ratio x heads ratio) is measured at the
shallowest and the deepest depth, plus the middle depth at the smallest and largest width to see that depth
really is linear; a few random held-out shapes score the predictor.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from amoeba_search.shapes import SearchSpace, SubnetShape


@dataclass(frozen=True)
class PlannedShape:
    shape: SubnetShape
    role: str  # design | holdout | extra


def design_shapes(space: SearchSpace, *, holdout: int = 12, seed: int = 0) -> list[PlannedShape]:
    """Every width at the shallowest and deepest depth, the middle depth at the smallest and largest
    width, and ``holdout`` random other shapes of ``space``; in a seeded random order (so that drift in
    the machine's speed during a run does not line up with depth or width)."""
    lo, hi, mid = space.depths[0], space.depths[-1], space.depths[len(space.depths) // 2]
    widths = [(f, h) for f in space.ffn_ratios for h in space.heads_ratios]
    design: dict[SubnetShape, str] = {}
    for f, h in widths:
        for d in (lo, hi):
            design.setdefault(SubnetShape(d, f, h), "design")
    for f, h in (widths[0], widths[-1]):
        design.setdefault(SubnetShape(mid, f, h), "design")
    rest = [s for s in space if s not in design]
    rng = random.Random(seed)
    for shape in rng.sample(rest, min(holdout, len(rest))):
        design[shape] = "holdout"
    plan = [PlannedShape(s, r) for s, r in design.items()]
    rng.shuffle(plan)
    return plan


def random_holdout(space: SearchSpace, n: int, *, exclude=(), seed: int = 1) -> list[SubnetShape]:
    """``n`` distinct random shapes of ``space`` not in ``exclude``."""
    rest = [s for s in space if s not in set(exclude)]
    return random.Random(seed).sample(rest, min(n, len(rest)))


def pending_measurements(plan: list[PlannedShape], done: Counter, *, passes: int = 1, seed: int = 0
                         ) -> list[PlannedShape]:
    """The measurements still to make: ``passes`` rows per planned shape, pass after pass (each pass in
    its own seeded order, so a burst of load hits one pass of a shape, not all of them), minus ``done``."""
    left = Counter(done)
    pending = []
    for index in range(max(1, passes)):
        order = list(plan)
        if index:
            random.Random(seed + index).shuffle(order)
        for planned in order:
            key = (str(planned.shape), planned.role)
            if left[key] > 0:
                left[key] -= 1
            else:
                pending.append(planned)
    return pending
