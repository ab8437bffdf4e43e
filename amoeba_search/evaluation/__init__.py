"""Evaluation: perplexity, and lm-evaluation-harness on any subnet (local offline tasks, ppl:, lm-eval names).

>>> from amoeba_search.evaluation import evaluate_tasks, task_items
>>> record = evaluate_tasks(loaded, None, "amoeba_goal_inference,ppl:wiki", shape=shape, limit=200)
>>> items = task_items("amoeba_goal_inference_calib")   # [(context, choices, answer_index), ...]

Heavy imports (lm-eval, datasets) happen only when a harness task runs.
"""
from amoeba_search.evaluation.harness import TaskUnavailable, evaluate_tasks, hub_offline, resolve_tasks
from amoeba_search.evaluation.local_tasks import (MCItem, TaskFileError, local_task_names, random_baseline,
                                                  read_task_file, task_items, write_task_file)
from amoeba_search.evaluation.perplexity import Perplexity, perplexity, sliding_windows
from amoeba_search.evaluation.records import merge_eval_file, merge_eval_record

__all__ = ["MCItem", "Perplexity", "TaskFileError", "TaskUnavailable", "evaluate_tasks", "hub_offline",
           "local_task_names", "merge_eval_file", "merge_eval_record", "perplexity", "random_baseline",
           "read_task_file", "resolve_tasks", "sliding_windows", "task_items", "write_task_file"]
