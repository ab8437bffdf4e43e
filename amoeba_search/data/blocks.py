"""Token blocks: a split's documents tokenized, joined with EOS, cut into equal blocks, cached.

The cache (``cache_dir("blocks")``, safetensors) holds every block of a (source, tokenizer, split,
seq_len, fractions, seed); ``max_blocks`` only slices it, so one file serves every request size.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from amoeba_search.data.sources import Source, load_documents, source_fingerprint, source_name
from amoeba_search.data.splits import DEFAULT_FRACTIONS, SPLITS, check_fractions, split_documents
from amoeba_search.errors import InputError
from amoeba_search.paths import atomic_file, cache_dir

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the way blocks are built changes


def token_blocks(source: Source, tokenizer, *, split: str = "eval", seq_len: int = 512,
                 max_blocks: int | None = None, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 seed: int = 0) -> torch.Tensor:
    """``(n_blocks, seq_len)`` int64 token ids of ``split``, at most ``max_blocks`` of them (all if None)."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if seq_len < 1 or (max_blocks is not None and max_blocks < 1):
        raise InputError(f"seq_len and max_blocks must be positive, got {seq_len} and {max_blocks}")
    fractions = check_fractions(fractions)
    key = {"format": FORMAT_VERSION, "source": source_fingerprint(source),
           "tokenizer": tokenizer_fingerprint(tokenizer), "split": split, "seq_len": seq_len,
           "fractions": fractions, "seed": seed}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir("blocks") / f"{digest}.safetensors"
    blocks = _load_cached(path)
    if blocks is None:
        docs = split_documents(load_documents(source), fractions=fractions, seed=seed)[split]
        blocks = _cut(_tokenize(docs, tokenizer), seq_len)
        _save_atomic(blocks, path, {"key": json.dumps(key, sort_keys=True)})
    if len(blocks) == 0 or (max_blocks is not None and len(blocks) < max_blocks):
        raise InputError(
            f"not enough text: the {split!r} split of {source_name(source)!r} makes {len(blocks)} blocks of "
            f"{seq_len} tokens, {max_blocks or 'at least 1'} requested; ask for max_blocks <= {len(blocks)}, "
            "a shorter seq_len, other fractions, or a larger source (e.g. 'austen')")
    return blocks[:max_blocks]


def tokenizer_fingerprint(tokenizer) -> dict:
    """Name, size, EOS and a hash of the full tokenizer definition (vocab, merges, normalizer) when fast."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return {"name": getattr(tokenizer, "name_or_path", ""), "size": len(tokenizer),
            "eos": tokenizer.eos_token_id, "hash": hashlib.sha256(spec.encode()).hexdigest()}


def _tokenize(docs, tokenizer) -> list[int]:
    # verbose=False: documents longer than the model's context are expected here, no warning wanted.
    encoded = tokenizer([d.text for d in docs], add_special_tokens=False, verbose=False)["input_ids"] if docs else []
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return [tok for ids in encoded for tok in [*ids, *eos]]


def _cut(ids: list[int], seq_len: int) -> torch.Tensor:
    n = len(ids) // seq_len  # the ragged tail is dropped
    return torch.tensor(ids[:n * seq_len], dtype=torch.long).view(n, seq_len)


def _load_cached(path) -> torch.Tensor | None:
    """The cached blocks at ``path``; None when there are none, or when the file is damaged (then removed)."""
    if not path.is_file():
        return None
    try:
        return load_file(path)["blocks"].long()
    except (SafetensorError, KeyError) as err:  # e.g. a file truncated by a crash or a full disk
        logger.warning("token-block cache %s is damaged (%s); rebuilding it", path, err)
        path.unlink(missing_ok=True)
        return None


def _save_atomic(blocks: torch.Tensor, path: os.PathLike, metadata: dict) -> None:
    with atomic_file(path) as tmp:
        # int32: half the disk of int64
        save_file({"blocks": blocks.to(torch.int32).contiguous()}, str(tmp), metadata=metadata)
