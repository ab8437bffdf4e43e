"""Calibration metrics: how good a network is on calibration data, as one number.

A metric is pluggable. The simplest is any callable ``metric(model) -> float`` (lower is better) that runs the
model at its active subnet; the DP can use it, but only without prefix caching. The structured metrics here
(:class:`CalibrationMetric`) also say which token batches to run and how to score the final hidden states of
one batch, so the layer runner (``selection.layer_runner``) can feed them hidden states that skipped the
shared layers:

- ``ppl``: perplexity of token blocks (every token after the first of each block is scored);
- ``mc-acc`` / ``mc-loss``: a multiple-choice task of ``(context, choices, answer)`` items, scored by the
  log-likelihood of each choice's tokens after the context: accuracy (higher is better) or the mean
  cross-entropy of the answer among the choices (lower is better; smooth, so better for small sets).
"""
from __future__ import annotations

import difflib
import logging
import math
from typing import Callable, Sequence

import torch

from amoeba_search.data.multiple_choice import MCItem
from amoeba_search.errors import InputError
from amoeba_search.evaluation.perplexity import token_nll

_HEAD_ROWS = 2  # sequences projected to the vocabulary at once: bounds the (rows, T, V) logits memory

logger = logging.getLogger(__name__)


def spread_blocks(blocks: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` blocks evenly spaced over ``blocks`` (first and last included): many documents, not one."""
    n = blocks.shape[0]
    if not 1 <= count <= n:
        raise InputError(f"cannot pick {count} of {n} blocks")
    if count == 1:
        return blocks[:1]
    index = [round(i * (n - 1) / (count - 1)) for i in range(count)]
    return blocks[index]


def causal_lm(model):
    """The HF ``*ForCausalLM`` inside ``model`` (itself, or a ``Supernet``'s ``.model``)."""
    if hasattr(model, "lm_head"):
        return model
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "lm_head"):
        return inner
    raise TypeError(f"{type(model).__name__} is neither a causal LM nor a Supernet around one")


class CalibrationMetric:
    """Base of the structured metrics: batches to run, a score per batch, one number from all batches."""

    name: str = "metric"
    higher_is_better: bool = False

    def batches(self) -> list[torch.Tensor]:
        """Token ids ``(B, T)`` to run, in a fixed order."""
        raise NotImplementedError

    def batch_stats(self, index: int, hidden: torch.Tensor, lm_head: Callable) -> torch.Tensor:
        """Statistics of batch ``index`` from its final, normed hidden states ``(B, T, C)``."""
        raise NotImplementedError

    def finish(self, stats: Sequence[torch.Tensor]) -> float:
        """The metric from every batch's statistics, in batch order."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"metric": self.name}

    @torch.inference_mode()
    def statistics(self, model) -> list[torch.Tensor]:
        """Every batch's statistics for ``model`` (HF causal LM or Supernet at its active shape).

        Runs the decoder stack (``lm.model``) and ``lm_head`` directly, so only hooks on the decoder stack or
        below fire (an attached SMoL adapter routes there).
        """
        lm = causal_lm(model)
        stats = []
        for i, batch in enumerate(self.batches()):
            batch = batch.to(lm.get_input_embeddings().weight.device)
            hidden = lm.model(input_ids=batch, use_cache=False).last_hidden_state  # (B, T, C), after the norm
            stats.append(self.batch_stats(i, hidden, lm.lm_head))
        return stats

    def __call__(self, model) -> float:
        """Score ``model`` through its ordinary forward (see ``statistics``)."""
        return self.finish(self.statistics(model))


class PerplexityMetric(CalibrationMetric):
    """Perplexity of ``blocks`` ``(n, T)``: the same number as ``evaluation.perplexity.perplexity``."""

    name = "ppl"
    higher_is_better = False

    def __init__(self, blocks: torch.Tensor, *, batch_size: int = 4):
        if blocks.dim() != 2 or blocks.shape[1] < 2 or blocks.shape[0] < 1:
            raise InputError(f"calibration blocks must be (n >= 1, T >= 2), got {tuple(blocks.shape)}")
        if batch_size < 1:
            raise InputError(f"batch_size must be positive, got {batch_size}")
        self.blocks = blocks.long()
        self.batch_size = batch_size
        self._batches = list(self.blocks.split(batch_size))
        logger.debug("perplexity metric: %d blocks of %d tokens in %d batches", self.blocks.shape[0],
                     self.blocks.shape[1], len(self._batches))

    def batches(self) -> list[torch.Tensor]:
        return self._batches

    def batch_stats(self, index, hidden, lm_head):
        ids = self._batches[index].to(hidden.device)
        total = torch.zeros((), dtype=torch.float64, device=hidden.device)
        for lo in range(0, hidden.shape[0], _HEAD_ROWS):
            logits = lm_head(hidden[lo:lo + _HEAD_ROWS, :-1])                       # (r, T-1, V)
            total += token_nll(logits, ids[lo:lo + _HEAD_ROWS, 1:]).double().sum()
        count = ids.shape[0] * (ids.shape[1] - 1)
        return torch.stack([total.cpu(), torch.tensor(float(count), dtype=torch.float64)])

    def finish(self, stats):
        total = torch.stack(list(stats)).sum(0)
        return math.exp(total[0].item() / total[1].item())

    def describe(self) -> dict:
        return {"metric": self.name, "blocks": int(self.blocks.shape[0]), "seq_len": int(self.blocks.shape[1]),
                "tokens": int(self.blocks.numel())}


def lm_eval_items(items) -> list[MCItem]:
    """``(context, choices, answer)`` items as lm-eval scores them: the choice follows the context after a space
    (its ``target_delimiter``), and whitespace ending the context moves into the choice."""
    out = []
    for context, choices, answer in items:
        stripped = context.rstrip()
        moved = context[len(stripped):]
        out.append(MCItem(stripped, [f"{moved} {c}" for c in choices], answer))
    return out


class MultipleChoiceMetric(CalibrationMetric):
    """Accuracy (``kind="acc"``) or answer cross-entropy (``kind="loss"``) on multiple-choice items.

    Each (item, choice) pair is the sequence ``context + choice`` tokenized piecewise; its score is the summed
    log-probability of the choice's tokens (divided by their count with ``normalize=True``). Pairs are sorted by
    length and right-padded; causal attention keeps padding from touching any scored position.
    """

    def __init__(self, items: Sequence[MCItem], tokenizer, *, kind: str = "acc",
                 batch_size: int = 8, normalize: bool = False):
        if kind not in ("acc", "loss"):
            raise InputError(f"kind must be 'acc' or 'loss', got {kind!r}")
        if not items:
            raise InputError("a multiple-choice metric needs at least one item")
        self.kind, self.normalize, self.items = kind, normalize, list(items)
        self.name = f"mc-{kind}"
        self.higher_is_better = kind == "acc"
        pairs = []  # (item, choice, context ids, choice ids)
        for i, item in enumerate(self.items):
            ctx = tokenizer(item.context, add_special_tokens=False)["input_ids"]
            if not ctx:
                raise InputError(f"item {i} has an empty context; every choice needs a context to follow")
            for c, choice in enumerate(item.choices):
                cont = tokenizer(choice, add_special_tokens=False)["input_ids"]
                if not cont:
                    raise InputError(f"item {i} choice {c} tokenizes to nothing")
                pairs.append((i, c, ctx, cont))
        order = sorted(range(len(pairs)), key=lambda p: -(len(pairs[p][2]) + len(pairs[p][3])))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self._batches, self._targets = [], []  # targets: per batch, (pair index, [(position, token)...])
        for lo in range(0, len(order), batch_size):
            chunk = order[lo:lo + batch_size]
            width = max(len(pairs[p][2]) + len(pairs[p][3]) for p in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            rows, cols, toks, owner = [], [], [], []
            for r, p in enumerate(chunk):
                _, _, ctx, cont = pairs[p]
                seq = ctx + cont
                ids[r, :len(seq)] = torch.tensor(seq)
                for j, tok in enumerate(cont):
                    rows.append(r); cols.append(len(ctx) + j - 1); toks.append(tok); owner.append(r)
            self._batches.append(ids)
            self._targets.append((torch.tensor(chunk), torch.tensor(rows), torch.tensor(cols),
                                  torch.tensor(toks), torch.tensor(owner)))
        self._pairs = [(i, c) for i, c, _, _ in pairs]
        self._lengths = torch.tensor([len(cont) for _, _, _, cont in pairs], dtype=torch.float64)
        logger.debug("%s metric: %d items, %d (context, choice) pairs in %d batches", self.name, len(self.items),
                     len(pairs), len(self._batches))

    def batches(self):
        return self._batches

    def batch_stats(self, index, hidden, lm_head):
        pair_ids, rows, cols, toks, owner = self._targets[index]
        picked = hidden[rows.to(hidden.device), cols.to(hidden.device)]       # (K, C): only scored positions
        logp = torch.log_softmax(lm_head(picked).float(), dim=-1)             # (K, V)
        token_ll = logp.gather(1, toks[:, None].to(logp.device)).squeeze(1).double().cpu()  # (K,)
        ll = torch.zeros(len(pair_ids), dtype=torch.float64).index_add_(0, owner, token_ll)
        return torch.stack([pair_ids.double(), ll], dim=1)                    # (pairs in batch, 2)

    def choice_loglik(self, stats) -> list[list[float]]:
        """Per item, the (normalized) log-likelihood of each choice."""
        table = torch.cat(list(stats))
        ll = torch.empty(len(self._pairs), dtype=torch.float64)
        ll[table[:, 0].long()] = table[:, 1]
        if self.normalize:
            ll = ll / self._lengths
        out = [[0.0] * len(item.choices) for item in self.items]
        for (i, c), value in zip(self._pairs, ll.tolist()):
            out[i][c] = value
        return out

    def accuracy_and_loss(self, stats) -> tuple[float, float]:
        """Both metrics from one set of statistics: accuracy and mean answer cross-entropy among the choices."""
        scores = self.choice_loglik(stats)
        hits = [max(range(len(s)), key=lambda c: (s[c], -c)) == item.answer for s, item in zip(scores, self.items)]
        losses = [-torch.log_softmax(torch.tensor(s, dtype=torch.float64), 0)[item.answer].item()
                  for s, item in zip(scores, self.items)]
        return sum(hits) / len(hits), sum(losses) / len(losses)

    def finish(self, stats):
        accuracy, loss = self.accuracy_and_loss(stats)
        return accuracy if self.kind == "acc" else loss

    def describe(self) -> dict:
        return {"metric": self.name, "items": len(self.items), "normalize": self.normalize}


# -- registry --------------------------------------------------------------------------------------------

METRICS = {
    "ppl": "perplexity of calibration text (lower is better)",
    "mc-acc": "multiple-choice accuracy on a calibration task (higher is better)",
    "mc-loss": "multiple-choice answer cross-entropy on a calibration task (lower is better)",
}


def check_metric_name(name: str) -> str:
    if name not in METRICS:
        close = difflib.get_close_matches(name, list(METRICS), n=1, cutoff=0.4)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InputError(f"unknown metric {name!r}; {hint}known metrics: {', '.join(METRICS)}")
    return name


def better(a: float, b: float, *, higher_is_better: bool) -> bool:
    """Is ``a`` strictly better than ``b``? (NaN is never better.)"""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if higher_is_better else a < b
