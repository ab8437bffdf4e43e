"""Local multiple-choice tasks: JSONL files of (context, choices, answer) that lm-eval reads offline.

A local task is one JSONL file, one item a line::

    {"context": "Q: How many legs do horses have?\\nA:", "choices": ["two", "four", "six"], "answer": 1}

Its task name is the file stem. The prepared tasks (``prepare_tasks`` in ``bigbench``, which builds on this
module, from BIG-bench) live in ``cache_dir("tasks")`` as ``amoeba_<task>.jsonl`` (the evaluation part) and
``amoeba_<task>_calib.jsonl`` (the calibration part, for stage 1 selection and the search objective);
any other JSONL file of that form can be named by its path. Each file gets an lm-eval task config
(``dataset_path: json`` with an absolute ``data_files``), so nothing ever reaches for a hub.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

from amoeba_search.data.multiple_choice import MCItem, read_task_file
from amoeba_search.errors import InputError, MissingDependency, UnknownNameError
from amoeba_search.paths import cache_dir

TASK_PREFIX = "amoeba_"
CALIB_SUFFIX = "_calib"
CONFIG_VERSION = 1  # bump when the generated lm-eval config changes meaning

logger = logging.getLogger(__name__)


def tasks_dir() -> Path:
    """Where the prepared local tasks live: ``$AMOEBA_CACHE/tasks``."""
    return cache_dir("tasks")


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
        known = local_task_names(directory)
        if name.startswith(TASK_PREFIX) and not any(k.startswith(TASK_PREFIX) for k in known):
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
        raise InputError("no items")
    return sum(1.0 / len(item.choices) for item in items) / len(items)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
