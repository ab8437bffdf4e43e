"""Local multiple-choice tasks: JSONL files of (context, choices, answer) that lm-eval reads offline.

A local task is one JSONL file, one item a line::

    {"context": "Q: How many legs do horses have?\\nA:", "choices": ["two", "four", "six"], "answer": 1}

Its task name is the file stem. The prepared tasks (``prepare_tasks``, from BIG-bench, see ``bigbench``)
live in ``cache_dir("tasks")`` as ``amoeba_<task>.jsonl`` (the evaluation part) and
``amoeba_<task>_calib.jsonl`` (the calibration part, for stage 1 selection and the search objective);
any other JSONL file of that form can be named by its path. Each file gets an lm-eval task config
(``dataset_path: json`` with an absolute ``data_files``), so nothing ever reaches for a hub.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from amoeba_search.errors import UnknownNameError
from amoeba_search.paths import cache_dir

TASK_PREFIX = "amoeba_"
CALIB_SUFFIX = "_calib"
CONFIG_VERSION = 1  # bump when the generated lm-eval config changes meaning

logger = logging.getLogger(__name__)


class MCItem(NamedTuple):
    """One multiple-choice item: the model scores ``context + " " + choice`` for every choice."""

    context: str
    choices: list[str]
    answer: int  # index of the correct choice


class TaskFileError(ValueError):
    """A local task file that cannot be read; the message names the file, the row and the field."""


def tasks_dir() -> Path:
    """Where the prepared local tasks live: ``$AMOEBA_CACHE/tasks``."""
    return cache_dir("tasks")


# -- reading and checking ----------------------------------------------------------------------------

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
        raise ValueError("no items to write")
    atomic_write_text(path, "\n".join(rows) + "\n")
    logger.info("wrote %d multiple-choice items to %s", len(rows), path)
    return Path(path)


# -- finding tasks by name ---------------------------------------------------------------------------

def is_task_path(spec: str) -> bool:
    return spec.endswith(".jsonl")


def local_task_names(directory: str | Path | None = None) -> list[str]:
    """Names of the local tasks in ``directory`` (default: the prepared ones), calibration parts included."""
    directory = Path(directory) if directory is not None else tasks_dir()
    return sorted(p.stem for p in directory.glob("*.jsonl")) if directory.is_dir() else []


def task_file(spec: str, directory: str | Path | None = None) -> Path | None:
    """The JSONL file of local task ``spec`` (a name in ``directory`` or a path), or None if not local."""
    if is_task_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"task file {spec} does not exist")
        return path.resolve()
    directory = Path(directory) if directory is not None else tasks_dir()
    path = directory / f"{spec}.jsonl"
    return path.resolve() if path.is_file() else None


def task_name(spec: str) -> str:
    return Path(spec).stem if is_task_path(spec) else spec


def task_items(name: str, *, limit: int | None = None, directory: str | Path | None = None) -> list[MCItem]:
    """The items of a local task as (context, choices, answer_index) tuples, in file order.

    For the stages that score multiple choice themselves (selection's accuracy metric, the search
    objective): use ``amoeba_<task>_calib`` there and keep ``amoeba_<task>`` for reporting.
    """
    path = task_file(name, directory)
    if path is None:
        from amoeba_search.evaluation.bigbench import TASKS

        known = local_task_names(directory)
        if name.startswith(TASK_PREFIX) and name.removeprefix(TASK_PREFIX).removesuffix(CALIB_SUFFIX) in TASKS:
            from amoeba_search.errors import MissingDependency

            raise MissingDependency(f"local task {name!r} is not prepared yet; run `amoeba-eval --prepare-tasks` "
                                    "(downloads the bigbench sdist with pip once and extracts the task files)")
        raise UnknownNameError(f"unknown local task {name!r}; {did_you_mean(name, known)}")
    items = read_task_file(path)
    return items if limit is None else items[:limit]


def did_you_mean(name: str, known: Sequence[str], *, shown: int = 12) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.6)
    if close:
        return "did you mean " + ", ".join(close) + "?"
    if not known:
        return "no local tasks are prepared (run `amoeba-eval --prepare-tasks`)"
    listed = ", ".join(sorted(known)[:shown]) + (", ..." if len(known) > shown else "")
    return f"known: {listed}"


# -- lm-eval config ----------------------------------------------------------------------------------

def lm_eval_config(name: str, path: str | Path) -> dict:
    """An lm-eval task config reading ``path`` (absolute) with the packaged ``json`` builder: no hub."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(path).resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",      # column names: taken as they are, no template rendering
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": CONFIG_VERSION},
    }


def write_lm_eval_yaml(name: str, path: str | Path, directory: str | Path) -> Path:
    """Write ``<name>.yaml`` beside the data so that ``lm_eval --include_path DIR`` finds the task too."""
    import yaml

    from amoeba_search.paths import atomic_write_text

    out = Path(directory) / f"{name}.yaml"
    atomic_write_text(out, yaml.safe_dump(lm_eval_config(name, path), sort_keys=False, allow_unicode=True))
    return out


# -- facts about a task ------------------------------------------------------------------------------

def random_baseline(items: Sequence[MCItem]) -> float:
    """Expected accuracy of picking a choice uniformly at random."""
    if not items:
        raise ValueError("no items")
    return sum(1.0 / len(item.choices) for item in items) / len(items)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
