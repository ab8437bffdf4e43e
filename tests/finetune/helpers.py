"""A tiny supernet with a strategy, and tiny training data, for the fine-tuning tests."""
from __future__ import annotations

import torch

from amoeba_search.finetune.data import TrainingData
from amoeba_search.fingerprint import model_fingerprint
from amoeba_search.models.session import LoadedSupernet
from amoeba_search.models.supernet import Supernet
from amoeba_search.selection.strategy import SelectionStrategy
from amoeba_search.shapes import SearchSpace
from tests.conftest import tiny_model, tiny_tokenizer

DEPTH_LAYERS = {3: [0, 2, 5], 4: [0, 2, 4, 5], 5: [0, 1, 2, 4, 5], 6: [0, 1, 2, 3, 4, 5]}


def tiny_loaded(seed: int = 0) -> LoadedSupernet:
    model = tiny_model(seed=seed)
    fingerprint = model_fingerprint(model, name="tiny")
    strategy = SelectionStrategy(fingerprint, {d: list(v) for d, v in DEPTH_LAYERS.items()})
    return LoadedSupernet("tiny", Supernet(model), tiny_tokenizer(), fingerprint, strategy)


def tiny_space(loaded: LoadedSupernet) -> SearchSpace:
    return SearchSpace(loaded.supernet.dims, (3, 4, 5, 6), (0.5, 0.75, 1.0), (1 / 3, 2 / 3, 1.0))


def tiny_data(n: int = 16, seq_len: int = 16, seed: int = 0) -> TrainingData:
    generator = torch.Generator().manual_seed(seed)
    # Text with structure (a repeating pattern plus noise) so that there is something to learn.
    base = torch.arange(seq_len).repeat(n, 1) * 7 % 50 + 3
    ids = torch.where(torch.rand(n, seq_len, generator=generator) < 0.2,
                      torch.randint(3, 259, (n, seq_len), generator=generator), base)
    return TrainingData(ids, ids.clone(), {"kind": "test", "examples": n, "seq_len": seq_len})
