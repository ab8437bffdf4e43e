"""Several processes (``torchrun``) sharing one job: the process group, and work split by item.

Fine-tuning splits batches (data parallel, in the trainer); selection splits the candidate evaluations of a DP
row, and search the shapes it evaluates: each process scores every ``world``-th item and all of them gather
the scores, so every process holds the same table and the same result. What must happen once (an Optuna study
in a shared database, a file written) runs on rank 0 and is handed to the others (``from_rank0``).
"""
from __future__ import annotations

import os
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def init_distributed() -> tuple[int, int]:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1); return (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank_world()


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard_map(fn: Callable[[list], list[T]], items: Sequence) -> list[T]:
    """``fn(items)`` with the items split round-robin over the processes; every process gets the whole result."""
    rank, world = rank_world()
    if world == 1:
        return fn(list(items))
    mine = fn(list(items[rank::world]))
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    out: list = [None] * len(items)
    for r, part in enumerate(gathered):
        out[r::world] = part
    return out


def from_rank0(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only; every process gets its result."""
    rank, world = rank_world()
    if world == 1:
        return fn()
    box = [fn() if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ShardedObjective:
    """A depth objective whose ``evaluate`` splits the candidates over the processes (see ``shard_map``)."""

    def __init__(self, objective):
        self.objective = objective
        self.num_layers, self.higher_is_better = objective.num_layers, objective.higher_is_better
        self.evaluations = 0

    def full(self) -> float:
        self.evaluations += 1
        return self.objective.full()

    def evaluate(self, below: int, tails: Sequence[Sequence[int]]) -> list[float]:
        self.evaluations += len(tails)
        return shard_map(lambda part: self.objective.evaluate(below, part), tails)

    def counters(self) -> dict:
        return {**self.objective.counters(), "evaluations": self.evaluations}
