import multiprocessing as mp

import numpy as np
import optuna
import pytest

from amoeba_search.search.pareto import hypervolume_2d
from amoeba_search.search.search import search
from amoeba_search.shapes import ModelDims, SearchSpace

DIMS = ModelDims(num_layers=30, hidden_size=576, ffn_size=1536, num_heads=9, num_kv_heads=3, head_dim=64)
SPACE = SearchSpace.default(DIMS)


def latency(shapes):  # fixed part + depth x per-layer cost that grows with width
    return np.array([5 + s.depth * (0.4 + 0.8 * s.ffn_ratio + 0.3 * s.heads_ratio) for s in shapes])


def metric(shapes):  # perplexity-like: explodes as the net shrinks
    return np.array([20 * np.exp(3 * (1 - s.depth / 30) + 0.8 * (1 - s.ffn_ratio) + 0.5 * (1 - s.heads_ratio))
                     for s in shapes])


def _hv(result, ref):
    return hypervolume_2d([[p.latency_ms, p.metric] for p in result.front], ref)


@pytest.mark.parametrize("method, trials, target", [("hierarchical", 100, 0.99), ("nsga2", 250, 0.95)])
def test_search_finds_the_exhaustive_front(method, trials, target):
    budget = 35.0
    truth = search(SPACE, metric, latency, budget_ms=budget, method="exhaustive")
    found = search(SPACE, metric, latency, budget_ms=budget, method=method, trials=trials, seed=0)
    ref = [budget, max(metric(list(SPACE)))]
    assert all(p.latency_ms <= budget for p in found.front)
    assert len(found.points) < len(SPACE)  # it did not just enumerate
    assert _hv(found, ref) / _hv(truth, ref) >= target


def memory(shapes):  # MB: heads cost memory (KV cache) but little latency in this toy, so the two differ
    return np.array([50 + s.depth * (4 + 6 * s.ffn_ratio + 12 * s.heads_ratio) for s in shapes])


@pytest.mark.parametrize("method, trials", [("hierarchical", 100), ("nsga2", 250)])
def test_memory_budget_is_a_second_constraint(method, trials):
    budget, memory_budget = 35.0, 400.0
    kwargs = dict(budget_ms=budget, memory_fn=memory, memory_budget_mb=memory_budget)
    truth = search(SPACE, metric, latency, method="exhaustive", **kwargs)
    unconstrained = search(SPACE, metric, latency, budget_ms=budget, method="exhaustive")
    assert any(m > memory_budget for m in memory([p.shape for p in unconstrained.front]))  # it binds
    found = search(SPACE, metric, latency, method=method, trials=trials, seed=0, **kwargs)
    assert found.front and all(p.latency_ms <= budget and p.memory_mb <= memory_budget for p in found.front)
    ref = [budget, max(metric(list(SPACE)))]
    assert _hv(found, ref) / _hv(truth, ref) >= (0.99 if method == "hierarchical" else 0.9)
    with pytest.raises(ValueError, match="memory budget needs a memory function"):
        search(SPACE, metric, latency, budget_ms=budget, memory_budget_mb=100.0)


def test_budget_no_shape_meets():
    result = search(SPACE, metric, latency, budget_ms=1.0, method="hierarchical", trials=10)
    assert result.front == [] and result.best() is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown search method"):
        search(SPACE, metric, latency, budget_ms=10, method="annealing")
    with pytest.raises(ValueError, match="positive"):
        search(SPACE, metric, latency, budget_ms=0)


def test_storage_resume(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = search(SPACE, metric, latency, budget_ms=35, method="nsga2", trials=20, storage=storage, study_name="s")
    assert first.trials == 20
    again = search(SPACE, metric, latency, budget_ms=35, method="nsga2", trials=30, storage=storage, study_name="s")
    assert again.trials == 30  # 20 resumed + 10 new, not 30 new
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 30


def _worker(storage):
    search(SPACE, metric, latency, budget_ms=35, method="nsga2", trials=0, storage=storage, study_name="shared")
    study = optuna.load_study(study_name="shared", storage=storage)
    from amoeba_search.search.search import _Objectives, _trial_shape

    objectives = _Objectives(metric, latency)

    def objective(trial):
        point = objectives([_trial_shape(trial, SPACE.depths, SPACE)])[0]
        trial.set_constraint("latency_budget", point.latency_ms - 35)
        return point.metric, point.latency_ms

    study.optimize(objective, n_trials=15)


def test_two_workers_share_one_sqlite_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(study_name="shared", storage=storage, directions=["minimize", "minimize"])
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_worker, args=(storage,)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert len(trials) == 30
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
