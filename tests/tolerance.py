"""Tolerances derived from a dtype and the scale of the numbers compared, never from one machine's kernels.

Two computations of the same function that differ only in rounding (summation order, SIMD width, fused
kernels, a weight rounded once more) differ by about eps(dtype) x |value| x sqrt(rounded terms): that is what
passes on every CPU, where a fixed atol tuned on one machine fails on another.
"""
from __future__ import annotations

import math

import torch


def rounding_atol(reference: torch.Tensor, dtype: torch.dtype, *, terms: int, safety: float = 8.0) -> float:
    """An absolute tolerance for outputs of the size of ``reference`` computed in ``dtype``; ``terms`` is how many
    rounded operations feed one output (e.g. hidden size x layers)."""
    return safety * torch.finfo(dtype).eps * float(reference.abs().max()) * math.sqrt(terms)


def assert_argmax_agrees_where_clear(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    """Greedy tokens agree wherever ``expected``'s top two logits are further apart than rounding can move them."""
    top = expected.topk(2, dim=-1).values
    clear = (top[..., 0] - top[..., 1]) > 2 * atol
    assert clear.any(), "no position has a clear winner; the check would be empty"
    assert torch.equal(actual.argmax(-1)[clear], expected.argmax(-1)[clear])
