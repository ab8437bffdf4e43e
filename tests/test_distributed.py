"""Processes that split a DP row's or a search's evaluations (gloo on the CPU) find exactly what one process
finds."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from amoeba_search.distributed import ShardedObjective, shard_map
from amoeba_search.selection.depth_dp import depth_dp
from amoeba_search.selection.objective import FunctionObjective


def metric(kept):
    """Not additive over layers, so the DP's choices depend on every evaluation landing in its place."""
    return sum((i + 1) ** 1.5 for i in kept) - 3.0 * (2 in kept and 5 in kept) + 0.1 * len(kept) ** 2


def _spawn(target, world, *args):
    """Run ``target(rank, world, port, queue, *args)`` in ``world`` processes; their queued results by rank."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, world, port, queue, *args)) for r in range(world)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return results


def _worker(rank, world, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        inner = FunctionObjective(8, metric)
        result = depth_dp(ShardedObjective(inner), min_depth=3, beam=2)
        squares = shard_map(lambda part: [x * x for x in part], list(range(11)))
        queue.put((rank, result.depth_layers, result.evaluations, inner.evaluations, squares))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_share_the_dp_rows_and_agree_with_one():
    alone = depth_dp(FunctionObjective(8, metric), min_depth=3, beam=2)
    results = _spawn(_worker, 2)
    for rank, layers, evaluations, local, squares in results:
        assert layers == alone.depth_layers and evaluations == alone.evaluations
        assert squares == [x * x for x in range(11)]
    # the work was split: each process scored about half of the remove-candidates (the full network on both)
    locals_ = [r[3] for r in results]
    assert sum(locals_) == alone.evaluations + 1 and max(locals_) - min(locals_) <= len(alone.depth_layers)


def test_one_process_runs_everything_itself():
    assert shard_map(lambda part: [x + 1 for x in part], [1, 2, 3]) == [2, 3, 4]
    assert torch.distributed.is_available()


def _search_job(out, calls):
    from amoeba_search.search.job import run_job
    from amoeba_search.search.oracle import MetricOracle
    from tests.search.test_search import SPACE, latency, metric as search_metric

    def evaluate_one(shape):
        calls.append(str(shape))
        return float(search_metric([shape])[0])

    oracle = MetricOracle(evaluate_one, {"metric": "synthetic"}, out / "evaluations.json")
    job = run_job(SPACE, oracle, lambda s: float(latency([s])[0]), budget_ms=35, trials=60, verify="all",
                  predictor_path=out / "predictor.json", storage=f"sqlite:///{out / 'study.db'}",
                  measure_latency=lambda s: float(latency([s])[0]))
    return job, oracle


def _search_worker(rank, world, port, queue, out):
    from pathlib import Path

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        calls = []
        job, oracle = _search_job(Path(out), calls)
        queue.put((rank, str(job.best_shape()), [r["shape"] for r in job.front_records()],
                   {str(k): v for k, v in oracle.values.items()}, calls, job.real_evaluations,
                   sum(r.get("verified_latency_ms") is not None for r in job.front_records())))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_share_a_searchs_evaluations_and_agree_with_one(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    alone, oracle = _search_job(tmp_path / "one", [])
    results = _spawn(_search_worker, 2, str(tmp_path / "two"))
    calls = [r[4] for r in results]
    for rank, best, front, values, _, evaluations, timed in results:
        assert best == str(alone.best_shape()) and front == [r["shape"] for r in alone.front_records()]
        assert values == {str(k): v for k, v in oracle.values.items()} and evaluations == alone.real_evaluations
        assert timed == (len(front) if rank == 0 else 0)  # latency is timed by one process only
    assert not set(calls[0]) & set(calls[1]) and len(calls[0]) + len(calls[1]) == alone.real_evaluations
    assert abs(len(calls[0]) - len(calls[1])) <= 3  # about half each
    cached = __import__("json").loads((tmp_path / "two" / "evaluations.json").read_text())["metrics"]
    assert len(cached) == alone.real_evaluations and (tmp_path / "two" / "predictor.json").is_file()
