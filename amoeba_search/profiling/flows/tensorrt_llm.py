"""TensorRT-LLM through its high-level ``tensorrt_llm.LLM`` API, built from the HF checkpoint directory.

Needs an NVIDIA GPU and the ``tensorrt_llm`` package from NVIDIA's own package index; it cannot run on
the CPU-only development machine, so this plugin follows the documented API and was not run there.
``LLM(model=<dir>)`` converts the checkpoint and builds/loads the engine itself (what ``trtllm-build``
does by hand). First-token latency: a request with ``max_tokens=1``; per-token decode: a request with
``max_tokens=N+1`` minus the first-token time, over N. Greedy (``top_k=1``), EOS ignored, fresh prompts
and no KV block reuse, so no request is served from a cache.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from amoeba_search.profiling.flows import _common
from amoeba_search.profiling.flows.base import BaseFlow, Measurement, MeasureSettings

_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


@dataclass
class _Handle:
    llm: object
    vocab_size: int
    extra: dict = field(default_factory=dict)


class TensorRTLLMFlow(BaseFlow):
    name = "tensorrt-llm"

    def unavailable_reason(self) -> str | None:
        if _common.missing_module("tensorrt_llm"):
            return ("TensorRT-LLM is not installed: it needs an NVIDIA GPU (Linux, CUDA) and installs from "
                    "NVIDIA's own package index (pip install tensorrt_llm with NVIDIA's extra index URL, as "
                    "in the TensorRT-LLM installation guide), not from the default index")
        try:
            import torch
            has_gpu = torch.cuda.is_available()
        except ImportError:
            has_gpu = False
        if not has_gpu:
            return "TensorRT-LLM needs an NVIDIA GPU with CUDA, and none is visible here"
        return None

    def versions(self) -> dict[str, str]:
        return _common.package_versions("tensorrt_llm", "tensorrt")

    backends = ("cuda",)
    wrong_backend = "TensorRT-LLM runs on NVIDIA GPUs only; pick a GPU device"

    def dtypes(self, backend: str) -> tuple[str, ...]:
        return tuple(_DTYPES)

    def build(self, checkpoint: Path, workdir: Path, settings: MeasureSettings, device: str, config: dict) -> _Handle:
        from tensorrt_llm import LLM
        from tensorrt_llm.llmapi import KvCacheConfig

        llm = LLM(model=str(checkpoint), dtype=_DTYPES[settings.dtype],
                  skip_tokenizer_init=not _common.has_tokenizer(checkpoint),
                  max_batch_size=1, max_seq_len=settings.prompt_len + settings.decode_tokens + 1,
                  max_num_tokens=max(settings.prompt_len, 64),
                  kv_cache_config=KvCacheConfig(enable_block_reuse=False))
        return _Handle(llm, config["vocab_size"], {"dtype": _DTYPES[settings.dtype]})

    def measure(self, handle: _Handle, settings: MeasureSettings) -> Measurement:
        from tensorrt_llm import SamplingParams

        def request_ms(tokens: int, seed: int) -> float:
            ids = _common.prompt_ids(handle.vocab_size, settings.prompt_len, seed=seed)
            params = SamplingParams(max_tokens=tokens, top_k=1, ignore_eos=True, detokenize=False)
            t0 = time.perf_counter()
            handle.llm.generate([ids], params, use_tqdm=False)
            return (time.perf_counter() - t0) * 1e3

        return _common.time_requests(request_ms, settings, handle.extra)

    def close(self, handle: _Handle) -> None:
        if handle is not None and handle.llm is not None:
            handle.llm.shutdown()
            handle.llm = None
