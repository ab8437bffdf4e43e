"""Costs a search can budget besides latency: energy per decoded token, from a table's energy columns."""
from __future__ import annotations

from typing import Callable

from amoeba_search.errors import InputError
from amoeba_search.shapes import SubnetShape

ENERGY_COLUMN = "decode_energy_mj_per_token"


def energy_points(table):
    """Median energy per token (mJ) per measured shape of ``table`` (a ``LatencyTable``), columns depth,
    ffn_ratio, heads_ratio, y; raises ValueError with the fix when the table has no energy."""
    rows = table.rows
    where = table.path or "the table"
    if ENERGY_COLUMN not in rows.columns or rows[ENERGY_COLUMN].isna().all():
        raise InputError(f"{where} has no energy measurements ({ENERGY_COLUMN} is empty): profile on a device "
                         f"that reports power (amoeba-profile on an NVIDIA GPU or a Jetson) or use --metric decode")
    measured = rows[rows[ENERGY_COLUMN].notna()]
    grouped = measured.groupby(["depth", "ffn_ratio", "heads_ratio"], as_index=False)[ENERGY_COLUMN].median()
    return grouped.rename(columns={ENERGY_COLUMN: "y"})


def energy_predictor(table) -> Callable[[SubnetShape | str], float]:
    """Energy per decoded token (mJ) of any shape, fit on ``table``'s energy column with the latency table's
    models (per-width, shared-intercept, linear: the first that fits)."""
    from amoeba_search.profiling.latency_model import METHODS, fit_latency
    from amoeba_search.profiling.table_schema import LatencyTableError

    points = energy_points(table)
    errors = []
    for method in METHODS:
        try:
            fit = fit_latency(points, "decode", method)
            break
        except LatencyTableError as exc:
            errors.append(f"{method}: {exc}")
    else:
        raise InputError(f"{table.path or 'the table'} has too few energy rows to fit: {'; '.join(errors)}")

    def predict(shape: SubnetShape | str) -> float:
        shape = SubnetShape.parse(shape) if isinstance(shape, str) else shape
        return fit.predict(shape.depth, shape.ffn_ratio, shape.heads_ratio)

    predict.method = fit.method
    return predict
