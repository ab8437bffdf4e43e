"""Drift-cancelled timing: a shape measured between two measurements of a reference shape (R S R S R ...),
in the same process and time window, and stored as the ratio of the two.

On a shared machine one shape's latency spreads 5-19% between loads and drifts 12-36% within an hour; both
shapes of a pair feel the same drift, so their ratio stays put. With each shape round bracketed by reference
rounds, ``ratio_i = shape_i / mean(reference_i, reference_i+1)`` cancels a drift that is linear over the
bracket exactly.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from amoeba_search.errors import InputError
from amoeba_search.profiling.flows.base import Measurement


def bracketed_ratios(shape_ms: Sequence[float], reference_ms: Sequence[float]) -> np.ndarray:
    """``shape_ms[i] / mean(reference_ms[i], reference_ms[i + 1])`` for each shape round ``i``: round ``i``
    of the shape was timed between reference rounds ``i`` and ``i + 1``."""
    shape = np.asarray(shape_ms, dtype=float)
    reference = np.asarray(reference_ms, dtype=float)
    if shape.ndim != 1 or len(shape) < 1:
        raise InputError("bracketed_ratios needs at least one shape round")
    if len(reference) != len(shape) + 1:
        raise InputError(f"{len(shape)} shape round(s) need {len(shape) + 1} reference rounds around them "
                         f"(R S R S ... R), got {len(reference)}")
    if (reference <= 0).any() or (shape <= 0).any():
        raise InputError("latencies must be positive to form a ratio")
    return shape / (0.5 * (reference[:-1] + reference[1:]))


def interleaved_ratios(shape_runs: Sequence[Measurement], reference_runs: Sequence[Measurement]) -> dict:
    """Per metric (decode, prefill): the median bracketed ratio of the shape to the reference over the rounds
    (each round's median repeat), and the reference's median latency (ms) in that window.

    ``reference_runs`` holds one more round than ``shape_runs``: R S R S ... R."""
    out = {}
    for metric, attr in (("decode", "decode_ms_per_token"), ("prefill", "prefill_ms")):
        shape = [float(np.median(getattr(m, attr))) for m in shape_runs if getattr(m, attr)]
        reference = [float(np.median(getattr(m, attr))) for m in reference_runs if getattr(m, attr)]
        if not shape or not reference:
            out[f"{metric}_ratio"], out[f"reference_{metric}_ms"] = None, None
            continue
        out[f"{metric}_ratio"] = float(np.median(bracketed_ratios(shape, reference)))
        out[f"reference_{metric}_ms"] = float(np.median(reference))
    return out
