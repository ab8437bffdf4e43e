"""Multiple-choice items, the one format every stage reads: a JSONL file, one item a line::

    {"context": "Q: How many legs do horses have?\\nA:", "choices": ["two", "four", "six"], "answer": 1}

Stage 1 calibrates on such a file, the search scores its objective on one, and the evaluation turns each into an
lm-eval task (:mod:`amoeba_search.evaluation.local_tasks`). Every row is checked the same way wherever it is read.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from amoeba_search.errors import InputError

logger = logging.getLogger(__name__)


class MCItem(NamedTuple):
    """One multiple-choice item: the model scores ``context + " " + choice`` for every choice."""

    context: str
    choices: list[str]
    answer: int  # index of the correct choice


class TaskFileError(InputError):
    """A local task file that cannot be read; the message names the file, the row and the field."""


def check_row(row, where: str) -> MCItem:
    """``row`` (a parsed JSON value) as an ``MCItem``, or ``TaskFileError`` naming ``where`` and the field."""
    if not isinstance(row, dict):
        raise TaskFileError(f"{where}: expected a JSON object with context, choices and answer, "
                            f"got {type(row).__name__}")
    for field in ("context", "choices", "answer"):
        if field not in row:
            raise TaskFileError(f"{where}: missing field {field!r} (each row needs context, choices, answer)")
    context, choices, answer = row["context"], row["choices"], row["answer"]
    if not isinstance(context, str):
        raise TaskFileError(f"{where}: field 'context' must be a string, got {type(context).__name__}")
    if (not isinstance(choices, list) or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)):
        raise TaskFileError(f"{where}: field 'choices' must be a list of at least 2 non-empty strings, "
                            f"got {json.dumps(choices)[:80]}")
    if len(set(choices)) != len(choices):
        raise TaskFileError(f"{where}: field 'choices' repeats a choice: {json.dumps(choices)[:80]}")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise TaskFileError(f"{where}: field 'answer' must be an integer index into 'choices' "
                            f"(0..{len(choices) - 1}), got {json.dumps(answer)}")
    return MCItem(context, list(choices), answer)


def read_task_file(path: str | Path) -> list[MCItem]:
    """Every item of a local task file, checked row by row (line numbers count from 1)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    items = []
    line_no = 0
    with path.open(encoding="utf-8") as handle:
        try:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                where = f"{path}: row {line_no}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise TaskFileError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
                items.append(check_row(row, where))
        except UnicodeDecodeError:
            raise TaskFileError(f"{path}: row {line_no + 1}: not UTF-8 text; convert the file to UTF-8") from None
    if not items:
        raise TaskFileError(f"{path}: no rows; a task file needs at least one item")
    logger.debug("read %d multiple-choice items from %s", len(items), path)
    return items


def write_task_file(path: str | Path, items: Iterable[Sequence]) -> Path:
    """Write ``items`` ((context, choices, answer) each) as a local task file, checking every row first."""
    from amoeba_search.paths import atomic_write_text

    rows = []
    for i, item in enumerate(items):
        context, choices, answer = item
        checked = check_row({"context": context, "choices": list(choices), "answer": answer}, f"item {i}")
        rows.append(json.dumps(checked._asdict(), ensure_ascii=False))
    if not rows:
        raise InputError("no items to write")
    atomic_write_text(path, "\n".join(rows) + "\n")
    logger.info("wrote %d multiple-choice items to %s", len(rows), path)
    return Path(path)
