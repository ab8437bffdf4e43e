"""Transfer a latency table to another machine (or flow) from a few measured anchor shapes.

A table measured elsewhere ranks shapes well but its milliseconds are another machine's. Measure K anchor
shapes here, fit a small correction from the source table's latency to the one measured here, and apply it to
every shape. The source side is the source table's linear latency model (its fit, not its raw rows: a noisy
row would otherwise carry its noise to this machine), split into three parts that machines price differently:
the fixed part, depth x the attention-side per-layer cost and depth x the FFN-side one
(:meth:`LatencyTable.cost_split`). Corrections:

- ``scale`` (K = 1): ``here = s * there``;
- ``affine`` (K >= 2): ``here = a + b * there`` (a fixed overhead that differs, plus a scale);
- ``loglinear`` (K >= 2): ``log here = a + b * log there`` (a power law; never negative);
- ``grouped`` (K >= 3): ``here = w_fixed * fixed + w_attention * attention + w_ffn * ffn`` (say a machine whose
  matrix units speed up the FFN more than attention).

``auto`` picks ``scale`` for one anchor, ``affine`` for two or three (``loglinear`` where affine would predict a
latency <= 0 for a shape of the table), and for four or five whichever of ``affine`` and ``grouped`` predicts
the anchors better when each is left out in turn. Anchors are chosen so that the fit can tell the parts apart:
the slowest shape first, then the shapes whose split of cost differs most from those already chosen.
Pure math on numbers and tables; amoeba-profile --transfer measures.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from amoeba_search.errors import InputError
from amoeba_search.profiling.lut import LatencyTable
from amoeba_search.profiling.table_schema import COLUMNS, KEY_COLUMNS
from amoeba_search.shapes import SubnetShape

KINDS = ("auto", "scale", "affine", "loglinear", "grouped")
PARTS = ("fixed", "attention", "ffn")
MAX_ANCHORS = 5
GROUPED_AUTO_ANCHORS = 4  # with 3 anchors a grouped fit passes through all of them: nothing left to compare it on
TRANSFER_METRICS = ("decode", "prefill")


@dataclass(frozen=True)
class Correction:
    """``here = apply(there)`` for one metric; ``coef``: (s,) for scale, (a, b) for affine and loglinear,
    (w_fixed, w_attention, w_ffn) for grouped."""
    kind: str
    coef: tuple

    def apply(self, there) -> np.ndarray:
        """``there``: source latencies, shape (n,), or their cost splits, shape (n, 3) (summed for every kind
        but grouped)."""
        x = np.asarray(there, dtype=float)
        if self.kind == "grouped":
            if x.ndim != 2 or x.shape[1] != len(PARTS):
                raise InputError("a grouped correction applies to cost splits (fixed, attention, FFN parts per "
                                 "shape), not to latencies; pass LatencyTable.cost_split of each shape")
            return x @ np.asarray(self.coef, dtype=float)
        if x.ndim == 2:
            x = x.sum(axis=1)
        if self.kind == "scale":
            return self.coef[0] * x
        if self.kind == "affine":
            return self.coef[0] + self.coef[1] * x
        if self.kind == "loglinear":
            return np.exp(self.coef[0] + self.coef[1] * np.log(x))
        raise InputError(f"unknown correction kind {self.kind!r}; choose from {', '.join(KINDS[1:])}")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "coef": [float(c) for c in self.coef]}


def fit_correction(there, here, *, kind: str = "auto", domain=None) -> Correction:
    """Fit ``here ~ correction(there)`` on the anchors (relative error: each anchor weighted by 1/latency).

    ``there``: the source's latency per anchor, shape (K,), or its cost split, shape (K, 3) (needed by
    ``grouped``, and by ``auto`` to consider it). ``domain``: the source latencies or splits the correction will
    be applied to; a fit that would turn one of them non-positive falls back (affine to loglinear, grouped to
    affine)."""
    x, y = np.asarray(there, dtype=float), np.asarray(here, dtype=float)
    if kind not in KINDS:
        raise InputError(f"unknown correction kind {kind!r}; choose from {', '.join(KINDS)}")
    split = x.ndim == 2 and x.shape[1:] == (len(PARTS),)
    total = x.sum(axis=1) if split else x
    if total.ndim != 1 or y.ndim != 1 or len(total) != len(y) or len(y) < 1:
        raise InputError("fit_correction needs one source latency (or cost split) and one measured latency per "
                         "anchor")
    if (total <= 0).any() or (y <= 0).any():
        raise InputError("anchor latencies must be positive")
    flat = np.ptp(total) <= 1e-9 * total.max()
    if kind == "auto":
        if len(y) == 1 or flat:
            kind = "scale"
        elif split and len(y) >= GROUPED_AUTO_ANCHORS:
            fits = [fit_correction(x, y, kind=k, domain=domain) for k in ("affine", "grouped")]
            return min(fits, key=lambda fit: _left_out_error(x, y, fit.kind))
        else:
            kind = "affine"
    if kind == "grouped":
        if not split:
            raise InputError("a grouped correction needs the source's cost split per anchor "
                             "(LatencyTable.cost_split), not latencies")
        return _fit_grouped(x, y, domain)
    domain_total = None if domain is None else _totals(domain)
    if kind == "scale":
        return Correction("scale", (float(np.exp(np.mean(np.log(y / total)))),))
    if len(y) < 2 or flat:
        raise InputError(f"a {kind} correction needs at least 2 anchors of different latency; use kind='scale' "
                         f"or measure more anchors")
    if kind == "loglinear":
        a, b = np.polyfit(np.log(total), np.log(y), 1)[::-1]
        return Correction("loglinear", (float(a), float(b)))
    w = 1.0 / y
    design = np.column_stack([np.ones_like(total), total]) * w[:, None]
    a, b = np.linalg.lstsq(design, y * w, rcond=None)[0]
    fit = Correction("affine", (float(a), float(b)))
    if domain_total is not None and (fit.apply(domain_total) <= 0).any():
        return fit_correction(total, y, kind="loglinear")
    return fit


def _fit_grouped(x: np.ndarray, y: np.ndarray, domain) -> Correction:
    relative = x / y[:, None]
    if len(y) < len(PARTS) or np.linalg.matrix_rank(relative) < len(PARTS):
        raise InputError("a grouped correction needs at least 3 anchors that differ in depth and width (how their "
                         "cost splits into fixed, attention and FFN parts); measure more anchors or use "
                         "kind='affine'")
    weights = np.linalg.lstsq(relative, np.ones(len(y)), rcond=None)[0]
    fit = Correction("grouped", tuple(float(v) for v in weights))
    if domain is not None and np.asarray(domain).ndim == 2 and (fit.apply(domain) <= 0).any():
        return fit_correction(x, y, kind="affine", domain=domain)
    return fit


def _left_out_error(x: np.ndarray, y: np.ndarray, kind: str) -> float:
    """Mean relative error on each anchor of a ``kind`` fit to the others (inf where the others cannot fit it)."""
    errors = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        try:
            guess = fit_correction(x[keep], y[keep], kind=kind).apply(x[i:i + 1])[0]
        except InputError:
            return float("inf")
        errors.append(abs(guess - y[i]) / y[i])
    return float(np.mean(errors))


def _totals(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v.sum(axis=1) if v.ndim == 2 else v


def choose_anchors(costs: dict, k: int = 3) -> list:
    """``k`` keys of ``costs`` to measure as anchors.

    ``costs``: shape -> latency (ms), or shape -> cost split (:func:`source_costs`). With latencies: spread over
    their range, the fastest and the slowest and the rest evenly between (by rank). With cost splits: the
    slowest (the largest shape, measured most steadily), then one at a time the shape whose split (as shares of
    its latency) adds the most volume to those chosen, so that a grouped fit can tell the parts apart (a greedy
    D-optimal design). ``k = 1``: the slowest."""
    if not 1 <= k <= MAX_ANCHORS:
        raise InputError(f"anchors must be between 1 and {MAX_ANCHORS}, got {k}")
    total = {s: float(np.sum(v)) for s, v in costs.items()}
    ranked = sorted(costs, key=lambda s: (total[s], str(s)))
    if k >= len(ranked):
        return ranked
    if k == 1:
        return [ranked[-1]]
    if all(np.ndim(v) == 0 for v in costs.values()):
        picks = np.unique(np.round(np.linspace(0, len(ranked) - 1, k)).astype(int))
        return [ranked[i] for i in picks]
    shares = {s: np.asarray(costs[s], dtype=float) / total[s] for s in ranked}

    def volume(picks) -> float:
        stack = np.array([shares[s] for s in picks])
        return float(np.linalg.slogdet(stack.T @ stack + 1e-9 * np.eye(stack.shape[1]))[1])

    chosen = [ranked[-1]]
    while len(chosen) < k:
        chosen.append(max((s for s in ranked if s not in chosen), key=lambda s: (volume(chosen + [s]), total[s])))
    return chosen


def source_latencies(table: LatencyTable, metric: str = "decode") -> dict:
    """Shape -> the source table's median latency (its ``stat``) over all its rows, for ``metric``."""
    points = table.points(metric)
    return {SubnetShape(int(r.depth), float(r.ffn_ratio), float(r.heads_ratio)): float(r.y)
            for r in points.itertuples(index=False)}


def source_costs(table: LatencyTable, metric: str = "decode", shapes=None) -> dict:
    """Shape -> the table's linear model for it split into (fixed, attention, FFN) ms, for the table's own
    shapes, or for ``shapes`` (any shape of the model: the anchors need not be among the table's)."""
    shapes = list(source_latencies(table, metric)) if shapes is None else list(shapes)
    return {s: table.cost_split(s, metric=metric) for s in shapes}


def transfer_rows(source: LatencyTable, anchors: dict, *, key: dict, kind: str = "auto",
                  provenance: dict | None = None) -> tuple[list[dict], dict]:
    """Rows of the transferred table and a record of how they were made.

    ``anchors``: shape -> {"decode": ms, "prefill": ms} measured here; ``key``: this table's key columns
    (device, machine, flow, ...). One row per source shape that is not an anchor, role ``transferred``: the
    source's linear model corrected metric by metric; each row's ``extra`` names the source table, the anchors
    and the corrections. The anchors' own measured rows are the caller's (they were measured here)."""
    if not anchors:
        raise InputError("transfer needs at least one anchor shape measured here")
    missing = sorted(set(KEY_COLUMNS) - set(key))
    if missing:
        raise InputError(f"key lacks {', '.join(missing)}; pass this table's key columns (ProfileRequest.key())")
    raw = {m: source_latencies(source, m) for m in TRANSFER_METRICS}
    costs = {m: source_costs(source, m, shapes=list(raw[m]) + [s for s in anchors if s not in raw[m]])
             for m in TRANSFER_METRICS}
    corrections = {}
    for m in TRANSFER_METRICS:
        shapes = list(anchors)
        corrections[m] = fit_correction([costs[m][s] for s in shapes], [anchors[s][m] for s in shapes], kind=kind,
                                        domain=[costs[m][s] for s in raw[m]])
    record = {"transferred_from": provenance or {}, "anchors": {str(s): anchors[s] for s in anchors},
              "corrections": {m: c.to_dict() for m, c in corrections.items()},
              "source_latency": "the source table's linear model, split into fixed, attention and FFN parts"}
    first = source.rows.drop_duplicates("shape").set_index("shape")
    rows = []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for shape in sorted(raw["decode"], key=str):
        if shape in anchors:
            continue
        template = first.loc[str(shape)]
        row = {col: _plain(template[col]) for col in COLUMNS if col in template.index}
        row.update(key)
        row["shape"], row["role"], row["timestamp"], row["elapsed_s"] = str(shape), "transferred", stamp, 0.0
        for m in TRANSFER_METRICS:
            new = float(corrections[m].apply(costs[m][shape][None, :])[0])
            factor = new / raw[m][shape]  # the source row's spread, at the corrected median
            row[f"{m}_ms_median"] = new
            row[f"{m}_ms_min"] = float(template[f"{m}_ms_min"]) * factor
            row[f"{m}_ms_iqr"] = float(template[f"{m}_ms_iqr"]) * factor
        for col in ("reference_shape", "decode_ratio", "prefill_ratio", "reference_decode_ms", "reference_prefill_ms",
                    "prefill_energy_mj", "decode_energy_mj_per_token", "power_source", "other_load", "loadavg_1min"):
            row[col] = None  # another machine's numbers: not true here
        row["extra"] = {"transfer": record}
        rows.append(row)
    record["shapes"] = len(rows)
    return rows, record


def _plain(value):
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    return value.item() if hasattr(value, "item") else value


def transfer_error(table: LatencyTable, truth: dict, metric: str = "decode") -> dict:
    """Relative error of ``table``'s predictions against ``truth`` (shape -> ms measured here)."""
    predicted = np.array([table.predict(s, metric=metric) for s in truth])
    measured = np.array(list(truth.values()), dtype=float)
    ape = np.abs(predicted - measured) / measured
    return {"n": int(len(ape)), "mape": float(ape.mean()), "max_ape": float(ape.max()),
            "within_2pct": float((ape <= 0.02).mean())}
