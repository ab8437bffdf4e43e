"""Evaluation: perplexity, and lm-evaluation-harness on any subnet (local offline tasks, ppl:, lm-eval names).

>>> from amoeba_search.evaluation import evaluate_tasks, task_items
>>> record = evaluate_tasks(loaded, None, "amoeba_goal_inference,ppl:wiki", shape=shape, limit=200)
>>> items = task_items("amoeba_goal_inference_calib")   # [(context, choices, answer_index), ...]

Heavy imports (torch, lm-eval, datasets) happen only when a name is first used or a harness task runs.
"""
from __future__ import annotations

import importlib
import sys
import types

_MC = "amoeba_search.data.multiple_choice"

# name -> submodule (or a module outside the package); imported on first use, so
# ``import amoeba_search.evaluation`` does not pull in torch
_EXPORTS = {
    "TaskUnavailable": "harness", "evaluate_tasks": "harness", "hub_offline": "harness", "resolve_tasks": "harness",
    "local_task_names": "local_tasks", "random_baseline": "local_tasks", "task_items": "local_tasks",
    # the multiple-choice format lives below every stage (stage 1 calibrates on it too)
    "MCItem": _MC, "TaskFileError": _MC, "read_task_file": _MC, "write_task_file": _MC,
    "Perplexity": "perplexity", "perplexity": "perplexity", "sliding_windows": "perplexity",
    "merge_eval_file": "records", "merge_eval_record": "records",
}

__all__ = ["MCItem", "Perplexity", "TaskFileError", "TaskUnavailable", "evaluate_tasks", "hub_offline",
           "local_task_names", "merge_eval_file", "merge_eval_record", "perplexity", "random_baseline",
           "read_task_file", "resolve_tasks", "sliding_windows", "task_items", "write_task_file"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _EXPORTS[name]
    value = getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``evaluation.perplexity`` the function (as the eager imports had it) when the submodule of that
    name is imported later: the import system then sets the package attribute to the submodule."""

    def __setattr__(self, name, value):
        if (isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}"
                and _EXPORTS.get(name) == name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
