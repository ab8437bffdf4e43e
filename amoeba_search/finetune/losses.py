"""Losses of one-for-all fine-tuning: language modelling, in-place distillation, loss-magnitude balancing."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # label of a position that is not scored (prompt, padding)


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of positions 0..T-2 in fp32 and the labels they predict, flattened: ((N, V), (N,)). The slice is
    not contiguous, so it is copied once, straight into fp32."""
    return logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1 else logits / temperature  # (N, V): a pass over it saved at T = 1


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over scored positions; ``logits`` (B, T, V), ``labels`` (B, T)."""
    flat_logits, flat_labels = _shifted(logits, labels)
    return F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE)


def teacher_targets(teacher: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """The teacher's (detached) next-token distribution at the scored positions, (N, V) in fp32: computed once
    per step and shared by every student of the step."""
    t, flat_labels = _shifted(teacher.detach(), labels)
    keep = flat_labels != IGNORE
    t = t if bool(keep.all()) else t[keep]  # boolean indexing copies (N, V): skip it when every position counts
    return torch.softmax(_scaled(t, temperature), dim=-1)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, *,
                 temperature: float = 1.0, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Soft cross-entropy of the student against the teacher's (detached) next-token distribution.

    Same gradient as KL(teacher || student), but the same magnitude as a label loss, which keeps
    loss-magnitude balancing meaningful. Only positions with a label are scored. ``targets``: the teacher's
    distribution from :func:`teacher_targets` (then ``teacher`` is not read).
    """
    if targets is None:
        targets = teacher_targets(teacher, labels, temperature=temperature)
    s, flat_labels = _shifted(student, labels)
    keep = flat_labels != IGNORE
    s = s if bool(keep.all()) else s[keep]
    log_p = torch.log_softmax(_scaled(s, temperature), dim=-1)
    return -(targets * log_p).sum(-1).mean() * temperature ** 2


def balance(loss: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Rescale ``loss`` to the magnitude of ``reference`` (the largest subnet's loss), keeping its direction.

    loss * reference.detach() / loss.detach(): the value becomes the reference's, the gradient is the
    original one times a positive constant.
    """
    return loss * (reference.detach() / loss.detach().clamp_min(1e-12))
