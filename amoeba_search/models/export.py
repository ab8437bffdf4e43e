"""Export one subnet as a standalone checkpoint that plain ``AutoModelForCausalLM.from_pretrained`` loads."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from safetensors.torch import save_file

from amoeba_search import __version__
from amoeba_search.models.config import subnet_config
from amoeba_search.models.supernet import Supernet
from amoeba_search.paths import atomic_dir
from amoeba_search.shapes import SubnetShape

PROVENANCE_FILE = "amoeba_provenance.json"
GGUF_DTYPES = ("f16", "f32")


def export_subnet(supernet: Supernet, shape: SubnetShape, out_dir: str | Path, *,
                  layers: Sequence[int] | None = None, tokenizer=None, gguf: str | None = None,
                  provenance: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``shape`` (run on ``layers``) of ``supernet`` to ``out_dir``; return the directory.

    The directory holds ``model.safetensors``, ``config.json``, the tokenizer (when given), a provenance JSON
    and, with ``gguf="f16"`` or ``"f32"``, a GGUF file for llama.cpp. Nothing is left behind on failure.
    """
    if gguf is not None and gguf not in GGUF_DTYPES:
        raise ValueError(f"GGUF dtype must be one of {', '.join(GGUF_DTYPES)}, got {gguf!r}")
    supernet.set_active(shape, layers)
    config = subnet_config(supernet.base_config, shape, supernet.active_layers)
    config.architectures = [type(supernet.model).__name__]
    config.dtype = str(next(supernet.model.parameters()).dtype).removeprefix("torch.")
    flags = {k: v for k, v in supernet.compensated_biases().items() if v}
    if flags and config.model_type != "llama":
        raise ValueError(f"a subnet with bias compensation exports only as a LLaMA checkpoint (mlp_bias / "
                         f"attention_bias); this is {config.model_type!r}: use a strategy without channel_means")
    for flag in flags:
        setattr(config, flag, True)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        save_file(supernet.subnet_state_dict(), str(tmp / "model.safetensors"), metadata={"format": "pt"})
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
            _write_gguf(tmp, tokenizer, gguf, provenance or {})
    return Path(out_dir)


def _write_gguf(directory: Path, tokenizer, dtype: str, provenance: dict[str, Any]) -> Path:
    from transformers import AutoModelForCausalLM

    from amoeba_search.models.gguf_export import write_gguf

    model = AutoModelForCausalLM.from_pretrained(directory)
    source = provenance.get("source_gguf")
    return write_gguf(model, tokenizer, directory / f"model-{dtype}.gguf", dtype=dtype, tokenizer_gguf=source)
