"""Latency models fitted to a lookup table's rows.

Latency is modelled as a fixed part plus ``depth`` times a per-layer part that depends on the width (FFN ratio,
heads ratio):

- ``per-width``: for each measured width, least squares ``T = a_w + b_w * depth``;
- ``shared-intercept``: one fixed part for all widths, ``T = c + b_w * depth``;
- ``linear``: ``T = c + depth * (a + b*f + g*h + k*f*h)`` over ratios ``f, h`` (any width, coarser).

Widths that were not measured are interpolated bilinearly between measured ones (per-width and
shared-intercept).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from amoeba_search.profiling.table_schema import LatencyTableError

METHODS = ("per-width", "shared-intercept", "linear")


@dataclass
class LatencyFit:
    """One fitted latency model: predicts a metric (ms, or a ratio to the reference) from depth and width."""

    method: str
    metric: str
    intercepts: dict      # width -> fixed part (ms)  [per-width / shared-intercept]
    slopes: dict          # width -> per-layer part (ms)
    coef: np.ndarray | None = None  # linear: [c, a, b, g, k]

    def _width_params(self, f: float, h: float) -> tuple[float, float]:
        if (f, h) in self.slopes:
            return self.intercepts[(f, h)], self.slopes[(f, h)]
        fs = sorted({w[0] for w in self.slopes})
        hs = sorted({w[1] for w in self.slopes})

        def bracket(values, x, name):
            if not values[0] <= x <= values[-1]:
                raise LatencyTableError(f"{name} {x:g} lies outside the measured {name}s "
                                        f"{', '.join(format(v, 'g') for v in values)}; measure that width")
            hi = next(v for v in values if v >= x)
            lo = max(v for v in values if v <= x)
            return lo, hi

        f0, f1 = bracket(fs, f, "ffn ratio")
        h0, h1 = bracket(hs, h, "heads ratio")
        corners = [(f0, h0), (f0, h1), (f1, h0), (f1, h1)]
        absent = [c for c in corners if c not in self.slopes]
        if absent:
            raise LatencyTableError(f"cannot interpolate width f{f:g}-h{h:g}: width f{absent[0][0]:g}-h{absent[0][1]:g} "
                                    f"was not measured")
        tf = 0.0 if f1 == f0 else (f - f0) / (f1 - f0)
        th = 0.0 if h1 == h0 else (h - h0) / (h1 - h0)
        weights = [(1 - tf) * (1 - th), (1 - tf) * th, tf * (1 - th), tf * th]
        a = sum(w * self.intercepts[c] for w, c in zip(weights, corners))
        b = sum(w * self.slopes[c] for w, c in zip(weights, corners))
        return a, b

    def cost_split(self, depth: int, f: float, h: float) -> np.ndarray:
        """The linear model's prediction in three parts that machines price differently: the fixed part (embedding,
        head, per-token overhead), ``depth`` x the attention-side per-layer part (``a + g*h``) and ``depth`` x the
        FFN-side one (``b*f + k*f*h``); they sum to :meth:`predict`."""
        if self.method != "linear":
            raise LatencyTableError(f"only the linear model splits its cost into parts, not {self.method!r}")
        c, a, b, g, k = self.coef
        return np.array([c, depth * (a + g * h), depth * f * (b + k * h)], dtype=float)

    def predict(self, depth: int, f: float, h: float) -> float:
        if self.method == "linear":
            c, a, b, g, k = self.coef
            return float(c + depth * (a + b * f + g * h + k * f * h))
        a, b = self._width_params(round(f, 3), round(h, 3))
        return float(a + b * depth)


def _lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    w = 1.0 / np.maximum(np.abs(y), 1e-12)  # relative error: weight each row by 1/latency
    coef, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
    return coef


def fit_latency(points: pd.DataFrame, metric: str, method: str) -> LatencyFit:
    """Fit ``method`` to ``points`` (columns depth, ffn_ratio, heads_ratio, y)."""
    if points.empty:
        raise LatencyTableError("no measured rows to fit")
    widths = points.groupby(["ffn_ratio", "heads_ratio"])
    if method == "linear":
        d = points["depth"].to_numpy(float)
        f = points["ffn_ratio"].to_numpy(float)
        h = points["heads_ratio"].to_numpy(float)
        x = np.column_stack([np.ones_like(d), d, d * f, d * h, d * f * h])
        if np.linalg.matrix_rank(x) < x.shape[1]:
            raise LatencyTableError("the linear model needs at least two depths and a 2x2 grid of widths")
        return LatencyFit(method, metric, {}, {}, coef=_lstsq(x, points["y"].to_numpy(float)))
    if method == "per-width":
        intercepts, slopes, single = {}, {}, []
        for key, group in widths:
            if group["depth"].nunique() >= 2:
                x = np.column_stack([np.ones(len(group)), group["depth"].to_numpy(float)])
                intercepts[key], slopes[key] = _lstsq(x, group["y"].to_numpy(float))
            else:
                single.append((key, group))
        if not intercepts:
            raise LatencyTableError("the per-width model needs at least one width measured at two depths")
        fixed = float(np.median(list(intercepts.values())))
        for key, group in single:  # one depth only: borrow the typical fixed part
            intercepts[key] = fixed
            slopes[key] = float(np.median((group["y"] - fixed) / group["depth"]))
        return LatencyFit(method, metric, intercepts, slopes)
    if method == "shared-intercept":
        keys = list(widths.groups)
        index = {k: i for i, k in enumerate(keys)}
        x = np.zeros((len(points), 1 + len(keys)))
        x[:, 0] = 1.0
        for row, (f, h, d) in enumerate(points[["ffn_ratio", "heads_ratio", "depth"]].itertuples(index=False)):
            x[row, 1 + index[(f, h)]] = d
        if np.linalg.matrix_rank(x) < x.shape[1]:
            raise LatencyTableError("the shared-intercept model needs at least one width measured at two depths")
        coef = _lstsq(x, points["y"].to_numpy(float))
        return LatencyFit(method, metric, {k: float(coef[0]) for k in keys}, {k: float(coef[1 + i]) for k, i in index.items()})
    raise LatencyTableError(f"unknown predictor method {method!r}; choose from {', '.join(METHODS)}")


def error_stats(predicted: np.ndarray, measured: np.ndarray) -> dict:
    """Relative error of predictions against measurements: MAPE, share within 5% and 10%, worst case."""
    ape = np.abs(predicted - measured) / measured
    return {"n": int(len(ape)), "mape": float(np.mean(ape)), "within_10pct": float(np.mean(ape <= 0.10)),
            "within_5pct": float(np.mean(ape <= 0.05)), "max_ape": float(np.max(ape))}
