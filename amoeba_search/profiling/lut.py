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
}
KEY_COLUMNS = ("device", "machine", "flow", "flow_options", "dtype", "batch", "prompt_len", "context_len",
               "threads", "model_fingerprint")
ROLES = ("design", "holdout", "extra")
METRICS = ("decode", "prefill", "e2e")
METHODS = ("per-width", "shared-intercept", "linear")
_METRIC_COLUMN = {"decode": "decode_ms_median", "prefill": "prefill_ms_median"}
STATS = ("median", "min")  # which per-row statistic the predictor fits: the median, or the fastest repeat


class LatencyTableError(ValueError):
    """A malformed or mixed lookup table, or a question it cannot answer."""


def eval_path(table_path: str | os.PathLike) -> Path:
    """``profiles/cpu/torch.csv`` -> ``profiles/cpu/torch.eval.json``."""
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
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if new:
            writer.writerow(list(COLUMNS))
        writer.writerow([_cell(row.get(col)) for col in COLUMNS])
        handle.flush()
        os.fsync(handle.fileno())


def drop_partial_last_line(path: str | os.PathLike) -> bool:
    """Cut a last line that a killed writer left without its newline; True if something was cut."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    keep = data[: data.rfind(b"\n") + 1]
    with open(path, "wb") as handle:
        handle.write(keep)
        handle.flush()
        os.fsync(handle.fileno())
    return True


# -- reading and validation -----------------------------------------------------------------------------

def _coerce(frame: pd.DataFrame, where: str) -> pd.DataFrame:
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
    for col in ("prefill_ms_median", "decode_ms_median", "prefill_ms_min", "decode_ms_min"):
        if (frame[col] <= 0).any():
            raise LatencyTableError(f"{where}: {col} must be positive (row {int(np.flatnonzero(frame[col] <= 0)[0]) + 2})")
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

    def points(self, metric: str, roles: Iterable[str] | None = None) -> pd.DataFrame:
        """Median latency per shape (ms) for ``metric`` over rows of ``roles``."""
        if metric not in _METRIC_COLUMN:
            raise LatencyTableError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        rows = self.rows if roles is None else self.rows[self.rows["role"].isin(list(roles))]
        column = self._column(metric)
        grouped = rows.groupby(["depth", "ffn_ratio", "heads_ratio"], as_index=False)[column].median()
        return grouped.rename(columns={column: "y"})

    # -- prediction ---------------------------------------------------------------------------------------
    def _fit(self, metric: str, method: str, roles: tuple | None = None) -> _Fit:
        key = (metric, method, roles)
        if key not in self._fits:
            self._fits[key] = fit_latency(self.points(metric, roles), metric, method)
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
        raise LatencyTableError(f"{self.path or 'table'} has too few rows to fit any latency model")

    def predict(self, shape: SubnetShape | str, *, metric: str = "decode", method: str | None = None) -> float:
        """Predicted latency in ms: ``decode`` per token, ``prefill`` of the prompt, or ``e2e`` (prefill plus
        ``decode_tokens`` decode steps, i.e. up to ``context_len``)."""
        shape = SubnetShape.parse(shape) if isinstance(shape, str) else shape
        if metric == "e2e":
            return (self.predict(shape, metric="prefill", method=method)
                    + self.decode_tokens * self.predict(shape, metric="decode", method=method))
        if metric not in _METRIC_COLUMN:
            raise LatencyTableError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        return self._fit(metric, method or self.chosen_method(metric)).predict(shape.depth, shape.ffn_ratio,
                                                                                shape.heads_ratio)

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
        result["cross_validation"] = cv = self.cross_validate()
        result["chosen_by"] = "leave-one-shape-out cross-validation over all rows (lowest MAPE)"
        for metric in METRICS:
            scored = {m: s["mape"] for m, s in cv[metric].items() if "mape" in s}
            if scored:
                result["chosen"][metric] = min(scored, key=scored.get)
        return result

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
