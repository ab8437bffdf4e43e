"""The latency lookup table: a validated CSV of measured shapes and the latency model fitted from it.

The method is chosen by leave-one-shape-out cross-validation over every measured row (so all rows count, not
only the few held out); the evaluation, with the error on held-out rows of a fit that never saw them, lives
beside the table in ``<table>.eval.json``. The schema is in :mod:`~amoeba_search.profiling.table_schema`, the
models in :mod:`~amoeba_search.profiling.latency_model`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from amoeba_search.profiling.latency_model import METHODS, LatencyFit, error_stats, fit_latency
from amoeba_search.profiling.table_schema import (KEY_COLUMNS, METRIC_COLUMN, METRICS, RATIO_COLUMN, STATS,
                                                  LatencyTableError, eval_path, validate_frame)
from amoeba_search.shapes import SubnetShape


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
        return METRIC_COLUMN[metric].replace("_median", f"_{self.stat}")

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
        return bool(self.rows[list(RATIO_COLUMN.values())].notna().all().all()
                    and self.rows["reference_shape"].notna().all())

    @property
    def reference_shape(self) -> SubnetShape | None:
        """The shape every ratio is relative to; None for a table without ratios."""
        return SubnetShape.parse(self.rows["reference_shape"].iloc[0]) if self.has_ratios else None

    def points(self, metric: str, roles: Iterable[str] | None = None, *, relative: bool = False) -> pd.DataFrame:
        """Median latency per shape (ms) for ``metric`` over rows of ``roles``; with ``relative``, the median
        ratio of each shape to the reference shape instead."""
        if metric not in METRIC_COLUMN:
            raise LatencyTableError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        if relative and not self.has_ratios:
            raise LatencyTableError(f"{self.path or 'table'} has no ratio columns (decode_ratio, prefill_ratio): "
                                    f"measure it again with amoeba-profile (interleaving is on by default)")
        rows = self.rows if roles is None else self.rows[self.rows["role"].isin(list(roles))]
        column = RATIO_COLUMN[metric] if relative else self._column(metric)
        grouped = rows.groupby(["depth", "ffn_ratio", "heads_ratio"], as_index=False)[column].median()
        return grouped.rename(columns={column: "y"})

    # -- prediction ---------------------------------------------------------------------------------------
    def _fit(self, metric: str, method: str, roles: tuple | None = None, relative: bool = False) -> LatencyFit:
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
        if metric not in METRIC_COLUMN:
            raise LatencyTableError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        return self._fit(metric, method or self.chosen_method(metric)).predict(shape.depth, shape.ffn_ratio,
                                                                                shape.heads_ratio)

    def cost_split(self, shape: SubnetShape | str, *, metric: str = "decode") -> np.ndarray:
        """The table's linear latency model for ``shape`` in ms, split into its fixed, attention-side and FFN-side
        parts (:meth:`LatencyFit.cost_split`); ``decode`` or ``prefill``."""
        shape = SubnetShape.parse(shape) if isinstance(shape, str) else shape
        try:
            fit = self._fit(metric, "linear")
        except LatencyTableError as exc:
            raise LatencyTableError(f"{self.path or 'table'} cannot split latency into parts: {exc}") from None
        return fit.cost_split(shape.depth, shape.ffn_ratio, shape.heads_ratio)

    def predict_relative(self, shape: SubnetShape | str, *, metric: str = "decode", method: str | None = None) -> float:
        """Predicted latency of ``shape`` over the reference shape's (:attr:`reference_shape`), both measured in
        the same time window: the same latency models fit on the ratio columns. ``decode`` or ``prefill``."""
        shape = SubnetShape.parse(shape) if isinstance(shape, str) else shape
        if metric not in RATIO_COLUMN:
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
        out["decode_ratio_spread_across_passes"] = self.ratio_spread_across_passes()
        return out

    def pass_index(self) -> pd.Series:
        """Each row's pass (0, 1, ...), aligned with :attr:`rows`: passes run one after another, so the i-th row of
        a shape in a role belongs to pass i."""
        return self.rows.groupby(["shape", "role"]).cumcount()

    def ratio_spread_across_passes(self) -> float | None:
        """Over the shapes measured in more than one pass: the median of each shape's relative decode-ratio
        spread ((max - min) / median); None without ratios or without a shape measured twice."""
        if not self.has_ratios:
            return None
        spread = [(g.max() - g.min()) / g.median() for _, g in self.rows.groupby("shape")["decode_ratio"] if len(g) >= 2]
        return float(np.median(spread)) if spread else None

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
        columns = {m: self._column(m) for m in METRIC_COLUMN}
        truth = {m: test.groupby(["depth", "ffn_ratio", "heads_ratio"], as_index=False)[c].median()
                 for m, c in columns.items()}
        merged = truth["decode"].merge(truth["prefill"], on=["depth", "ffn_ratio", "heads_ratio"])
        decode_tokens = int(self.decode_tokens)
        merged["e2e"] = merged[columns["prefill"]] + decode_tokens * merged[columns["decode"]]
        for metric in METRICS:
            result["metrics"][metric] = {}
        for method in METHODS:
            try:
                fits = {m: self._fit(m, method, fit_roles) for m in METRIC_COLUMN}
                preds = {m: np.array([fits[m].predict(int(r.depth), r.ffn_ratio, r.heads_ratio)
                                      for r in merged.itertuples(index=False)]) for m in fits}
            except LatencyTableError as exc:
                for metric in METRICS:
                    result["metrics"][metric][method] = {"error": str(exc)}
                continue
            preds["e2e"] = preds["prefill"] + decode_tokens * preds["decode"]
            measured = {"decode": merged[columns["decode"]], "prefill": merged[columns["prefill"]], "e2e": merged["e2e"]}
            for metric in METRICS:
                result["metrics"][metric][method] = error_stats(preds[metric], measured[metric].to_numpy(float))
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
        for metric, column in RATIO_COLUMN.items():
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
                out[metric][method] = error_stats(guess, truth[column].to_numpy(float))
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
                    out[metric][method] = {**error_stats(guess[metric][ok], truth[metric][ok]),
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
