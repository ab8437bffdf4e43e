"""Search workers that share the work: two processes on one storage (a journal file, then a real PostgreSQL
server) split the real evaluations with no duplicates, lose none, and together run the trials asked for."""
import json
import multiprocessing as mp
import os
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from amoeba_search.search.oracle import MetricOracle, design_sample
from amoeba_search.search.storage import SharedEvaluations, evaluations_study_name, open_storage
from amoeba_search.shapes import SubnetShape
from tests.postgres_server import PostgresServer, PostgresStartError, PostgresUnavailable
from tests.search.test_search import SPACE, latency, metric

SETTINGS = {"metric": "synthetic", "workers": "test"}


def _counting_oracle(counter: Path, cache: Path) -> MetricOracle:
    def evaluate_one(shape):
        with open(counter, "a") as handle:  # O_APPEND: one line per real evaluation, from any process
            handle.write(f"{shape} {os.getpid()}\n")
        time.sleep(0.03)  # an evaluation takes a while, so the workers overlap
        return float(metric([shape])[0])

    return MetricOracle(evaluate_one, SETTINGS, cache)


def _worker(storage, out, counter, method, trials, barrier):
    from amoeba_search.search.job import run_job

    oracle = _counting_oracle(Path(counter), Path(out) / "evaluations.json")
    barrier.wait(120)
    job = run_job(SPACE, oracle, lambda s: float(latency([s])[0]), budget_ms=35, method=method, trials=trials,
                  storage=storage, study_name="workers", predictor_path=Path(out) / f"predictor-{os.getpid()}.json",
                  verify="all", settings={"model": "toy", "device": "cpu", "flow": "torch", "table": "t.csv"})
    summary = {"evaluations": job.real_evaluations, "study": job.settings["study"], "trials": job.result.trials,
               "verified": [v["shape"] for v in job.verified]}
    Path(out, f"worker-{os.getpid()}.json").write_text(json.dumps(summary))


def _run_workers(storage, tmp_path, method, trials, n=2):
    counter = tmp_path / "evaluated.txt"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n)
    workers = [ctx.Process(target=_worker, args=(storage, str(tmp_path), str(counter), method, trials, barrier))
               for _ in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
        assert w.exitcode == 0
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("worker-*.json"))]
    lines = counter.read_text().split("\n")[:-1]
    return summaries, [line.split()[0] for line in lines], {line.split()[1] for line in lines}


def _check_shared(storage, tmp_path, summaries, evaluated, pids, method, trials):
    # every shape evaluated once in all, by both workers together, and every worker counted only its own
    assert len(evaluated) == len(set(evaluated)), "a shape was evaluated twice"
    assert len(pids) == 2, "one worker did all the evaluations"
    assert sum(s["evaluations"] for s in summaries) == len(evaluated)
    sample = design_sample(SPACE, 40, seed=0)
    sample += design_sample(SPACE, 12, seed=1, exclude=sample, extremes=False)
    assert {str(s) for s in sample} <= set(evaluated)
    assert {v for s in summaries for v in s["verified"]} <= set(evaluated)
    # nothing lost: the storage and the shared cache file hold every evaluation
    store = open_storage(storage)
    shared = SharedEvaluations(store, evaluations_study_name(SETTINGS))
    assert {str(s) for s in shared.known()} == set(evaluated)
    cache = json.loads((tmp_path / "evaluations.json").read_text())
    assert set(cache["metrics"]) == set(evaluated)
    # the trial count is global: both workers together ran the trials asked for
    assert len({s["study"] for s in summaries}) == 1
    name = summaries[0]["study"]
    names = {st.study_name: st for st in optuna.get_all_study_summaries(store)}
    complete = (optuna.trial.TrialState.COMPLETE,)
    if method == "nsga2":
        study = optuna.load_study(study_name=name, storage=store)
        assert len(study.get_trials(states=complete)) == trials
    else:
        widths = [n for n in names if n.startswith(f"{name}-widths-")]
        assert len(widths) == 1 and f"{name}-coarse" in names and f"{name}-refine" in names
        coarse = optuna.load_study(study_name=f"{name}-coarse", storage=store)
        study = optuna.load_study(study_name=widths[0], storage=store)
        assert len(study.get_trials(states=complete)) == trials - len(coarse.trials)
        assert len(coarse.trials) == 2 * len(SPACE.depths)  # each coarse shape stored once, not once a worker
        refine = optuna.load_study(study_name=f"{name}-refine", storage=store)
        assert {t.user_attrs["stage"] for t in refine.trials} == {"refine"} and refine.user_attrs["stage"] == "refine"
    assert study.metric_names == ["metric", "latency_ms"]
    assert study.user_attrs["model"] == "toy" and study.user_attrs["budget"] == "35 ms"
    assert {"device", "flow", "table", "strategy", "adapter", "predictor"} <= set(study.user_attrs)
    assert name.startswith("workers-p")  # the predictor's identity is part of the study's name


def test_two_workers_share_a_journal_storage(tmp_path):
    storage = str(tmp_path / "study.journal")
    summaries, evaluated, pids = _run_workers(storage, tmp_path, "hierarchical", 60)
    _check_shared(storage, tmp_path, summaries, evaluated, pids, "hierarchical", 60)


def test_shared_evaluations_claim_each_shape_once_and_skip_duplicates(tmp_path):
    store = open_storage(tmp_path / "j.journal")
    shared = SharedEvaluations(store, "evals")
    shapes = list(SPACE)[:4]
    # a racing worker enqueued shape 0 a second time: only the older copy is evaluated
    shared.study.enqueue_trial({}, user_attrs={"shape": str(shapes[0])})
    shared.study.enqueue_trial({}, user_attrs={"shape": str(shapes[0])})
    calls = []
    got = shared.evaluate(shapes, lambda s: (calls.append(s) or float(metric([s])[0]), 0.1, {"n": 1}))
    assert sorted(map(str, calls)) == sorted(map(str, shapes))
    assert all(here for *_, here in got.values()) and got[shapes[1]][2] == {"n": 1}
    states = [t.state for t in shared.study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == 1
    again = SharedEvaluations(store, "evals").evaluate(shapes, lambda s: pytest.fail("evaluated again"))
    assert {s: v[0] for s, v in again.items()} == {s: v[0] for s, v in got.items()}


def test_a_claim_left_by_a_dead_worker_is_evaluated_again(tmp_path):
    store = open_storage(tmp_path / "j.journal")
    shared = SharedEvaluations(store, "evals")
    shape = SubnetShape.parse(str(SPACE.largest()))
    shared.study.enqueue_trial({}, user_attrs={"shape": str(shape)})
    trial = shared.study.trials[0]
    store.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.RUNNING)
    dead = subprocess.Popen(["true"])
    dead.wait()
    store.set_trial_user_attr(trial._trial_id, "host", shared.host)
    store.set_trial_user_attr(trial._trial_id, "pid", dead.pid)
    got = shared.evaluate([shape], lambda s: (1.5, 0.0, None))
    assert got[shape][0] == 1.5 and got[shape][3]


def test_the_cache_file_merges_entries_of_other_processes(tmp_path):
    cache = tmp_path / "evaluations.json"
    first = MetricOracle(lambda s: 1.0, SETTINGS, cache)
    second = MetricOracle(lambda s: 2.0, SETTINGS, cache)  # read the (empty) cache before the first wrote
    a, b = list(SPACE)[:2]
    first([a])
    second([b])
    assert set(json.loads(cache.read_text())["metrics"]) == {str(a), str(b)}
    assert MetricOracle(lambda s: pytest.fail("cached"), SETTINGS, cache)([a, b]).tolist() == [1.0, 2.0]


# -- a real PostgreSQL server --------------------------------------------------------------------------

@pytest.fixture
def postgres_url():
    """A PostgreSQL server of our own in a temporary directory (tests/postgres_server.py); its URL."""
    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailable as why:
        pytest.skip(str(why))
    except PostgresStartError as err:
        pytest.fail(str(err))
    try:
        yield server.create_database("amoeba")
    finally:
        server.stop()


def test_two_workers_share_a_postgresql_storage(postgres_url, tmp_path):
    open_storage(postgres_url)  # the tables, made once (as a first `amoeba-search --storage URL` does)
    summaries, evaluated, pids = _run_workers(postgres_url, tmp_path, "nsga2", 30)
    _check_shared(postgres_url, tmp_path, summaries, evaluated, pids, "nsga2", 30)
