"""Processes that split a DP row's evaluations (gloo on the CPU) find exactly what one process finds."""
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for rank, layers, evaluations, local, squares in results:
        assert layers == alone.depth_layers and evaluations == alone.evaluations
        assert squares == [x * x for x in range(11)]
    # the work was split: each process scored about half of the remove-candidates (the full network on both)
    locals_ = [r[3] for r in results]
    assert sum(locals_) == alone.evaluations + 1 and max(locals_) - min(locals_) <= len(alone.depth_layers)


def test_one_process_runs_everything_itself():
    assert shard_map(lambda part: [x + 1 for x in part], [1, 2, 3]) == [2, 3, 4]
    assert torch.distributed.is_available()
