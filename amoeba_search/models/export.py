"""Export one subnet as a standalone checkpoint that plain ``AutoModelForCausalLM.from_pretrained`` loads."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file

from amoeba_search import __version__
from amoeba_search.errors import InputError
from amoeba_search.models.config import subnet_config
from amoeba_search.models.supernet import Supernet
from amoeba_search.paths import atomic_dir
from amoeba_search.shapes import SubnetShape

PROVENANCE_FILE = "amoeba_provenance.json"


def export_subnet(supernet: Supernet, shape: SubnetShape, out_dir: str | Path, *,
                  layers: Sequence[int] | None = None, tokenizer=None, gguf: str | None = None,
                  provenance: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``shape`` (run on ``layers``) of ``supernet`` to ``out_dir``; return the directory.

    The weights keep the supernet's dtype. The directory holds ``model.safetensors``, ``config.json``, the
    tokenizer (when given), a provenance JSON and, with ``gguf`` (one of ``GGUF_TYPES``, written by gguf-py, or a
    llama.cpp type such as ``"Q4_K_M"``, quantized by llama.cpp from an f16 file), a GGUF file for llama.cpp.
    Nothing is left behind on failure.
    """
    check_gguf_type(gguf)
    supernet.set_active(shape, layers)
    config = subnet_config(supernet.base_config, shape, supernet.active_layers)
    config.architectures = [type(supernet.model).__name__]
    config.dtype = str(next(supernet.model.parameters()).dtype).removeprefix("torch.")
    flags = {k: v for k, v in supernet.compensated_biases().items() if v}
    if flags and config.model_type != "llama":
        raise InputError(f"a subnet with bias compensation exports only as a LLaMA checkpoint (mlp_bias / "
                         f"attention_bias); this is {config.model_type!r}: use a strategy without channel_means")
    for flag in flags:
        setattr(config, flag, True)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        state = {name: tensor.cpu() for name, tensor in supernet.subnet_state_dict().items()}
        broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
        if broken:  # a diverged adapter merged in: refuse before anything lands at out_dir
            raise InputError(f"the subnet's weights hold NaN or inf ({len(broken)} tensors, e.g. {broken[0]}); "
                             "nothing was written: re-train the adapter with a lower --lr or export without it")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del state
        config.save_pretrained(tmp)
        generation = getattr(supernet.model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        record = {
            "amoeba_search_version": __version__,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "shape": str(shape),
            "kept_layers": list(supernet.active_layers),
            "ffn_channels": shape.ffn_channels(supernet.dims),
            "num_heads": shape.num_heads(supernet.dims),
            **(provenance or {}),
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2))
        if gguf is not None:
            name = f"{(provenance or {}).get('source_model', 'model')} {shape}"
            _write_gguf(tmp, tokenizer, gguf, provenance or {}, name=name)
    return Path(out_dir)


def check_gguf_type(gguf: str | None) -> None:
    """Refuse a GGUF type that neither gguf-py nor llama.cpp's quantizer writes (before any work)."""
    from amoeba_search.models.gguf_export import GGUF_TYPES
    from amoeba_search.models.gguf_quantize import llamacpp_quant_types

    if gguf is not None and gguf not in GGUF_TYPES and gguf.upper() not in llamacpp_quant_types():
        raise InputError(f"unknown GGUF type {gguf!r}: use {', '.join(GGUF_TYPES)} (gguf-py), or a llama.cpp "
                         f"type such as {', '.join(llamacpp_quant_types()[:4])} (needs llama-cpp-python)")


def _write_gguf(directory: Path, tokenizer, gguf: str, provenance: dict[str, Any], *, name: str) -> Path:
    from transformers import AutoModelForCausalLM

    from amoeba_search.models.gguf_export import GGUF_TYPES, write_gguf

    model = AutoModelForCausalLM.from_pretrained(directory)
    source = provenance.get("source_gguf")
    if gguf in GGUF_TYPES:
        return write_gguf(model, tokenizer, directory / f"model-{gguf}.gguf", dtype=gguf, tokenizer_gguf=source,
                          name=name)
    from amoeba_search.models.gguf_quantize import quantize_with_llamacpp

    # llama.cpp quantizes from a float file, as its own convert + llama-quantize workflow does
    base = write_gguf(model, tokenizer, directory / ".model-f16.gguf", dtype="f16", tokenizer_gguf=source, name=name)
    try:
        return quantize_with_llamacpp(base, directory / f"model-{gguf}.gguf", gguf)
    finally:
        base.unlink(missing_ok=True)
