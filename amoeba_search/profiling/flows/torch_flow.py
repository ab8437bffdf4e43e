"""The PyTorch flow: the HF checkpoint run eagerly (optionally through ``torch.compile``) on CPU or CUDA.

Prefill: the whole prompt in one forward into a fresh ``DynamicCache``, logits for the last position only.
Decode: greedy tokens one at a time through the KV cache, timed as one window per repeat (mean per token).
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amoeba_search.errors import InputError
from amoeba_search.profiling.flows._common import forward_with_cache, peak_growth, reset_peak_rss, rss_bytes
from amoeba_search.profiling.flows.base import FlowUnavailable, Measurement, MeasureSettings

_DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class _Handle:
    model: Any
    device: str
    rss_before_load: int | None
    vocab_size: int
    cuda_before_load: int = 0  # bytes other models (an interleaved reference shape) already held on the GPU


class TorchFlow:
    """``TorchFlow(compile=False, compile_mode=None, warmup=2, decode_stat="mean")``.

    ``warmup`` untimed passes precede the timed repeats (the first pass also faults the lazily mapped
    weights into memory, which is why one is not enough on CPU). Each decode step is timed; a repeat's
    decode latency is the mean step (``"mean"``: decode window / tokens, what generation delivers; the
    base contract) or the median step (``"median"``: robust to a burst of load from other processes, but
    on a quiet CPU about 5% below the mean for SmolLM2, whose step times are skewed to the right).
    """

    name = "torch"
    needs_tokenizer = False

    def __init__(self, *, compile: bool = False, compile_mode: str | None = None, warmup: int = 2,
                 attn_implementation: str = "sdpa", decode_stat: str = "mean"):
        if warmup < 1:
            raise InputError(f"warmup must be at least 1 pass, got {warmup}")
        if decode_stat not in ("median", "mean"):
            raise InputError(f"decode_stat must be 'median' or 'mean', got {decode_stat!r}")
        self.decode_stat = decode_stat
        # on CUDA, timing single steps needs a sync per step; it is what a greedy loop that checks EOS does
        self.step_sync = True
        self.compile = bool(compile)
        self.compile_mode = compile_mode
        self.warmup = int(warmup)
        self.attn_implementation = attn_implementation

    def unavailable_reason(self) -> str | None:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            return f"needs {exc.name} (pip install torch transformers)"
        if self.compile:
            import shutil

            if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
                return "torch.compile on CPU needs a C/C++ compiler (install gcc) or drop --compile"
        return None

    def versions(self) -> dict[str, str]:
        import torch
        import transformers

        out = {"torch": torch.__version__, "transformers": transformers.__version__}
        if torch.cuda.is_available():
            out["cuda"] = str(torch.version.cuda)
            out["gpu"] = torch.cuda.get_device_name(0)
        if self.compile:
            out["compile"] = self.compile_mode or "default"
        return out

    def prepare(self, checkpoint: Path, workdir: Path, settings: MeasureSettings, device: str) -> _Handle:
        import torch
        from transformers import AutoModelForCausalLM

        if settings.dtype not in _DTYPES:
            raise InputError(f"the torch flow runs {', '.join(_DTYPES)}, not {settings.dtype!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise FlowUnavailable("the torch flow was asked for CUDA, but torch sees no CUDA GPU "
                                  f"(torch {torch.__version__} {'is a CPU build' if torch.version.cuda is None else ''})")
        if device != "cpu" and not device.startswith("cuda"):
            raise InputError(f"the torch flow runs on 'cpu' or 'cuda', not {device!r}")
        if settings.threads:
            torch.set_num_threads(settings.threads)
        gc.collect()
        rss_before = rss_bytes()
        cuda_before = torch.cuda.memory_allocated(device) if device.startswith("cuda") else 0
        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[settings.dtype]
        model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch_dtype,
                                                     attn_implementation=self.attn_implementation)
        model = model.to(device).eval()
        if self.compile:
            model.forward = torch.compile(model.forward, mode=self.compile_mode, dynamic=True)
        return _Handle(model=model, device=device, rss_before_load=rss_before, vocab_size=model.config.vocab_size,
                       cuda_before_load=cuda_before)

    def _sync(self, handle: _Handle) -> None:
        if handle.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(handle.device)

    def _one_pass(self, handle: _Handle, ids, decode_tokens: int):
        """Prefill ``ids`` then decode ``decode_tokens`` greedy tokens.

        Returns the prefill window, the decode window and each decode step's duration (s)."""
        from transformers import DynamicCache

        model = handle.model
        cache = DynamicCache(config=model.config)
        self._sync(handle)
        t0 = time.perf_counter()
        out, cache = forward_with_cache(model, cache, input_ids=ids, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        self._sync(handle)
        t1 = time.perf_counter()
        steps, last = [], t1
        for _ in range(decode_tokens):
            out, cache = forward_with_cache(model, cache, input_ids=token, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            if self.step_sync:
                self._sync(handle)
            now = time.perf_counter()
            steps.append(now - last)
            last = now
        self._sync(handle)
        t2 = time.perf_counter()
        return (t0, t1), (t1, t2), steps

    def measure(self, handle: _Handle, settings: MeasureSettings) -> Measurement:
        import torch

        if settings.threads:
            torch.set_num_threads(settings.threads)
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(3, handle.vocab_size, (settings.batch, settings.prompt_len), generator=generator)
        ids = ids.to(handle.device)
        decode_tokens = max(0, settings.decode_tokens)
        if handle.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(handle.device)
        peak_reset = handle.device == "cpu" and reset_peak_rss()
        prefill_windows, decode_windows = [], []
        with torch.inference_mode():
            for _ in range(self.warmup):
                self._one_pass(handle, ids, decode_tokens)
            step_stats = []
            for _ in range(settings.repeats):
                prefill, decode, steps = self._one_pass(handle, ids, decode_tokens)
                prefill_windows.append(prefill)
                decode_windows.append(decode)
                step_stats.append((statistics.median(steps) * 1e3 if steps else None,
                                   sum(steps) / len(steps) * 1e3 if steps else None))
        prefill_ms = [(b - a) * 1e3 for a, b in prefill_windows]
        mean_ms = [(b - a) * 1e3 / decode_tokens for a, b in decode_windows] if decode_tokens else []
        decode_ms = [med for med, _ in step_stats] if self.decode_stat == "median" and decode_tokens else mean_ms
        extra: dict[str, Any] = {"prefill_windows": [list(w) for w in prefill_windows],
                                 "decode_windows": [list(w) for w in decode_windows] if decode_tokens else [],
                                 "decode_stat": f"{self.decode_stat} of steps per repeat",
                                 "decode_step_median_ms_median": round(statistics.median(
                                     [med for med, _ in step_stats]), 4) if decode_tokens else None,
                                 "warmup_passes": self.warmup, "device": handle.device,
                                 "threads": torch.get_num_threads() if handle.device == "cpu" else None}
        if handle.device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated(handle.device) - handle.cuda_before_load
            extra["memory_kind"] = "cuda-max-allocated"
        else:
            peak = peak_growth(handle.rss_before_load, peak_reset)
            extra["memory_kind"] = "rss-peak-growth" if peak_reset else "rss-growth"
        return Measurement(prefill_ms=prefill_ms, decode_ms_per_token=decode_ms, peak_memory_bytes=peak, extra=extra)

    def close(self, handle: _Handle) -> None:
        device = handle.device
        handle.model = None
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
