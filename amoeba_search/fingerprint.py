"""A model's identity: its architecture and a checksum of its weights.

Strategies, lookup tables and predictors are only valid for the model they were made for; this is what they
compare. The checksum reads the first and last KiB of every tensor: cheap, and any other checkpoint differs.
"""
from __future__ import annotations

import hashlib

import torch

from amoeba_search.shapes import ModelDims

_EDGE = 256  # elements read from each end of every tensor


# The checksum key of each load precision. A model loaded in fp32 records all three (its 16-bit keys round the
# fp32 values exactly as loading in that dtype would), so a strategy made in fp32 checks a bf16 load and back.
WEIGHT_KEYS = {torch.float32: "weights_sha256", torch.bfloat16: "weights_bf16_sha256",
               torch.float16: "weights_fp16_sha256"}


def model_fingerprint(model, name: str | None = None) -> dict:
    loaded = next(model.parameters()).dtype
    rounded = [dtype for dtype in WEIGHT_KEYS if loaded == torch.float32 or dtype == loaded]
    digests = {dtype: hashlib.sha256() for dtype in rounded}
    for key, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        edges = torch.cat([flat[:_EDGE], flat[-_EDGE:]]).cpu()
        for dtype, digest in digests.items():
            values = edges.to(dtype) if edges.is_floating_point() else edges
            digest.update(key.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(values.to(torch.float32).numpy().tobytes())
    return {
        "name": name or getattr(model.config, "name_or_path", "") or model.config.model_type,
        "model_type": model.config.model_type,
        "dims": ModelDims.from_config(model.config).to_dict(),
        **{WEIGHT_KEYS[dtype]: digest.hexdigest() for dtype, digest in digests.items()},
    }


def same_weights(mine: dict, theirs: dict) -> bool | None:
    """Whether two fingerprints name the same weights: None when they share no checksum to compare."""
    shared = [key for key in WEIGHT_KEYS.values() if key in mine and key in theirs]
    return all(mine[key] == theirs[key] for key in shared) if shared else None
