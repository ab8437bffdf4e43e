"""Eval records beside other per-shape outputs (a Pareto front, a list of evaluated subnets).

An entry is any JSON object with a ``"shape"``; an eval record (``evaluate_tasks``) is merged into the entry
of the same shape under ``"eval"``: task results accumulate, newer results of a task replace older ones.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from amoeba_search.errors import InputError
from amoeba_search.paths import atomic_write_text
from amoeba_search.shapes import SubnetShape

LIST_KEYS = ("front", "entries", "subnets", "records")  # where a JSON object keeps its list of entries


def _same_shape(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    try:
        return SubnetShape.parse(str(a)) == SubnetShape.parse(str(b))  # d24-f0.75-h0.667 == d24-f0.75-h0.6670
    except ValueError:
        return str(a) == str(b)


def merge_eval_record(entries: list[dict], record: dict) -> list[dict]:
    """Merge ``record`` into the entry of its shape in ``entries`` (in place; appended if none); return it."""
    shape = record.get("shape")
    if shape is None:
        raise InputError("the eval record has no shape to merge by; evaluate with a shape (or label one)")
    if not isinstance(entries, list):
        raise InputError(f"expected a list of entries, got {type(entries).__name__}")
    for entry in entries:
        if isinstance(entry, dict) and _same_shape(entry.get("shape"), shape):
            break
    else:
        entry = {"shape": shape}
        entries.append(entry)
    merged = copy.deepcopy(entry.get("eval") or {})
    tasks = {**merged.get("tasks", {}), **copy.deepcopy(record.get("tasks", {}))}
    merged.update({k: copy.deepcopy(v) for k, v in record.items() if k != "tasks"})
    merged["tasks"] = tasks
    entry["eval"] = merged
    return entries


def merge_eval_file(path: str | Path, record: dict) -> Path:
    """Merge ``record`` into the JSON file at ``path`` (created if absent), written atomically.

    The file holds a list of entries, or an object keeping them under one of ``LIST_KEYS``.
    """
    path = Path(path)
    data: Any = []
    if path.exists():
        from amoeba_search.jsonfile import read_json

        data = read_json(path, what="result file", expect=(list, dict),
                         fix="give a JSON list of entries or a Pareto front file")
    if isinstance(data, list):
        entries = data
    elif isinstance(data, dict):
        key = next((k for k in LIST_KEYS if isinstance(data.get(k), list)), None)
        if key is None:
            raise InputError(f"{path} is a JSON object without a list of entries under any of {', '.join(LIST_KEYS)}")
        entries = data[key]
    else:
        raise InputError(f"{path} must hold a JSON list of entries or an object with one")
    merge_eval_record(entries, record)
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
    return path
