"""Losses of one-for-all fine-tuning: language modelling, in-place distillation, loss-magnitude balancing."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # label of a position that is not scored (prompt, padding)


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of positions 0..T-2 and the labels they predict, flattened: ((N, V), (N,))."""
    return logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over scored positions; ``logits`` (B, T, V), ``labels`` (B, T)."""
    flat_logits, flat_labels = _shifted(logits, labels)
    return F.cross_entropy(flat_logits.float(), flat_labels, ignore_index=IGNORE)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, *,
                 temperature: float = 1.0) -> torch.Tensor:
    """Soft cross-entropy of the student against the teacher's (detached) next-token distribution.

    Same gradient as KL(teacher || student), but the same magnitude as a label loss, which keeps
    loss-magnitude balancing meaningful. Only positions with a label are scored.
    """
    s, flat_labels = _shifted(student, labels)
    t, _ = _shifted(teacher.detach(), labels)
    keep = flat_labels != IGNORE
    target = torch.softmax(t[keep].float() / temperature, dim=-1)                 # (N, V)
    log_p = torch.log_softmax(s[keep].float() / temperature, dim=-1)
    return -(target * log_p).sum(-1).mean() * temperature ** 2


def balance(loss: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Rescale ``loss`` to the magnitude of ``reference`` (the largest subnet's loss), keeping its direction.

    loss * reference.detach() / loss.detach(): the value becomes the reference's, the gradient is the
    original one times a positive constant.
    """
    return loss * (reference.detach() / loss.detach().clamp_min(1e-12))
