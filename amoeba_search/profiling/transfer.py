"""Transfer a latency table to another machine (or flow) from a few measured anchor shapes.

A table measured elsewhere ranks shapes well but its milliseconds are another machine's. Measure K anchor
shapes here (spread over the table's latency range: the fastest, the slowest, evenly between), fit a small
correction from the source table's latency to the one measured here, and apply it to every shape:

- ``scale`` (K = 1): ``here = s * there``;
- ``affine`` (K >= 2): ``here = a + b * there`` (a fixed overhead that differs, plus a scale);
- ``loglinear`` (K >= 2): ``log here = a + b * log there`` (a power law; never negative).

``auto`` picks ``scale`` for one anchor and ``affine`` for more (``loglinear`` where affine would predict a
latency <= 0 for a shape of the table). Pure math on numbers and tables; amoeba-profile --transfer measures.
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

KINDS = ("auto", "scale", "affine", "loglinear")
MAX_ANCHORS = 5
TRANSFER_METRICS = ("decode", "prefill")


@dataclass(frozen=True)
class Correction:
    """``here = apply(there)`` for one metric; ``coef``: (s,) for scale, (a, b) for affine and loglinear."""
    kind: str
    coef: tuple

    def apply(self, there) -> np.ndarray:
        x = np.asarray(there, dtype=float)
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

    ``domain``: source latencies the correction will be applied to; with ``auto`` an affine fit that would
    turn one of them non-positive falls back to loglinear."""
    x, y = np.asarray(there, dtype=float), np.asarray(here, dtype=float)
    if kind not in KINDS:
        raise InputError(f"unknown correction kind {kind!r}; choose from {', '.join(KINDS)}")
    if x.shape != y.shape or x.ndim != 1 or len(x) < 1:
        raise InputError("fit_correction needs one source and one measured latency per anchor")
    if (x <= 0).any() or (y <= 0).any():
        raise InputError("anchor latencies must be positive")
    if kind == "auto":
        kind = "scale" if len(x) == 1 or np.ptp(x) <= 1e-9 * x.max() else "affine"
    if kind == "scale":
        return Correction("scale", (float(np.exp(np.mean(np.log(y / x)))),))
    if len(x) < 2 or np.ptp(x) <= 1e-9 * x.max():
        raise InputError(f"a {kind} correction needs at least 2 anchors of different latency; use kind='scale' "
                         f"or measure more anchors")
    if kind == "loglinear":
        a, b = np.polyfit(np.log(x), np.log(y), 1)[::-1]
        return Correction("loglinear", (float(a), float(b)))
    w = 1.0 / y
    design = np.column_stack([np.ones_like(x), x]) * w[:, None]
    a, b = np.linalg.lstsq(design, y * w, rcond=None)[0]
    fit = Correction("affine", (float(a), float(b)))
    if domain is not None and (fit.apply(domain) <= 0).any():
        return fit_correction(x, y, kind="loglinear")
    return fit


def choose_anchors(latency: dict, k: int = 3) -> list:
    """``k`` keys of ``latency`` (shape -> ms) spread over its range: the fastest and the slowest, the rest
    evenly between (by rank); ``k = 1``: the slowest (the largest shape, measured most steadily)."""
    if not 1 <= k <= MAX_ANCHORS:
        raise InputError(f"anchors must be between 1 and {MAX_ANCHORS}, got {k}")
    ranked = sorted(latency, key=lambda s: (latency[s], str(s)))
    if k >= len(ranked):
        return ranked
    if k == 1:
        return [ranked[-1]]
    picks = np.unique(np.round(np.linspace(0, len(ranked) - 1, k)).astype(int))
    return [ranked[i] for i in picks]


def source_latencies(table: LatencyTable, metric: str = "decode") -> dict:
    """Shape -> the source table's median latency (its ``stat``) over all its rows, for ``metric``."""
    points = table.points(metric)
    return {SubnetShape(int(r.depth), float(r.ffn_ratio), float(r.heads_ratio)): float(r.y)
            for r in points.itertuples(index=False)}


def transfer_rows(source: LatencyTable, anchors: dict, *, key: dict, kind: str = "auto",
                  provenance: dict | None = None) -> tuple[list[dict], dict]:
    """Rows of the transferred table and a record of how they were made.

    ``anchors``: shape -> {"decode": ms, "prefill": ms} measured here; ``key``: this table's key columns
    (device, machine, flow, ...). One row per source shape that is not an anchor, role ``transferred``,
    latencies corrected metric by metric; each row's ``extra`` names the source table, the anchors and the
    corrections. The anchors' own measured rows are the caller's (they were measured here)."""
    if not anchors:
        raise InputError("transfer needs at least one anchor shape measured here")
    missing = sorted(set(KEY_COLUMNS) - set(key))
    if missing:
        raise InputError(f"key lacks {', '.join(missing)}; pass this table's key columns (ProfileRequest.key())")
    there = {m: source_latencies(source, m) for m in TRANSFER_METRICS}
    unknown = [str(s) for s in anchors if s not in there["decode"]]
    if unknown:
        raise InputError(f"anchor shape(s) {', '.join(unknown)} are not in the source table; choose anchors "
                         f"among its shapes (choose_anchors)")
    corrections = {}
    for m in TRANSFER_METRICS:
        shapes = list(anchors)
        corrections[m] = fit_correction([there[m][s] for s in shapes], [anchors[s][m] for s in shapes], kind=kind,
                                        domain=list(there[m].values()))
    record = {"transferred_from": provenance or {}, "anchors": {str(s): anchors[s] for s in anchors},
              "corrections": {m: c.to_dict() for m, c in corrections.items()}}
    first = source.rows.drop_duplicates("shape").set_index("shape")
    rows = []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for shape in sorted(there["decode"], key=str):
        if shape in anchors:
            continue
        template = first.loc[str(shape)]
        row = {col: _plain(template[col]) for col in COLUMNS if col in template.index}
        row.update(key)
        row["shape"], row["role"], row["timestamp"], row["elapsed_s"] = str(shape), "transferred", stamp, 0.0
        for m in TRANSFER_METRICS:
            new = float(corrections[m].apply([there[m][shape]])[0])
            factor = new / there[m][shape]
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
