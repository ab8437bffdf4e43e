import math

import pytest
import torch

from amoeba_search.evaluation.perplexity import perplexity, sliding_windows
from amoeba_search.models.supernet import Supernet
from amoeba_search.shapes import SubnetShape
from tests.conftest import tiny_model


class Table(torch.nn.Module):
    """A 'model' whose next-token distribution depends only on the current token: easy to compute by hand."""

    def __init__(self, vocab=5, seed=0):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)))

    def forward(self, input_ids):
        return type("Out", (), {"logits": self.logits[input_ids]})()


def _by_hand(table, blocks, start=1):
    logp = torch.log_softmax(table.logits, dim=-1)
    total, count = 0.0, 0
    for row in blocks.tolist():
        for t in range(max(start, 1), len(row)):
            total -= logp[row[t - 1], row[t]].item()
            count += 1
    return math.exp(total / count), count


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_matches_hand_computation(batch_size):
    table = Table()
    blocks = torch.randint(0, 5, (5, 7), generator=torch.Generator().manual_seed(1))
    result = perplexity(table, blocks, batch_size=batch_size)
    expected, count = _by_hand(table, blocks)
    assert result.tokens == count == 5 * 6
    assert result.ppl == pytest.approx(expected, rel=1e-6)


def test_sliding_windows_score_every_token_once():
    stream = torch.randint(0, 5, (23,), generator=torch.Generator().manual_seed(2))
    windows, starts = sliding_windows(stream, window=8, stride=5)
    assert windows.shape == (4, 8)
    table = Table()
    result = perplexity(table, windows, score_from=starts)
    full, count = _by_hand(table, stream[: 3 * 5 + 8].unsqueeze(0))  # the windows cover the first 23 tokens
    assert result.tokens == count
    assert result.ppl == pytest.approx(full, rel=1e-6)
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(stream, 8, 9)


def test_supernet_view_smaller_shape_changes_perplexity():
    supernet = Supernet(tiny_model())
    blocks = torch.randint(3, 259, (4, 16), generator=torch.Generator().manual_seed(3))
    full = perplexity(supernet, blocks, batch_size=3)
    direct = perplexity(tiny_model(), blocks, batch_size=4)
    assert full.ppl == pytest.approx(direct.ppl, rel=1e-4)
    supernet.set_active(SubnetShape(2, 0.5, 1 / 3), [0, 5])
    assert perplexity(supernet, blocks).ppl != pytest.approx(full.ppl, rel=1e-3)


def test_bad_blocks():
    with pytest.raises(ValueError, match=r"\(n, T\)"):
        perplexity(Table(), torch.zeros(5, dtype=torch.long))
