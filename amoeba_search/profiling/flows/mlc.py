"""MLC-LLM: HF checkpoint -> ``mlc_llm convert_weight`` + ``gen_config`` + ``compile`` -> ``MLCEngine``.

Needs a GPU (CUDA here) and the mlc-llm / mlc-ai wheels from MLC's own wheel index; it cannot run on the
CPU-only development machine, so this plugin follows the documented CLI and Python API and was not run
there. First-token latency: a completion with ``max_tokens=1``; per-token decode: a completion with
``max_tokens=N+1`` minus the first-token time, over N. Greedy (temperature 0), EOS ignored
(``debug_config.ignore_eos``), a fresh prompt for every request so the prefix cache cannot serve it.
"""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from amoeba_search.profiling.flows import _common
from amoeba_search.profiling.flows.base import BaseFlow, Measurement, MeasureSettings

_QUANT = {"fp32": "q0f32", "fp16": "q0f16", "bf16": "q0bf16"}  # q0 = weights not quantized


@dataclass
class _Handle:
    engine: object
    vocab_size: int
    extra: dict = field(default_factory=dict)


def _mlc(*args: str, log: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mlc_llm", *args], capture_output=True, text=True)
    with open(log, "a") as fh:
        fh.write(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"mlc_llm {args[0]} failed ({done.returncode}): {tail}")


class MLCFlow(BaseFlow):
    name = "mlc"

    def unavailable_reason(self) -> str | None:
        if _common.missing_module("mlc_llm") or _common.missing_module("tvm"):
            return ("MLC-LLM is not installed: it needs a GPU (an NVIDIA GPU with CUDA for this flow) and the "
                    "mlc-llm and mlc-ai wheels for your CUDA version from MLC's own wheel index (see MLC-LLM's "
                    "installation docs), not from the default index")
        try:
            import torch
            has_gpu = torch.cuda.is_available()
        except ImportError:
            has_gpu = False
        if not has_gpu:
            return "MLC-LLM (this flow) needs an NVIDIA GPU with CUDA, and none is visible here"
        return None

    def versions(self) -> dict[str, str]:
        import importlib.metadata

        # the wheels are named per CUDA version, e.g. mlc-llm-nightly-cu123 and mlc-ai-nightly-cu123
        return {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()
                if (d.metadata["Name"] or "").lower().startswith(("mlc-llm", "mlc-ai", "mlc_llm", "mlc_ai"))}

    backends = ("cuda",)
    wrong_backend = "this MLC-LLM flow compiles for CUDA; pick an NVIDIA GPU device"

    def dtypes(self, backend: str) -> tuple[str, ...]:
        return tuple(_QUANT)

    def build(self, checkpoint: Path, workdir: Path, settings: MeasureSettings, device: str, config: dict) -> _Handle:
        quant, out = _QUANT[settings.dtype], Path(workdir) / f"mlc-{_QUANT[settings.dtype]}"
        log, lib = Path(workdir) / "mlc.log", out / "model-cuda.so"
        _mlc("convert_weight", str(checkpoint), "--quantization", quant, "--device", "cuda", "-o", str(out),
             log=log)
        _mlc("gen_config", str(checkpoint), "--quantization", quant, "--conv-template", "LM",
             "--context-window-size", str(settings.prompt_len + settings.decode_tokens + 8),
             "--prefill-chunk-size", str(settings.prompt_len), "--max-batch-size", "1", "-o", str(out), log=log)
        _mlc("compile", str(out / "mlc-chat-config.json"), "--device", "cuda", "-o", str(lib), log=log)
        from mlc_llm import MLCEngine

        engine = MLCEngine(str(out), device="cuda", model_lib=str(lib), mode="local")
        extra = {"quantization": quant, "model_lib_bytes": lib.stat().st_size}
        return _Handle(engine, config["vocab_size"], extra)

    def measure(self, handle: _Handle, settings: MeasureSettings) -> Measurement:
        def request_ms(tokens: int, seed: int) -> float:
            ids = _common.prompt_ids(handle.vocab_size, settings.prompt_len, seed=seed)
            t0 = time.perf_counter()
            handle.engine.completions.create(prompt=ids, max_tokens=tokens, temperature=0.0, stream=False,
                                             extra_body={"debug_config": {"ignore_eos": True}})
            return (time.perf_counter() - t0) * 1e3

        return _common.time_requests(request_ms, settings, handle.extra)

    def close(self, handle: _Handle) -> None:
        if handle is not None and handle.engine is not None:
            handle.engine.terminate()
            handle.engine = None
