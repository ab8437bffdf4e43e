"""Which model is profiled: its config (from ``--model``), a fingerprint for the lookup table, its
tokenizer when a flow needs one, and random-weight checkpoints of its subnets.

Latency does not depend on weight values, so profiling builds each subnet with random weights of the
right shape; a config alone (a ``config.json``) is enough to profile a 7B-shaped model without its weights.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from amoeba_search.errors import InputError
from amoeba_search.models.config import check_supported, subnet_config
from amoeba_search.shapes import ModelDims, SubnetShape

logger = logging.getLogger(__name__)

DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ModelSource:
    name: str
    spec: str                    # what the user passed (or the default alias)
    config: object               # transformers PretrainedConfig of the full model
    tokenizer_from: tuple | None = None  # (path, gguf_file or None) to load a tokenizer from, if any

    @property
    def dims(self) -> ModelDims:
        return ModelDims.from_config(self.config)

    def fingerprint(self) -> str:
        return table_fingerprint(self.name, self.config)


def architecture_key(config) -> str:
    """The sizes that decide latency, e.g. ``llama-L30-h576-f1536-a9-kv3-d64-v49152-tied``."""
    d = ModelDims.from_config(config)
    tied = "tied" if getattr(config, "tie_word_embeddings", False) else "untied"
    return (f"{config.model_type}-L{d.num_layers}-h{d.hidden_size}-f{d.ffn_size}-a{d.num_heads}"
            f"-kv{d.num_kv_heads}-d{d.head_dim}-v{config.vocab_size}-{tied}")


def table_fingerprint(name: str, config) -> str:
    """``<name>|<architecture key>``: tables of another model (or another architecture) are rejected."""
    return f"{name}|{architecture_key(config)}"


def _alias_config(spec: str):
    """The config of a packaged alias, read from its GGUF once and then cached as JSON (GGUF parsing is slow)."""
    from transformers import AutoConfig

    from amoeba_search.models import load_config
    from amoeba_search.paths import atomic_write_text, cache_dir

    cached = cache_dir("configs") / f"{spec}.json"
    if cached.exists():
        try:
            return AutoConfig.from_pretrained(str(cached))
        except (OSError, ValueError):
            pass
    config = load_config(spec)
    atomic_write_text(cached, config.to_json_string())
    return config


def load_model_source(spec: str | None = None) -> ModelSource:
    """Resolve ``--model``: an alias (default ``smollm2-135m``), a local HF directory, a ``.gguf`` file, a
    ``config.json`` (enough to profile a model whose weights are not here), or a hub id.

    Raises ``ValueError`` with a one-line reason when the model cannot be read or cut.
    """
    from transformers import AutoConfig

    from amoeba_search.models import DEFAULT_MODEL, load_config
    from amoeba_search.models.loading import ALIASES

    spec = (spec or "").strip() or DEFAULT_MODEL
    path = Path(spec).expanduser()
    try:
        if spec in ALIASES:
            gguf = ALIASES[spec].path()
            source = ModelSource(spec, spec, _alias_config(spec), (str(gguf.parent), gguf.name))
        elif path.is_file() and path.suffix == ".json":
            config = AutoConfig.from_pretrained(str(path))
            name = path.parent.name if path.name == "config.json" else path.stem
            source = ModelSource(name, spec, config, None)
        else:
            config = load_config(spec)
            if path.is_file() and path.suffix == ".gguf":
                source = ModelSource(path.stem, spec, config, (str(path.parent), path.name))
            elif path.is_dir():
                has_tokenizer = any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model"))
                source = ModelSource(path.name, spec, config, (str(path), None) if has_tokenizer else None)
            else:
                source = ModelSource(spec.rstrip("/").split("/")[-1], spec, config, (spec, None))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ValueError) and first.startswith(("unknown model", "model file", "the default model")):
            raise InputError(first) from None
        raise InputError(f"cannot read model {spec!r}: {first}") from None
    check_supported(source.config)
    return source


def save_tokenizer(source: ModelSource, out_dir: Path) -> bool:
    """Write the source model's tokenizer into ``out_dir`` (cached once per model); False if it has none."""
    from amoeba_search.paths import atomic_dir, cache_dir

    if source.tokenizer_from is None:
        return False
    cached = cache_dir("tokenizers") / "".join(c if c.isalnum() or c in "-_." else "_" for c in source.name)
    problem = _tokenizer_cache_problem(cached)
    if problem is not None:
        from transformers import AutoTokenizer

        if cached.exists():
            logger.warning("the cached tokenizer in %s is incomplete (%s); rebuilding it", cached, problem)
        where, gguf_file = source.tokenizer_from
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        except (OSError, ValueError):
            return False
        # Written whole and renamed: a folder that a crash left half full never counts as a cached tokenizer.
        with atomic_dir(cached, overwrite=True) as tmp:
            tokenizer.save_pretrained(str(tmp))
    for item in cached.iterdir():
        if item.is_file():
            shutil.copy2(item, out_dir / item.name)
    return True


def _tokenizer_cache_problem(cached: Path) -> str | None:
    """Why the tokenizer cached in ``cached`` cannot be used (missing, or cut short), or None."""
    if not (cached / "tokenizer_config.json").is_file():
        return "no tokenizer_config.json"
    for file in cached.glob("*.json"):
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            return f"{file.name}: {err}"
    return None


def build_random_checkpoint(config, shape: SubnetShape, out_dir: str | os.PathLike, *, dtype: str = "fp32",
                            seed: int = 0) -> Path:
    """Save a standalone HF checkpoint of ``shape`` cut from ``config``, with random weights, to ``out_dir``.

    Weights: N(0, 0.02) for matrices, ones for vectors (norm scales, biases): no NaN or denormal values
    that would send a CPU kernel down a slow path. Built on the meta device and filled in place, which
    is several times faster than the library's per-module initialisation.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    cut = subnet_config(config, shape)
    cut.use_cache = True
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cut, dtype=torch_dtype)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator).mul_(0.02))
            else:
                param.fill_(1.0)
    if getattr(cut, "tie_word_embeddings", False):
        model.tie_weights()
    model.save_pretrained(str(out_dir))
    del model
    return out_dir
