"""Reading the JSON files users hand us: every failure is a one-line ``ValueError`` naming the file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from amoeba_search.errors import InputError


def read_json(path: str | Path, *, what: str, expect: type | tuple = dict, fix: str = "") -> Any:
    """The parsed content of ``path``, which must hold a JSON ``expect`` (an object by default; a tuple of
    types allows several).

    ``what`` names the file for the user ("strategy file"); ``fix`` says how to get a good one. A missing path
    raises ``FileNotFoundError``; a directory, unreadable bytes, invalid JSON or a value of the wrong type raise
    ``ValueError``, all naming the file.
    """
    path = Path(path)
    hint = f"; {fix}" if fix else ""
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory, not a JSON file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {err.start}){hint}") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{what} {path} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
                         f"{hint}") from None
    if not isinstance(data, expect):
        kinds = {dict: "an object", list: "a list"}
        wanted = " or ".join(kinds.get(t, t.__name__) for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise InputError(f"{what} {path} holds a JSON {_json_kind(data)}, not {wanted}{hint}")
    return data


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
