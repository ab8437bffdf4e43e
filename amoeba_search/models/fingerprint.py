"""A model's identity: its architecture and a checksum of its weights.

Strategies, lookup tables and predictors are only valid for the model they were made for; this is what they
compare. The checksum reads the first and last KiB of every tensor: cheap, and any other checkpoint differs.
"""
from __future__ import annotations

import hashlib

import torch

from amoeba_search.shapes import ModelDims

_EDGE = 256  # elements read from each end of every tensor


def model_fingerprint(model, name: str | None = None) -> dict:
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1).to(torch.float32)
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(flat[:_EDGE].numpy().tobytes())
        digest.update(flat[-_EDGE:].numpy().tobytes())
    return {
        "name": name or getattr(model.config, "name_or_path", "") or model.config.model_type,
        "model_type": model.config.model_type,
        "dims": ModelDims.from_config(model.config).to_dict(),
        "weights_sha256": digest.hexdigest(),
    }
