"""ONNX Runtime GenAI: HF checkpoint -> ONNX with the GenAI model builder -> ``og.Generator``.

The builder (``python -m onnxruntime_genai.models.builder -i <dir> -o <out> -p <precision> -e <ep>``)
reads ``head_dim`` from config.json, so cut models (fewer layers, smaller FFN, fewer heads with
``num_attention_heads * head_dim != hidden_size``) build as they are. Its CPU attention kernel
(GroupQueryAttention) needs ``head_dim`` to be a multiple of 16 (real models have 64 or 128).
``prune_lm_head=true`` makes prefill compute the last position's logits only (the builder's default
computes all). Prefill = ``append_tokens(prompt)`` (runs the prompt, leaves the last logits); decode = each
``generate_next_token()`` after the first (which only samples), one forward of one token each.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from amoeba_search.errors import InputError
from amoeba_search.profiling.flows import _common
from amoeba_search.profiling.flows.base import BaseFlow, Measurement, MeasureSettings

# dtype -> builder precision, per execution provider (the builder's valid combinations)
_PRECISION = {"cpu": {"fp32": "fp32"}, "cuda": {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}}


@dataclass
class _Handle:
    model: object
    onnx_dir: Path
    vocab_size: int
    rss_before_load: int | None
    extra: dict = field(default_factory=dict)


class OrtGenAIFlow(BaseFlow):
    name = "ort"

    def unavailable_reason(self) -> str | None:
        if _common.missing_module("onnxruntime_genai"):
            return ("ONNX Runtime GenAI flow needs onnxruntime-genai (and onnx, onnx-ir for its model builder): "
                    "pip install onnxruntime-genai onnx onnx-ir")
        for module, package in (("onnx", "onnx"), ("onnx_ir", "onnx-ir")):
            if _common.missing_module(module):
                return f"the ONNX Runtime GenAI model builder needs {package}: pip install {package}"
        return None

    def versions(self) -> dict[str, str]:
        return _common.package_versions("onnxruntime-genai", "onnxruntime-genai-cuda", "onnxruntime", "onnx")

    def dtypes(self, backend: str) -> tuple[str, ...]:
        return tuple(_PRECISION[backend])

    def build(self, checkpoint: Path, workdir: Path, settings: MeasureSettings, device: str, config: dict) -> _Handle:
        ep = _common.backend(device)
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        if ep == "cpu" and head_dim % 16:
            raise InputError(f"ONNX Runtime's CPU GroupQueryAttention needs head_dim to be a multiple of 16; "
                             f"this model has head_dim={head_dim}")
        out, cache = Path(workdir) / f"onnx-{settings.dtype}-{ep}", Path(workdir) / "builder-cache"
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(out),
               "-p", _PRECISION[ep][settings.dtype], "-e", ep, "-c", str(cache),
               "--extra_options", "prune_lm_head=true"]  # last-token logits only in prefill, as other flows
        done = subprocess.run(cmd, capture_output=True, text=True)
        (Path(workdir) / "ort-builder.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0 or not (out / "genai_config.json").is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"onnxruntime_genai model builder failed ({done.returncode}): " + " | ".join(tail))

        import onnxruntime_genai as og

        og_config = og.Config(str(out))
        n_threads = _common.threads(settings)
        if n_threads:
            og_config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": n_threads, "inter_op_num_threads": 1}}}}))
        rss_before = _common.rss_bytes()
        model = og.Model(og_config)
        extra = {"onnx_bytes": _common.dir_bytes(out), "execution_provider": ep,
                 "precision": _PRECISION[ep][settings.dtype], "intra_op_num_threads": n_threads}
        return _Handle(model, out, config["vocab_size"], rss_before, extra)

    def measure(self, handle: _Handle, settings: MeasureSettings) -> Measurement:
        import numpy as np
        import onnxruntime_genai as og

        prefill, decode = [], []
        peak_reset = _common.reset_peak_rss()
        for rep in range(settings.repeats + 1):  # repeat 0 is the untimed warm-up
            ids = np.asarray([_common.prompt_ids(handle.vocab_size, settings.prompt_len, rep)], dtype=np.int32)
            params = og.GeneratorParams(handle.model)
            params.set_search_options(max_length=settings.prompt_len + settings.decode_tokens + 1, do_sample=False)
            generator = og.Generator(handle.model, params)  # allocates the KV cache (outside the timing)
            t0 = time.perf_counter()
            generator.append_tokens(ids)
            t1 = time.perf_counter()
            generator.generate_next_token()  # greedy pick from the prompt's logits; no forward pass
            t2 = time.perf_counter()
            for _ in range(settings.decode_tokens):
                generator.generate_next_token()  # forward of the last token + greedy pick
            t3 = time.perf_counter()
            del generator
            if rep:
                prefill.append((t1 - t0) * 1e3)
                decode.append((t3 - t2) * 1e3 / settings.decode_tokens)
        peak = _common.peak_growth(handle.rss_before_load, peak_reset)
        return Measurement(prefill_ms=prefill, decode_ms_per_token=decode, peak_memory_bytes=peak,
                           extra=dict(handle.extra))

    def close(self, handle: _Handle) -> None:
        if handle is not None:
            handle.model = None
