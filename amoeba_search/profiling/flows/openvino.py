"""OpenVINO: HF checkpoint -> stateful OpenVINO IR -> ``openvino_genai.LLMPipeline`` on the CPU.

optimum-intel (the usual exporter) pins transformers < 5.6, so the IR is made here with the documented
``openvino.convert_model`` on the torch model, in the layout optimum-intel writes and LLMPipeline reads:
inputs ``input_ids``, ``attention_mask``, ``position_ids``, ``beam_idx``; output ``logits``; the KV cache
held as model state (``openvino.passes.MakeStateful``). Timings are LLMPipeline's own ``perf_metrics``:
TTFT (prompt -> first token) and TPOT (mean time per later token), greedy, EOS ignored.
"""
from __future__ import annotations

import gc
import multiprocessing
import shutil
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from amoeba_search.profiling.flows import _common
from amoeba_search.profiling.flows.base import BaseFlow, Measurement, MeasureSettings

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


@dataclass
class _Handle:
    pipe: object
    ir_dir: Path
    vocab_size: int
    rss_before_load: int | None
    extra: dict = field(default_factory=dict)


def _export_ir(checkpoint: Path, out: Path, compress_to_fp16: bool) -> None:
    """Trace the model with its KV cache as explicit tensors, then make the cache internal state."""
    import numpy as np
    import openvino as ov
    import openvino.passes
    import torch
    from openvino import opset13 as ops
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32, attn_implementation="sdpa")
    cfg = model.eval().config
    n_layers, kv_heads = cfg.num_hidden_layers, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    class WithCache(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, position_ids, beam_idx, *past):  # past: (B, kv, T_past, d)
            cache = DynamicCache(config=self.lm.config)
            for i, layer in enumerate(cache.layers):
                k, v = past[2 * i][beam_idx], past[2 * i + 1][beam_idx]
                layer.lazy_initialization(k, v)
                layer.keys, layer.values = k, v
            out, cache = _common.forward_with_cache(self.lm, cache, input_ids=input_ids, logits_to_keep=1,
                                                    attention_mask=attention_mask, position_ids=position_ids)
            present = [t for layer in cache.layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    past_len, new = 2, 3  # example shapes only; every sequence dimension is dynamic
    example = (torch.ones(1, new, dtype=torch.long), torch.ones(1, past_len + new, dtype=torch.long),
               torch.arange(past_len, past_len + new)[None], torch.zeros(1, dtype=torch.int32),
               *[torch.zeros(1, kv_heads, past_len, head_dim) for _ in range(2 * n_layers)])
    shapes = [[-1, -1]] * 3 + [[-1]] + [[-1, kv_heads, -1, head_dim]] * (2 * n_layers)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent branches of the mask code
        ov_model = ov.convert_model(WithCache(model).eval(), example_input=example,
                                    input=[ov.PartialShape(s) for s in shapes])
    kv = [f"{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]
    for port, name in zip(ov_model.inputs, ["input_ids", "attention_mask", "position_ids", "beam_idx"] +
                          [f"past_key_values.{n}" for n in kv]):
        port.get_tensor().set_names({name})
    for port, name in zip(ov_model.outputs, ["logits"] + [f"present.{n}" for n in kv]):
        port.get_tensor().set_names({name})
    manager = openvino.passes.Manager()
    manager.register_pass(openvino.passes.MakeStateful({f"past_key_values.{n}": f"present.{n}" for n in kv}))
    manager.run_passes(ov_model)
    # Each state starts as an empty (batch, kv_heads, 0, head_dim) tensor, batch taken from input_ids.
    batch = ops.gather(ops.shape_of(ov_model.input("input_ids"), output_type="i64"), ops.constant([0]),
                       ops.constant(0))
    for op in ov_model.get_ops():
        if op.get_type_name() == "ReadValue":
            shape = ops.concat([batch, ops.constant(np.array([kv_heads, 0, head_dim], dtype=np.int64))], axis=0)
            op.set_arguments([ops.broadcast(ops.constant(0.0, dtype=op.get_output_element_type(0)), shape)])
    ov_model.validate_nodes_and_infer_types()
    ov.save_model(ov_model, str(out / "openvino_model.xml"), compress_to_fp16=compress_to_fp16)
    for name in ("config.json", "generation_config.json"):
        if (Path(checkpoint) / name).is_file():
            shutil.copy(Path(checkpoint) / name, out / name)


def _export_ir_isolated(checkpoint: Path, out: Path, compress_to_fp16: bool) -> None:
    """:func:`_export_ir` in a fresh process. ``openvino.convert_model`` keeps memory it never gives back
    (measured: +36 MB per export of an 8-layer subnet of the default model, +0.1-0.35 GB per full-depth one),
    so a profiling run in one process grew by gigabytes and its growth showed up as other CPU load."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_export_ir, checkpoint, out, compress_to_fp16).result()


class OpenVinoFlow(BaseFlow):
    name = "openvino"

    def unavailable_reason(self) -> str | None:
        for module, package in (("openvino", "openvino"), ("openvino_genai", "openvino-genai")):
            if _common.missing_module(module):
                return f"OpenVINO flow needs {package}: pip install openvino openvino-genai"
        return None

    def versions(self) -> dict[str, str]:
        return _common.package_versions("openvino", "openvino-genai")

    backends = ("cpu",)
    wrong_backend = "the OpenVINO flow runs on the CPU here (OpenVINO's GPU plugin is for Intel GPUs)"

    def dtypes(self, backend: str) -> tuple[str, ...]:
        return tuple(_PRECISION_HINT)

    def build(self, checkpoint: Path, workdir: Path, settings: MeasureSettings, device: str, config: dict) -> _Handle:
        out = Path(workdir) / "openvino-ir"
        out.mkdir(parents=True, exist_ok=True)
        _export_ir_isolated(Path(checkpoint), out, compress_to_fp16=settings.dtype != "fp32")

        import openvino_genai

        # The CPU plugin's default KV cache is u8-quantized; keep it in the measured dtype, as other flows do.
        precision = _PRECISION_HINT[settings.dtype]
        props = {"INFERENCE_PRECISION_HINT": precision, "KV_CACHE_PRECISION": precision}
        if _common.threads(settings):
            props["INFERENCE_NUM_THREADS"] = _common.threads(settings)
        gc.collect()
        rss_before = _common.rss_bytes()
        pipe = openvino_genai.LLMPipeline(str(out), "CPU", **props)
        extra = {"ir_bytes": _common.dir_bytes(out), **{k.lower(): v for k, v in props.items()}}
        return _Handle(pipe, out, config["vocab_size"], rss_before, extra)

    def measure(self, handle: _Handle, settings: MeasureSettings) -> Measurement:
        import numpy as np
        import openvino as ov
        import openvino_genai

        config = openvino_genai.GenerationConfig()
        config.max_new_tokens = config.min_new_tokens = settings.decode_tokens + 1  # first token + N decode steps
        config.do_sample, config.ignore_eos = False, True
        prefill, decode = [], []
        peak_reset = _common.reset_peak_rss()
        for rep in range(settings.repeats + 1):  # repeat 0 is the untimed warm-up
            # a fresh prompt each time, so no prefix cache can serve it
            ids = np.asarray([_common.prompt_ids(handle.vocab_size, settings.prompt_len, rep)], dtype=np.int64)
            inputs = openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
            metrics = handle.pipe.generate(inputs, config).perf_metrics
            if rep:
                prefill.append(float(metrics.get_ttft().mean))
                decode.append(float(metrics.get_tpot().mean))
        peak = _common.peak_growth(handle.rss_before_load, peak_reset)
        return Measurement(prefill_ms=prefill, decode_ms_per_token=decode, peak_memory_bytes=peak,
                           extra=dict(handle.extra))

    def close(self, handle: _Handle) -> None:
        if handle is not None:
            handle.pipe = None
