"""llama.cpp through llama-cpp-python: HF checkpoint -> GGUF (f32/f16) -> ``llama_cpp.Llama``.

Prefill is one ``eval`` of the whole prompt (``n_batch`` >= prompt, so one decode call); decode is
token-by-token ``eval`` of the greedy (argmax) token, on the KV cache that the prompt filled.
llama.cpp's own counters (``llama_perf_context``) are kept in ``extra`` as a cross-check.
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from amoeba_search.errors import InputError
from amoeba_search.profiling.flows import _common
from amoeba_search.profiling.flows.base import BaseFlow, Measurement, MeasureSettings

_GGUF_DTYPES = {"fp32": "f32", "fp16": "f16"}


@dataclass
class _Handle:
    llm: object
    gguf: Path
    vocab_size: int
    rss_before_load: int | None
    extra: dict = field(default_factory=dict)


def _stand_in_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer (256 bytes + one merge) for checkpoints without a usable tokenizer.

    Latency does not depend on the vocabulary's content, only on the model's ``vocab_size``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    vocab["Ġt"] = len(vocab)
    if vocab_size < len(vocab):
        raise InputError(f"vocab_size {vocab_size} is too small for a byte-level stand-in tokenizer")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "t")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


class LlamaCppFlow(BaseFlow):
    name = "llamacpp"

    def unavailable_reason(self) -> str | None:
        if _common.missing_module("llama_cpp"):
            return ("llama.cpp flow needs llama-cpp-python: pip install llama-cpp-python "
                    "(builds llama.cpp from source, ~12 min on 2 cores)")
        if _common.missing_module("gguf"):
            return "llama.cpp flow needs gguf to write the model: pip install gguf"
        return None

    def versions(self) -> dict[str, str]:
        return _common.package_versions("llama-cpp-python", "gguf")

    def dtypes(self, backend: str) -> tuple[str, ...]:
        return tuple(_GGUF_DTYPES)

    def build(self, checkpoint: Path, workdir: Path, settings: MeasureSettings, device: str, config: dict) -> _Handle:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from amoeba_search.models.gguf_export import write_gguf

        workdir = Path(workdir)
        path = workdir / f"model-{_GGUF_DTYPES[settings.dtype]}.gguf"
        model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
        dtype, extra = _GGUF_DTYPES[settings.dtype], {"tokenizer": "checkpoint"}
        try:
            if not _common.has_tokenizer(checkpoint):
                raise InputError("the checkpoint has no tokenizer files")
            write_gguf(model, AutoTokenizer.from_pretrained(str(checkpoint)), path, dtype=dtype)
        except (ValueError, OSError) as exc:  # a tokenizer llama.cpp cannot take (no merges, unknown pre-tokenizer)
            extra = {"tokenizer": f"stand-in ({exc})"}
            write_gguf(model, _stand_in_tokenizer(model.config.vocab_size), path, dtype=dtype)
        vocab_size = model.config.vocab_size
        del model
        gc.collect()

        import llama_cpp

        rss_before = _common.rss_bytes()

        n_threads = _common.threads(settings)
        llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=settings.prompt_len + settings.decode_tokens + 8,
            n_batch=max(settings.prompt_len, 8), n_threads=n_threads, n_threads_batch=n_threads,
            n_gpu_layers=-1 if _common.backend(device) == "cuda" else 0, seed=0, verbose=False)
        extra.update(gguf_bytes=path.stat().st_size, n_threads=llm.n_threads, n_threads_batch=llm.n_threads_batch)
        return _Handle(llm, path, vocab_size, rss_before, extra)

    def measure(self, handle: _Handle, settings: MeasureSettings) -> Measurement:
        import llama_cpp
        import numpy as np

        llm = handle.llm

        def greedy() -> int:  # argmax over the last position's logits, read in place
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(handle.vocab_size,))
            return int(logits.argmax())

        prefill, decode, own_prefill, own_decode = [], [], [], []
        peak_reset = _common.reset_peak_rss()
        for rep in range(settings.repeats + 1):  # repeat 0 is the untimed warm-up
            ids = _common.prompt_ids(handle.vocab_size, settings.prompt_len, seed=rep)
            llm.reset()  # n_tokens = 0: the next eval drops the whole KV cache
            llama_cpp.llama_perf_context_reset(llm.ctx)
            t0 = time.perf_counter()
            llm.eval(ids)
            token = greedy()
            t1 = time.perf_counter()
            for _ in range(settings.decode_tokens):
                llm.eval([token])
                token = greedy()
            t2 = time.perf_counter()
            if rep == 0:
                continue
            prefill.append((t1 - t0) * 1e3)
            decode.append((t2 - t1) * 1e3 / settings.decode_tokens)
            perf = llama_cpp.llama_perf_context(llm.ctx)
            own_prefill.append(perf.t_p_eval_ms)
            own_decode.append(perf.t_eval_ms / max(perf.n_eval, 1))
        extra = dict(handle.extra, llama_prefill_ms_median=statistics.median(own_prefill),
                     llama_decode_ms_per_token_median=statistics.median(own_decode))
        peak = _common.peak_growth(handle.rss_before_load, peak_reset)
        return Measurement(prefill_ms=prefill, decode_ms_per_token=decode, peak_memory_bytes=peak, extra=extra)

    def close(self, handle: _Handle) -> None:
        if handle is not None and handle.llm is not None:
            handle.llm.close()
            handle.llm = None
