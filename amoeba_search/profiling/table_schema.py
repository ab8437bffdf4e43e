"""The latency lookup table's CSV schema: its columns and types, appending rows crash-safely, and validation.

One table = one device, machine, flow (with its options), dtype, batch, prompt and context length and
model; one row per measured shape.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from amoeba_search.errors import InputError
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
METRIC_COLUMN = {"decode": "decode_ms_median", "prefill": "prefill_ms_median"}
RATIO_COLUMN = {"decode": "decode_ratio", "prefill": "prefill_ratio"}
STATS = ("median", "min")  # which per-row statistic the predictor fits: the median, or the fastest repeat


class LatencyTableError(InputError):
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
    for col in ("prefill_ms_median", "decode_ms_median", "prefill_ms_min", "decode_ms_min", *RATIO_COLUMN.values(),
                "reference_decode_ms", "reference_prefill_ms"):
        if (frame[col] <= 0).any():
            raise LatencyTableError(f"{where}: {col} must be positive (row {int(np.flatnonzero(frame[col] <= 0)[0]) + 2})")
    references = list(dict.fromkeys(frame["reference_shape"].dropna().tolist()))
    if len(references) > 1:
        raise LatencyTableError(f"{where} mixes reference shapes {', '.join(map(repr, references[:3]))}: the ratios of "
                                f"one table are to one reference; split it into files")
    return frame
