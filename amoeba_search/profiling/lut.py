"""Latency lookup tables: the CSV schema, loading with validation, and the latency predictor.

One table = one device, machine, flow (with its options), dtype, batch, prompt and context length and
model; one row per measured shape. Latency is modelled as a fixed part plus ``depth`` times a per-layer
part that depends on the width (FFN ratio, heads ratio):

- ``per-width``: for each measured width, least squares ``T = a_w + b_w * depth``;
- ``shared-intercept``: one fixed part for all widths, ``T = c + b_w * depth``;
- ``linear``: ``T = c + depth * (a + b*f + g*h + k*f*h)`` over ratios ``f, h`` (any width, coarser).

Widths that were not measured are interpolated bilinearly between measured ones (per-width and
shared-intercept). The method is chosen by leave-one-shape-out cross-validation over every measured row (so
all rows count, not only the few held out); the evaluation, with the error on held-out rows of a fit that
never saw them, lives beside the table in ``<table>.eval.json``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from amoeba_search.shapes import SubnetShape

SCHEMA_VERSION = 1

# column -> type: str, int, float; a trailing "?" means the value may be empty
COLUMNS: dict[str, str] = {
    "schema_version": "int",
    "device": "str", "machine": "str", "flow": "str", "flow_options": "str", "dtype": "str",
    "batch": "int", "prompt_len": "int", "context_len": "int", "decode_tokens": "int", "threads": "int",
    "model": "str", "model_fingerprint": "str",
    "shape": "str", "depth": "int", "ffn_ratio": "float", "heads_ratio": "float",
    "ffn_channels": "int", "num_heads": "int", "num_kv_heads": "int", "hidden_size": "int", "head_dim": "int",
    "params": "int", "role": "str",
    "prefill_ms_median": "float", "prefill_ms_iqr": "float", "prefill_ms_min": "float", "prefill_repeats": "int",
    "decode_ms_median": "float", "decode_ms_iqr": "float", "decode_ms_min": "float", "decode_repeats": "int",
    "peak_memory_bytes": "int?", "memory_kind": "str?",
    "prefill_energy_mj": "float?", "decode_energy_mj_per_token": "float?", "power_source": "str?",
    "versions": "str", "timestamp": "str", "elapsed_s": "float?", "loadavg_1min": "float?",
    "other_load": "float?",  # cores busy with other processes while this row was measured (CPU contention)
    "extra": "str?",
    # drift-cancelled measurement (amoeba-profile interleaves each shape with a reference shape, A B A B ...):
    # the shape's latency over the reference's, measured in the same process and time window
    "reference_shape": "str?", "decode_ratio": "float?", "prefill_ratio": "float?",
    "reference_decode_ms": "float?", "reference_prefill_ms": "float?",
}
# columns added after schema 1 was first written: tables without them still load (read as empty)
ADDED_COLUMNS = ("reference_shape", "decode_ratio", "prefill_ratio", "reference_decode_ms", "reference_prefill_ms")
KEY_COLUMNS = ("device", "machine", "flow", "flow_options", "dtype", "batch", "prompt_len", "context_len",
               "threads", "model_fingerprint")
ROLES = ("design", "holdout", "extra", "transferred")  # transferred: corrected from another table
METRICS = ("decode", "prefill", "e2e")
METHODS = ("per-width", "shared-intercept", "linear")
_METRIC_COLUMN = {"decode": "decode_ms_median", "prefill": "prefill_ms_median"}
_RATIO_COLUMN = {"decode": "decode_ratio", "prefill": "prefill_ratio"}
STATS = ("median", "min")  # which per-row statistic the predictor fits: the median, or the fastest repeat


class LatencyTableError(ValueError):
    """A malformed or mixed lookup table, or a question it cannot answer."""


def eval_path(table_path: str | os.PathLike) -> Path:
    """``profiles/smollm2-135m/cpu/torch.csv`` -> ``profiles/smollm2-135m/cpu/torch.eval.json``."""
    path = Path(table_path)
    return path.with_name(path.stem + ".eval.json")


# -- writing --------------------------------------------------------------------------------------------

def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(float(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def append_row(path: str | os.PathLike, row: dict) -> None:
    """Append one measurement to the table at ``path`` (header first if new), flushed and fsynced, so a
    killed run loses at most the row being measured."""
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise LatencyTableError(f"row has columns the schema lacks: {', '.join(unknown)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        _upgrade_header(path)
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if new:
            writer.writerow(list(COLUMNS))
        writer.writerow([_cell(row.get(col)) for col in COLUMNS])
        handle.flush()
        os.fsync(handle.fileno())


def _upgrade_header(path: Path) -> None:
    """Rewrite a table written before :data:`ADDED_COLUMNS` existed with today's header (the new cells
    empty), so that appending a row of today's columns keeps every column in its place."""
    with open(path, newline="") as handle:
        header = next(csv.reader(handle), None)
    if header is None or header == list(COLUMNS):
        return
    if [c for c in COLUMNS if c not in ADDED_COLUMNS] != [c for c in header if c not in ADDED_COLUMNS] \
            or set(header) - set(COLUMNS):
        raise LatencyTableError(f"{path} has columns {', '.join(header[:3])}... that are not this schema's; "
                                f"write to another --out")
    from amoeba_search.paths import atomic_write_text

    with open(path, newline="") as handle:
        records = list(csv.DictReader(handle))
    lines = [list(COLUMNS)] + [[record.get(col, "") or "" for col in COLUMNS] for record in records]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    atomic_write_text(path, buffer.getvalue())


def drop_partial_last_line(path: str | os.PathLike) -> bool:
    """Cut a last line that a killed writer left without its newline; True if something was cut."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    from amoeba_search.paths import atomic_write_bytes

    # A new file renamed over the old one, not a truncate: a crash here must not cost the measured rows.
    atomic_write_bytes(path, data[: data.rfind(b"\n") + 1])
    return True


# -- reading and validation -----------------------------------------------------------------------------

def _coerce(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    frame = frame.assign(**{c: "" for c in ADDED_COLUMNS if c not in frame.columns})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise LatencyTableError(f"{where} is not a latency table: it lacks column(s) {', '.join(missing)}")
    frame = frame[list(COLUMNS)].copy()
    for col, kind in COLUMNS.items():
        optional = kind.endswith("?")
        kind = kind.rstrip("?")
        values = frame[col]
        empty = values.isna() | (values.astype(str).str.strip() == "")
        if not optional and empty.any():
            raise LatencyTableError(f"{where}: column {col} is empty in row {int(np.flatnonzero(empty)[0]) + 2}")
        if kind == "str":
            frame[col] = values.astype(object).where(~empty, None).map(lambda v: v if v is None else str(v))
            continue
        numbers = pd.to_numeric(values.where(~empty, None), errors="coerce")
        bad = numbers.isna() & ~empty
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise LatencyTableError(f"{where}: column {col} holds {values.iloc[i]!r} in row {i + 2}, not a number")
        if kind == "int":
            if (numbers.dropna() % 1 != 0).any():
                raise LatencyTableError(f"{where}: column {col} must hold whole numbers")
            frame[col] = numbers.astype("Int64") if optional else numbers.astype("int64")
        else:
            frame[col] = numbers.astype("float64")
    return frame


def validate_frame(frame: pd.DataFrame, where: str = "table") -> pd.DataFrame:
    """Check a table's columns, types, roles, shapes, latencies and that it is not mixed; return it typed."""
    if frame.empty:
        raise LatencyTableError(f"{where} has no rows")
    frame = _coerce(frame, where)
    versions = set(frame["schema_version"])
    if versions != {SCHEMA_VERSION}:
        raise LatencyTableError(f"{where} has schema version {sorted(versions)}; this amoeba-search reads {SCHEMA_VERSION}")
    for col in KEY_COLUMNS:
        values = list(dict.fromkeys(frame[col].tolist()))
        if len(values) > 1:
            raise LatencyTableError(f"{where} mixes {col} values {', '.join(map(repr, values[:3]))}: one table holds "
                                    f"one device, machine, flow, dtype, setting and model; split it into files")
    bad_roles = sorted(set(frame["role"]) - set(ROLES))
    if bad_roles:
        raise LatencyTableError(f"{where} has unknown role(s) {', '.join(bad_roles)}; allowed: {', '.join(ROLES)}")
    for i, row in enumerate(frame.itertuples(index=False)):
        try:
            shape = SubnetShape.parse(row.shape)
        except ValueError as exc:
            raise LatencyTableError(f"{where} row {i + 2}: {exc}") from None
        if (shape.depth, shape.ffn_ratio, shape.heads_ratio) != (row.depth, round(row.ffn_ratio, 3), round(row.heads_ratio, 3)):
            raise LatencyTableError(f"{where} row {i + 2}: shape {row.shape} disagrees with its depth/ratio columns")
    for col in ("prefill_ms_median", "decode_ms_median", "prefill_ms_min", "decode_ms_min", *_RATIO_COLUMN.values(),
                "reference_decode_ms", "reference_prefill_ms"):
        if (frame[col] <= 0).any():
            raise LatencyTableError(f"{where}: {col} must be positive (row {int(np.flatnonzero(frame[col] <= 0)[0]) + 2})")
    references = list(dict.fromkeys(frame["reference_shape"].dropna().tolist()))
    if len(references) > 1:
        raise LatencyTableError(f"{where} mixes reference shapes {', '.join(map(repr, references[:3]))}: the ratios of "
                                f"one table are to one reference; split it into files")
    return frame


# -- fitting ----------------------------------------------------------------------------------------------

Width = tuple  # (ffn_ratio, heads_ratio)


@dataclass
class _Fit:
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


def fit_latency(points: pd.DataFrame, metric: str, method: str) -> _Fit:
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
        return _Fit(method, metric, {}, {}, coef=_lstsq(x, points["y"].to_numpy(float)))
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
        return _Fit(method, metric, intercepts, slopes)
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
        return _Fit(method, metric, {k: float(coef[0]) for k in keys}, {k: float(coef[1 + i]) for k, i in index.items()})
    raise LatencyTableError(f"unknown predictor method {method!r}; choose from {', '.join(METHODS)}")


def _error_stats(predicted: np.ndarray, measured: np.ndarray) -> dict:
    ape = np.abs(predicted - measured) / measured
    return {"n": int(len(ape)), "mape": float(np.mean(ape)), "within_10pct": float(np.mean(ape <= 0.10)),
            "within_5pct": float(np.mean(ape <= 0.05)), "max_ape": float(np.max(ape))}


class LatencyTable:
    """A validated lookup table and the predictor fit from it."""

    def __init__(self, frame: pd.DataFrame, *, path: str | os.PathLike | None = None, stat: str = "median"):
        if stat not in STATS:
            raise LatencyTableError(f"stat must be one of {', '.join(STATS)}, got {stat!r}")
        self.path = Path(path) if path is not None else None
        self.stat = stat
        self.rows = validate_frame(frame, str(path) if path else "table")
        self._fits: dict = {}
        self._chosen: dict | None = None

    def _column(self, metric: str) -> str:
        return _METRIC_COLUMN[metric].replace("_median", f"_{self.stat}")

    @classmethod
    def load(cls, path: str | os.PathLike, *, stat: str = "median") -> "LatencyTable":
        """Read and validate ``path``; ``stat="min"`` fits the fastest repeat of each row instead of the
        median (steadier on a machine shared with other work)."""
        path = Path(path)
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except FileNotFoundError:
            raise LatencyTableError(f"no latency table at {path}; measure one with amoeba-profile") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LatencyTableError(f"{path} is not a readable CSV table: {first}") from None
        return cls(frame, path=path, stat=stat)

    # -- what the table is --------------------------------------------------------------------------------
    @property
    def key(self) -> dict:
        first = self.rows.iloc[0]
        return {col: (first[col].item() if hasattr(first[col], "item") else first[col]) for col in KEY_COLUMNS}

    def __getattr__(self, name):  # device, flow, dtype, ... straight from the key columns
        if name in KEY_COLUMNS or name in ("model", "decode_tokens"):
            value = self.rows.iloc[0][name]
            return value.item() if hasattr(value, "item") else value
        raise AttributeError(name)

    def __len__(self) -> int:
        return len(self.rows)

    def check_model(self, fingerprint: str, *, strict_name: bool = False) -> None:
        """Raise unless the table was measured for a model of this fingerprint (``name|architecture``).

        The architecture part must match; the name part only when ``strict_name`` (latency of random
        weights depends on the architecture alone)."""
        mine = self.model_fingerprint
        ok = mine == fingerprint if strict_name else mine.split("|")[-1] == fingerprint.split("|")[-1]
        if not ok:
            raise LatencyTableError(f"{self.path or 'table'} was measured for {mine}, not {fingerprint}; "
                                    f"profile this model with amoeba-profile --model")

    @property
    def has_ratios(self) -> bool:
        """True when every row holds its drift-cancelled ratio to the table's reference shape (tables written
        by amoeba-profile with interleaving; older tables and transferred ones have none)."""
        return bool(self.rows[list(_RATIO_COLUMN.values())].notna().all().all()
                    and self.rows["reference_shape"].notna().all())

    @property
    def reference_shape(self) -> SubnetShape | None:
        """The shape every ratio is relative to; None for a table without ratios."""
        return SubnetShape.parse(self.rows["reference_shape"].iloc[0]) if self.has_ratios else None

    def points(self, metric: str, roles: Iterable[str] | None = None, *, relative: bool = False) -> pd.DataFrame:
        """Median latency per shape (ms) for ``metric`` over rows of ``roles``; with ``relative``, the median
        ratio of each shape to the reference shape instead."""
        if metric not in _METRIC_COLUMN:
            raise LatencyTableError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        if relative and not self.has_ratios:
            raise LatencyTableError(f"{self.path or 'table'} has no ratio columns (decode_ratio, prefill_ratio): "
                                    f"measure it again with amoeba-profile (interleaving is on by default)")
        rows = self.rows if roles is None else self.rows[self.rows["role"].isin(list(roles))]
        column = _RATIO_COLUMN[metric] if relative else self._column(metric)
        grouped = rows.groupby(["depth", "ffn_ratio", "heads_ratio"], as_index=False)[column].median()
        return grouped.rename(columns={column: "y"})

    # -- prediction ---------------------------------------------------------------------------------------
    def _fit(self, metric: str, method: str, roles: tuple | None = None, relative: bool = False) -> _Fit:
        key = (metric, method, roles, relative)
        if key not in self._fits:
            self._fits[key] = fit_latency(self.points(metric, roles, relative=relative), metric, method)
        return self._fits[key]

    def chosen_method(self, metric: str) -> str:
        """The method with the lowest leave-one-shape-out error for ``metric`` (the first that fits otherwise)."""
        if self._chosen is None:
            self._chosen = self.evaluate().get("chosen", {})
        if metric in self._chosen:
            return self._chosen[metric]
        for method in METHODS:
            try:
                self._fit("decode" if metric == "e2e" else metric, method)
                return method
            except LatencyTableError:
                continue
        raise LatencyTableError(self._too_few_rows(metric))

    def _too_few_rows(self, metric: str) -> str:
        """Why no latency model fits, in terms of what the table has and what to measure next."""
        points = self.points("decode" if metric == "e2e" else metric)
        depths = sorted({int(d) for d in points["depth"]})
        ffns = sorted({float(f) for f in points["ffn_ratio"]})
        heads = sorted({float(h) for h in points["heads_ratio"]})
        # what to measure: a 2 (depths) x 2 (FFN) x 2 (heads) grid around what is there
        if len(depths) >= 2:
            grid_d = depths[-2:]
        else:
            grid_d = [depths[0], depths[0] // 2] if depths[0] > 1 else [1, 2]
        grid_f = ffns[:1] + ffns[-1:] if len(ffns) >= 2 else ffns + [0.5 if ffns[0] != 0.5 else 1.0]
        grid_h = heads[:1] + heads[-1:] if len(heads) >= 2 else heads + [0.5 if heads[0] != 0.5 else 1.0]
        have = {(int(r.depth), round(float(r.ffn_ratio), 3), round(float(r.heads_ratio), 3))
                for r in points.itertuples(index=False)}
        todo = [str(SubnetShape(d, f, h)) for d in sorted(grid_d) for f in sorted(grid_f) for h in sorted(grid_h)
                if (d, round(f, 3), round(h, 3)) not in have]
        where = self.path or "table"
        return (f"{where} has too few rows to fit any latency model: it has depths {depths}, FFN ratios "
                f"{ffns}, heads ratios {heads} and no width "
                f"(FFN ratio, heads ratio) measured at two depths. The per-width and shared-intercept models need "
                f"a width measured at 2 or more depths, the linear model 2 depths and a 2x2 grid of FFN x heads "
                f"ratios, and predicting a width between measured ones needs the 2x2 grid around it; measure at "
                f"least 2 depths and 2 FFN x 2 heads ratios, e.g. amoeba-profile --device {self.device} --flow "
                f"{self.flow} --out {where} --resume --shapes {','.join(todo)} (with the model and settings this "
                f"table was measured with)")

    def isa(self) -> tuple[str, ...] | None:
        """The ISA flags the table's machine had (the ``isa`` of its rows' ``extra``); None for tables written
        before rows recorded them."""
        for text in self.rows["extra"]:
            try:
                extra = json.loads(text) if text else {}
            except (TypeError, ValueError):
                continue
            if isinstance(extra, dict) and isinstance(extra.get("isa"), list):
                return tuple(sorted(str(flag) for flag in extra["isa"]))
        return None

    def predict(self, shape: SubnetShape | str, *, metric: str = "decode", method: str | None = None,
                reference_ms: float | dict | None = None) -> float:
        """Predicted latency in ms: ``decode`` per token, ``prefill`` of the prompt, or ``e2e`` (prefill plus
        ``decode_tokens`` decode steps, i.e. up to ``context_len``).

        ``reference_ms``: the reference shape's latency measured now (a number for ``decode`` or ``prefill``;
        a dict with both for ``e2e``): the prediction is then :meth:`predict_relative` times it, which holds
        while the machine's speed drifts. Without it, the table's absolute latencies are used."""
        shape = SubnetShape.parse(shape) if isinstance(shape, str) else shape
        if reference_ms is not None:
            return self._predict_scaled(shape, metric, method, reference_ms)
        if metric == "e2e":
            return (self.predict(shape, metric="prefill", method=method)
                    + self.decode_tokens * self.predict(shape, metric="decode", method=method))
        if metric not in _METRIC_COLUMN:
            raise LatencyTableError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        return self._fit(metric, method or self.chosen_method(metric)).predict(shape.depth, shape.ffn_ratio,
                                                                                shape.heads_ratio)

    def predict_relative(self, shape: SubnetShape | str, *, metric: str = "decode", method: str | None = None) -> float:
        """Predicted latency of ``shape`` over the reference shape's (:attr:`reference_shape`), both measured in
        the same time window: the same latency models fit on the ratio columns. ``decode`` or ``prefill``."""
        shape = SubnetShape.parse(shape) if isinstance(shape, str) else shape
        if metric not in _RATIO_COLUMN:
            raise LatencyTableError(f"a ratio is per metric: choose decode or prefill, not {metric!r}")
        return self._fit(metric, method or self.chosen_method(metric), relative=True).predict(
            shape.depth, shape.ffn_ratio, shape.heads_ratio)

    def _predict_scaled(self, shape: SubnetShape, metric: str, method: str | None, reference_ms) -> float:
        if metric == "e2e":
            if not isinstance(reference_ms, dict) or not {"decode", "prefill"} <= set(reference_ms):
                raise LatencyTableError("an e2e prediction from a reference needs reference_ms={'decode': ms, "
                                        "'prefill': ms}, the reference shape's latencies measured now")
            return (self._predict_scaled(shape, "prefill", method, reference_ms)
                    + self.decode_tokens * self._predict_scaled(shape, "decode", method, reference_ms))
        value = reference_ms[metric] if isinstance(reference_ms, dict) else reference_ms
        if not isinstance(value, (int, float)) or not value > 0:
            raise LatencyTableError(f"reference_ms must be the reference's {metric} latency in ms (> 0), got {value!r}")
        return self.predict_relative(shape, metric=metric, method=method) * float(value)

    def noise_floor(self) -> dict | None:
        """How far one shape's measurement moves between separate loads, from the reference's repeated loads:
        the relative spread ((max - min) / median) of its per-load decode and prefill latency; None without
        ratios or with a single load."""
        if not self.has_ratios:
            return None
        loads: dict = {}
        columns = ["extra", "reference_decode_ms", "reference_prefill_ms"]
        for text, dec, pre in self.rows[columns].itertuples(index=False):
            try:
                extra = json.loads(text) if text else {}
            except (TypeError, ValueError):
                extra = {}
            load = extra.get("reference_load") if isinstance(extra, dict) else None
            if load is not None:
                loads.setdefault(load, ([], []))
                loads[load][0].append(dec)
                loads[load][1].append(pre)
        if len(loads) < 2:
            return None
        out = {"reference_shape": str(self.reference_shape), "loads": len(loads)}
        for i, metric in enumerate(("decode", "prefill")):
            per_load = np.array([np.median(v[i]) for v in loads.values()])
            spread = (per_load.max() - per_load.min()) / np.median(per_load)
            out[f"reference_{metric}_spread_across_loads"] = float(spread)
        ratios = self.rows.groupby("shape")["decode_ratio"]
        spread = [(g.max() - g.min()) / g.median() for _, g in ratios if len(g) >= 2]
        out["decode_ratio_spread_across_passes"] = float(np.median(spread)) if spread else None
        return out

    def predict_detail(self, shape: SubnetShape | str, *, metric: str = "decode", method: str | None = None) -> dict:
        base = "decode" if metric == "e2e" else metric
        method = method or self.chosen_method(base)
        return {"shape": str(shape), "metric": metric, "latency_ms": self.predict(shape, metric=metric, method=method),
                "method": method, "stat": self.stat, "source": "measured-table", "table": str(self.path) if self.path else None,
                "device": self.device, "flow": self.flow, "dtype": self.dtype}

    # -- accuracy -----------------------------------------------------------------------------------------
    def evaluate(self, holdout: "LatencyTable | pd.DataFrame | None" = None) -> dict:
        """Error of each method, fit on design (and extra) rows, on held-out shapes.

        ``holdout``: another table (or frame) of measured shapes; default: this table's holdout rows."""
        fit_roles = ("design", "extra")
        if holdout is None:
            test = self.rows[self.rows["role"] == "holdout"]
        else:
            test = holdout.rows if isinstance(holdout, LatencyTable) else validate_frame(holdout, "holdout")
        result = {"stat": self.stat, "rows": len(self.rows), "fit_rows": int(self.rows["role"].isin(fit_roles).sum()),
                  "holdout_rows": int(len(test)), "metrics": {}, "chosen": {}}
        if test.empty:
            return result
        columns = {m: self._column(m) for m in _METRIC_COLUMN}
        truth = {m: test.groupby(["depth", "ffn_ratio", "heads_ratio"], as_index=False)[c].median()
                 for m, c in columns.items()}
        merged = truth["decode"].merge(truth["prefill"], on=["depth", "ffn_ratio", "heads_ratio"])
        decode_tokens = int(self.decode_tokens)
        merged["e2e"] = merged[columns["prefill"]] + decode_tokens * merged[columns["decode"]]
        for metric in METRICS:
            result["metrics"][metric] = {}
        for method in METHODS:
            try:
                fits = {m: self._fit(m, method, fit_roles) for m in _METRIC_COLUMN}
                preds = {m: np.array([fits[m].predict(int(r.depth), r.ffn_ratio, r.heads_ratio)
                                      for r in merged.itertuples(index=False)]) for m in fits}
            except LatencyTableError as exc:
                for metric in METRICS:
                    result["metrics"][metric][method] = {"error": str(exc)}
                continue
            preds["e2e"] = preds["prefill"] + decode_tokens * preds["decode"]
            measured = {"decode": merged[columns["decode"]], "prefill": merged[columns["prefill"]], "e2e": merged["e2e"]}
            for metric in METRICS:
                result["metrics"][metric][method] = _error_stats(preds[metric], measured[metric].to_numpy(float))
        if self.has_ratios and holdout is None:
            result["ratio_metrics"] = self._evaluate_ratios(test, fit_roles)
        result["cross_validation"] = cv = self.cross_validate()
        result["chosen_by"] = "leave-one-shape-out cross-validation over all rows (lowest MAPE)"
        for metric in METRICS:
            scored = {m: s["mape"] for m, s in cv[metric].items() if "mape" in s}
            if scored:
                result["chosen"][metric] = min(scored, key=scored.get)
        return result

    def _evaluate_ratios(self, test: pd.DataFrame, fit_roles: tuple) -> dict:
        """Error of each method fit on the design rows' ratios, on the held-out rows' ratios (decode, prefill)."""
        out: dict = {}
        for metric, column in _RATIO_COLUMN.items():
            truth = test.groupby(["depth", "ffn_ratio", "heads_ratio"], as_index=False)[column].median()
            out[metric] = {}
            for method in METHODS:
                try:
                    fit = self._fit(metric, method, fit_roles, relative=True)
                    guess = np.array([fit.predict(int(r.depth), r.ffn_ratio, r.heads_ratio)
                                      for r in truth.itertuples(index=False)])
                except LatencyTableError as exc:
                    out[metric][method] = {"error": str(exc)}
                    continue
                out[metric][method] = _error_stats(guess, truth[column].to_numpy(float))
        return out

    def cross_validate(self) -> dict:
        """Leave-one-shape-out error of each method over every measured shape, per metric."""
        points = {m: self.points(m) for m in ("decode", "prefill")}
        merged = points["decode"].merge(points["prefill"], on=["depth", "ffn_ratio", "heads_ratio"],
                                        suffixes=("_decode", "_prefill"))
        tokens = int(self.decode_tokens)
        out: dict = {metric: {} for metric in METRICS}
        for method in METHODS:
            guess = {"decode": np.full(len(merged), np.nan), "prefill": np.full(len(merged), np.nan)}
            for i in range(len(merged)):
                row = merged.iloc[i]
                for metric, values in guess.items():
                    try:
                        fit = fit_latency(points[metric].drop(points[metric].index[i]), metric, method)
                        values[i] = fit.predict(int(row.depth), row.ffn_ratio, row.heads_ratio)
                    except LatencyTableError:
                        pass  # the rest cannot predict this shape (e.g. its width was measured only here)
            guess["e2e"] = guess["prefill"] + tokens * guess["decode"]
            truth = {"decode": merged["y_decode"].to_numpy(float), "prefill": merged["y_prefill"].to_numpy(float)}
            truth["e2e"] = truth["prefill"] + tokens * truth["decode"]
            for metric in METRICS:
                ok = ~np.isnan(guess[metric])
                if ok.sum() < max(2, 0.75 * len(ok)):
                    out[metric][method] = {"error": f"only {int(ok.sum())} of {len(ok)} shapes predictable"}
                else:
                    out[metric][method] = {**_error_stats(guess[metric][ok], truth[metric][ok]),
                                           "skipped": int((~ok).sum())}
        return out

    def write_eval(self, path: str | os.PathLike | None = None, *, extra: dict | None = None) -> Path:
        """Write :meth:`evaluate` beside the table (``<table>.eval.json``) and return its path."""
        from amoeba_search.paths import atomic_write_text

        if path is None:
            if self.path is None:
                raise LatencyTableError("this table has no path; say where to write its evaluation")
            path = eval_path(self.path)
        report = {"table": self.path.name if self.path else None, "key": self.key,
                  "note": "methods fit on design rows, scored on held-out rows; predictions use all rows",
                  **self.evaluate(), "written": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})}
        atomic_write_text(path, json.dumps(report, indent=2, default=str) + "\n")
        return Path(path)


def table_machine_warning(table: LatencyTable, machine) -> str | None:
    """None when ``table`` was measured on a machine like ``machine`` (a
    :class:`~amoeba_search.profiling.machine.MachineInfo`), else one line saying its latencies are another
    machine's (see :func:`~amoeba_search.profiling.machine.machine_mismatch`). The caller decides where it goes."""
    from amoeba_search.profiling.machine import machine_mismatch

    name = f"latency table {_display_path(table.path)}" if table.path is not None else "the latency table"
    return machine_mismatch(str(table.machine), machine, table_isa=table.isa(), table_name=name)


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory or the checkout (``profiles/...``) where it lies inside."""
    from amoeba_search.profiling import CHECKOUT_PROFILES

    for base in (Path.cwd(), CHECKOUT_PROFILES.parent):
        try:
            return str(Path(path).resolve().relative_to(base.resolve()))
        except (ValueError, OSError):
            continue
    return str(path)
