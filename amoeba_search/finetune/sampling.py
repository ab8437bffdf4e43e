"""Sandwich sampling: each step trains the largest subnet, the smallest, and k random shapes."""
from __future__ import annotations

import random

from amoeba_search.errors import InputError
from amoeba_search.shapes import SearchSpace, SubnetShape


def sandwich(space: SearchSpace, num_random: int, *, seed: int, step: int) -> list[SubnetShape]:
    """[largest, smallest, k random shapes] for ``step``: a pure function of (seed, step), so a resumed run
    samples exactly what the uninterrupted one would. Random shapes avoid repeats while the space allows."""
    if num_random < 0:
        raise InputError(f"the number of random shapes per step must be >= 0, got {num_random}")
    rng = random.Random(f"sandwich:{seed}:{step}")
    largest, smallest = space.largest(), space.smallest()
    shapes = [largest] + ([smallest] if smallest != largest else [])
    seen = set(shapes)
    for _ in range(num_random):
        shape = space.sample(rng)
        for _retry in range(20):
            if shape not in seen:
                break
            shape = space.sample(rng)
        seen.add(shape)
        shapes.append(shape)
    return shapes
