"""Pareto fronts and 2-D hypervolume in plain numpy. Every objective is minimised."""
from __future__ import annotations

import numpy as np

from amoeba_search.errors import InputError


def pareto_mask(points) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points`` (n, k); duplicates of a front point all stay."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2:
        raise InputError(f"points must be (n, k), got shape {pts.shape}")
    n = len(pts)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        others = pts[np.arange(n) != i]
        dominated = np.any(np.all(others <= pts[i], axis=1) & np.any(others < pts[i], axis=1))
        mask[i] = not dominated
    return mask


def pareto_front(points) -> np.ndarray:
    """Indices of the non-dominated rows, sorted by the first objective."""
    pts = np.asarray(points, dtype=float)
    idx = np.flatnonzero(pareto_mask(pts))
    return idx[np.lexsort(pts[idx].T[::-1])]


def hypervolume_2d(points, reference) -> float:
    """Area dominated by ``points`` (n, 2) and bounded by ``reference`` (both objectives minimised)."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    ref = np.asarray(reference, dtype=float)
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    front = pts[pareto_front(pts)]
    area, prev_y = 0.0, ref[1]
    for x, y in front:  # ascending x, hence descending y
        area += (ref[0] - x) * (prev_y - y)
        prev_y = y
    return float(area)
