"""Small helpers shared by the runtime flow plugins (llamacpp, ort, openvino, tensorrt-llm, mlc)."""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import inspect
import json
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

from amoeba_search.errors import InputError

if TYPE_CHECKING:  # base imports this module for BaseFlow
    from amoeba_search.profiling.flows.base import MeasureSettings


def missing_module(module: str) -> bool:
    """True if ``module`` cannot be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def package_versions(*packages: str) -> dict[str, str]:
    """``{package: version}`` for the installed ones among ``packages``."""
    found = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def backend(device) -> str:
    """``"cpu"`` or ``"cuda"`` for a device given as a ``DeviceSpec`` or a name such as "cpu", "cuda:0"."""
    explicit = getattr(device, "backend", None)
    if explicit:
        return explicit
    name = str(device or "cpu").lower()
    return "cpu" if name.startswith("cpu") else "cuda"


def read_config(checkpoint: Path) -> dict:
    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        raise InputError(f"{checkpoint} is not a Hugging Face checkpoint: config.json is missing")
    return json.loads(path.read_text())


def has_tokenizer(checkpoint: Path) -> bool:
    return any((Path(checkpoint) / f).is_file() for f in ("tokenizer.json", "tokenizer.model"))


def check_settings(flow: str, settings: MeasureSettings, dtypes: tuple[str, ...],
                   max_positions: int | None = None) -> None:
    """Raise ``ValueError`` (with the fix) for settings this flow cannot measure."""
    if settings.batch != 1:
        raise InputError(f"flow {flow!r} measures batch 1 only (one sequence with a KV cache); "
                         f"got batch={settings.batch}")
    if settings.dtype not in dtypes:
        raise InputError(f"flow {flow!r} supports dtype {', '.join(dtypes)} here; got {settings.dtype!r}")
    if settings.prompt_len < 1 or settings.decode_tokens < 1 or settings.repeats < 1:
        raise InputError("prompt_len, decode_tokens and repeats must all be at least 1")
    total = settings.prompt_len + settings.decode_tokens + 1
    if max_positions and total > max_positions:
        raise InputError(f"prompt_len + decode_tokens + 1 = {total} exceeds the model's "
                         f"max_position_embeddings {max_positions}; use a shorter prompt or fewer decode tokens")


def prompt_ids(vocab_size: int, length: int, seed: int) -> list[int]:
    """Random token ids avoiding the lowest ids (where special tokens usually live), fixed by ``seed``."""
    rng = random.Random(seed)
    low = min(16, max(0, vocab_size - 1))
    return [rng.randrange(low, vocab_size) for _ in range(length)]


def dir_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def threads(settings: MeasureSettings) -> int | None:
    return settings.threads if settings.threads and settings.threads > 0 else None


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# -- memory: growth of this process's resident set over what it held before the runtime loaded the model --

def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_growth(rss_before_load: int | None, peak_was_reset: bool) -> int | None:
    """Peak (or, if the mark could not be reset, current) RSS minus ``rss_before_load``."""
    now = None
    if peak_was_reset:
        try:
            with open("/proc/self/status") as fh:
                now = next((int(l.split()[1]) * 1024 for l in fh if l.startswith("VmHWM:")), None)
        except (OSError, ValueError):
            now = None
    now = now if now is not None else rss_bytes()
    return max(0, now - rss_before_load) if now is not None and rss_before_load is not None else None


def time_requests(request_ms, settings, extra: dict):
    """Time a serving engine by whole requests: prefill = a 1-token request, decode = the extra time of an
    (N+1)-token request over it, per token. ``request_ms(tokens, seed)`` runs one request on a fresh prompt."""
    from amoeba_search.profiling.flows.base import Measurement

    prefill, decode = [], []
    for rep in range(settings.repeats + 1):  # repeat 0 is the untimed warm-up
        first = request_ms(1, seed=2 * rep)
        whole = request_ms(settings.decode_tokens + 1, seed=2 * rep + 1)
        if rep:
            prefill.append(first)
            decode.append(max(whole - first, 0.0) / settings.decode_tokens)
    return Measurement(prefill_ms=prefill, decode_ms_per_token=decode,
                       extra=dict(extra, method="max_tokens=1 vs max_tokens=N+1 requests"))


def forward_with_cache(model, cache, **inputs):
    """One forward of a HF causal LM that reads and extends the KV ``cache``: ``(output, cache)``.

    transformers 5.x renamed the argument and output field ``past_key_values`` to ``cache`` (the old name is
    deprecated and goes in 5.40), so the name is read from the model's own signature, once per model class.
    """
    name = _cache_argument(type(model))
    out = model(**inputs, **{name: cache}, use_cache=True)
    return out, getattr(out, name)


@functools.cache
def _cache_argument(model_class) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"
