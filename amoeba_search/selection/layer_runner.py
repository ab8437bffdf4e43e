"""Run a decoder layer by layer on fixed inputs, so that shared layers run once.

The HF forward always starts from the embeddings. Here each step is separate: embed a batch, run any chosen
layers on a hidden state, normalize the final state. ``attention_mask=None`` lets SDPA apply causal masking
itself; the tests check that the result equals the model's own forward.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch

logger = logging.getLogger(__name__)


class LayerRunner:
    """Calls the decoder layers of ``supernet`` (at its current widths) directly on hidden states."""

    def __init__(self, supernet):
        self.supernet = supernet
        self.lm = supernet.model                    # the HF *ForCausalLM
        self.decoder = self.lm.model                # its decoder: embed_tokens, rotary_emb, norm
        self.layers = supernet.layers               # every decoder layer, by original index
        self.layer_calls = 0                        # one per (batch, layer) forward
        self.head_calls = 0                         # one per batch scored
        self._rope: dict[tuple, tuple] = {}

    def _position(self, hidden: torch.Tensor):
        key = (hidden.shape[1], hidden.dtype, hidden.device)
        if key not in self._rope:
            position_ids = torch.arange(hidden.shape[1], device=hidden.device)[None]  # (1, T)
            self._rope[key] = (position_ids, self.decoder.rotary_emb(hidden, position_ids))
            logger.debug("rotary embeddings cached for %d positions (%s on %s)", hidden.shape[1], hidden.dtype,
                         hidden.device)
        return self._rope[key]

    @torch.inference_mode()
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(input_ids.to(self.decoder.embed_tokens.weight.device))  # (B, T, C)

    @torch.inference_mode()
    def layer(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        position_ids, rope = self._position(hidden)
        out = self.layers[index](hidden, attention_mask=None, position_ids=position_ids,
                                 position_embeddings=rope, use_cache=False)
        self.layer_calls += 1
        return out[0] if isinstance(out, tuple) else out

    def run(self, hidden: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        for index in layers:
            hidden = self.layer(index, hidden)
        return hidden

    @torch.inference_mode()
    def score(self, metric, batch_index: int, hidden: torch.Tensor) -> torch.Tensor:
        """``metric.batch_stats`` of the final (pre-norm) hidden state of one batch."""
        self.head_calls += 1
        return metric.batch_stats(batch_index, self.decoder.norm(hidden), self.lm.lm_head)
