"""One run on an NVIDIA GPU machine: does every stage of amoeba-search work there, and how fast is it?

Run once from the repository root on a machine with NVIDIA GPU(s) (no network needed):

    python benchmarks/gpu_check.py                      # -> benchmarks/results/gpu-check.json, < 8 min
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu-check-smoke.json   # smoke test, no GPU

Every section runs on random-weight LLaMA models built in code (a Llama-3.2-1B-like shape with a smaller
vocabulary, bf16), so nothing is downloaded:

1. ``depth_dp``: rows of the DP depth selection (``selection.depth_dp`` over ``ModelObjective`` with a
   ``PerplexityMetric``): evaluations/s, finite metrics; one evaluation of a tiny model on the device
   against the same on the CPU in fp32.
2. ``finetune``: 20 bf16 steps of the one-for-all trainer with a SMoL adapter (fp32) on a bf16 base:
   step time, finite losses, peak CUDA memory; across GPUs with NCCL when there are several.
3. ``perplexity``: the search's evaluations (``evaluation.perplexity``) of several shapes: tokens/s.
4. ``torch_profile``: prefill and greedy KV-cache decode (batch 1) of three exported subnets, loaded with
   plain ``AutoModelForCausalLM.from_pretrained``, timed with CUDA events; energy per token from NVML's
   energy counter (and, as a cross-check, the library's power sampler and torch flow).
5. ``tensorrt_llm``: the TensorRT-LLM flow, when ``tensorrt_llm`` is installed.

One failing section does not stop the others; the result file is rewritten (atomically) after each section,
so a run cut short keeps what was done. ``--budget-s`` bounds the whole run (sections shrink their work when
little time is left, and a section that overruns is stopped); a watchdog ends the process shortly after.
Needs only torch, transformers, accelerate, pandas and nvidia-ml-py besides this repository.
"""
from __future__ import annotations

import time

STARTED = time.monotonic()  # the budget counts the imports too

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built in code; never wait on a hub that is not there

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu-check.json"
SCHEMA_VERSION = 1
HARD_LIMIT_S = 470  # the watchdog never lets the process live longer than this (the promise is 8 minutes)

# Llama-3.2-1B's layer shape (hidden 2048, 16 layers, 32 heads / 8 KV heads, FFN 8192), a 32k vocabulary.
FULL_MODEL = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                  intermediate_size=8192, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
TINY_MODEL = dict(hidden_size=64, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  intermediate_size=128, vocab_size=512, max_position_embeddings=256, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
# The model of the device-vs-CPU comparison in section 1: small enough to run in fp32 on any CPU in a second.
COMPARE_MODEL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                     intermediate_size=512, vocab_size=1024, max_position_embeddings=512, rms_norm_eps=1e-6,
                     tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)

# Work per section: (full model on the GPU, tiny model); a section scales these down when time is short.
SIZES = {
    "depth_dp": {"blocks": (16, 2), "seq_len": (512, 32), "batch_size": (8, 2), "removed": (4, 2)},
    "finetune": {"steps": (20, 20), "batch_size": (4, 2), "seq_len": (512, 32), "rank": (None, 4)},
    "perplexity": {"blocks": (32, 4), "seq_len": (1024, 64), "batch_size": (8, 4)},
    "torch_profile": {"prompt_len": (512, 16), "decode_tokens": (64, 4)},
    "tensorrt_llm": {"prompt_len": (128, 16), "decode_tokens": (32, 4), "repeats": (3, 2)},
}
# What a section is expected to take at full size on one H200 (seconds); it shrinks when given less.
PLANNED_S = {"depth_dp": 40, "finetune": 60, "perplexity": 30, "torch_profile": 90, "tensorrt_llm": 150}
RESERVE_S = 15  # kept back for each later section when a section's time limit is set


class Skip(Exception):
    """The section (or part) cannot run here; the message says why."""


class SectionTimeout(Exception):
    """The section ran past its time limit."""


# -- small helpers ------------------------------------------------------------------------------------------

def log(message: str) -> None:
    print(f"[gpu-check {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def json_safe(value):
    """``value`` with non-finite floats as strings and tuples/paths/dtypes made plain (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(json_safe(data), handle, indent=2, allow_nan=False)
            handle.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def median(values):
    return statistics.median(values) if values else None


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_model(config: dict, device, dtype, *, seed: int = 0, std: float | None = None):
    """A random-weight ``LlamaForCausalLM`` of ``config``, initialized directly on ``device``, in ``dtype``.

    ``std`` widens the init (the default 0.02 makes every logit ~0, so cutting layers hardly shows)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**config))
    if std is not None:
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() == 2:
                    param.normal_(0, std)
    return model.to(dtype).eval()


def random_blocks(n: int, seq_len: int, vocab: int, *, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, seq_len), generator=generator)


def spread_layers(num_layers: int, depth: int) -> list[int]:
    """``depth`` layers spread evenly over the stack, first and last kept (a stand-in for a DP strategy)."""
    if depth >= num_layers:
        return list(range(num_layers))
    if depth == 1:
        return [num_layers - 1]
    return sorted({round(i * (num_layers - 1) / (depth - 1)) for i in range(depth)})


def three_shapes(dims):
    """Full, three-quarter and half depth, with narrower FFN and fewer heads as they shrink."""
    from amoeba_search.shapes import SubnetShape

    n, group = dims.num_layers, dims.group_size
    heads = [g / group for g in range(1, group + 1)]
    return [SubnetShape(n, 1.0, 1.0), SubnetShape(max(1, 3 * n // 4), 0.75, heads[(len(heads) - 1) // 2]),
            SubnetShape(max(1, n // 2), 0.5, heads[0])]


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 2000 else text[:2000] + " ..."


def part(fn, *args) -> dict:
    """``fn(*args)`` (a dict with its own "status"), or a failed status: a sub-check must not sink its section."""
    try:
        return fn(*args)
    except Skip as why:
        return {"status": "skipped", "error": str(why)}
    except Exception as exc:  # noqa: BLE001
        return {"status": "failed", "error": short_error(exc), "traceback": traceback.format_exc().splitlines()[-8:]}


def is_device_mismatch(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("same device" in text or ("device" in text and "cpu" in text.lower()))


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`SectionTimeout` in the main thread after ``seconds`` (SIGALRM; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expired(signum, frame):
        raise SectionTimeout(f"the section ran past its {seconds:.0f} s limit and was stopped")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, max(1.0, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Timer:
    """CUDA events on a GPU, ``perf_counter`` on the CPU (where every op is synchronous anyway)."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self._event = (lambda: torch.cuda.Event(enable_timing=True)) if self.cuda else _WallEvent

    def mark(self):
        event = self._event()
        event.record()
        return event

    @staticmethod
    def ms(start, end) -> float:
        return start.elapsed_time(end)  # events must be synchronized first


class _WallEvent:
    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: "_WallEvent") -> float:
        return (end.t - self.t) * 1e3


# -- the run: options, machine, result file --------------------------------------------------------------

class Check:
    """What every section needs: options, device, sizes, time left; and the result file it writes."""

    def __init__(self, args):
        import torch

        self.args = args
        self.device = torch.device(args.device if args.device != "cuda" else "cuda:0")
        self.tiny = args.tiny
        self.dtype = torch.bfloat16
        self.model_config = dict(TINY_MODEL if self.tiny else FULL_MODEL)
        self.out = Path(args.out)
        self.deadline = STARTED + args.budget_s
        self.lock = threading.Lock()
        self.current: str | None = None
        self.section_started = time.monotonic()
        self.result = {"schema_version": SCHEMA_VERSION, "script": "benchmarks/gpu_check.py",
                       "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished": False,
                       "args": {"device": args.device, "tiny": args.tiny, "budget_s": args.budget_s,
                                "sections": args.sections},
                       "model": {"family": "llama", "weights": "random (seed 0)", "dtype": "bfloat16",
                                 "config": self.model_config},
                       "machine": {}, "sections": {}}

    def size(self, section: str, key: str):
        return SIZES[section][key][1 if self.tiny else 0]

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def scale(self, section: str, limit: float) -> float:
        """1 when ``limit`` seconds cover the section's plan, else the share it covers (at least 0.2)."""
        planned = 10 if self.tiny else PLANNED_S[section]
        return max(0.2, min(1.0, limit / planned))

    def write(self) -> None:
        with self.lock:
            self.result["elapsed_s"] = round(time.monotonic() - STARTED, 2)
            write_json_atomic(self.out, self.result)


def machine_info(device) -> dict:
    import torch
    import transformers

    info = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cuda_available": torch.cuda.is_available(), "device": str(device)}
    for package in ("accelerate", "pandas", "numpy", "safetensors", "nvidia-ml-py", "tensorrt_llm"):
        try:
            from importlib.metadata import version

            info[f"pkg_{package}"] = version(package)
        except Exception:
            info[f"pkg_{package}"] = None
    try:
        from amoeba_search.profiling.machine import cpu_cores, cpu_model_name, memory_bytes

        info.update(cpu_model=cpu_model_name(), cpu_cores=cpu_cores(), memory_bytes=memory_bytes())
    except Exception as exc:
        info.update(cpu_model=platform.processor() or "unknown", cpu_probe_error=short_error(exc))
    if torch.cuda.is_available():
        info["gpus"] = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"index": i, "name": props.name, "memory_bytes": props.total_memory,
                                 "capability": f"{props.major}.{props.minor}",
                                 "multiprocessors": props.multi_processor_count})
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            info["nvidia_driver"] = driver.decode() if isinstance(driver, bytes) else str(driver)
            cuda_driver = pynvml.nvmlSystemGetCudaDriverVersion()
            info["cuda_driver_version"] = f"{cuda_driver // 1000}.{cuda_driver % 1000 // 10}"
            names = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                names.append(name.decode() if isinstance(name, bytes) else str(name))
            info["nvml_gpus"] = names
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:
        info["nvml"] = f"unavailable: {short_error(exc)}"
    return info


# -- section 1: DP rows of the depth selection ---------------------------------------------------------------

def _device_safe_metric_class():
    """A ``PerplexityMetric`` whose statistics follow the hidden states' device (a stand-in for libraries whose
    ``batch_stats`` accumulates on the CPU); used only when the library's own fails on the device."""
    import torch
    import torch.nn.functional as F

    from amoeba_search.selection.calibration import PerplexityMetric

    class DeviceSafePerplexityMetric(PerplexityMetric):
        def batch_stats(self, index, hidden, lm_head):
            ids = self._batches[index].to(hidden.device)
            total = torch.zeros((), dtype=torch.float64, device=hidden.device)
            for lo in range(0, hidden.shape[0], 2):
                logits = lm_head(hidden[lo:lo + 2, :-1]).float()                          # (r, T-1, V)
                total += F.cross_entropy(logits.transpose(1, 2), ids[lo:lo + 2, 1:], reduction="none").double().sum()
            count = ids.shape[0] * (ids.shape[1] - 1)
            return torch.stack([total.cpu(), torch.tensor(float(count), dtype=torch.float64)])

    return DeviceSafePerplexityMetric


def _objective(supernet, blocks, batch_size, metric_class):
    from amoeba_search.selection.objective import ModelObjective

    return ModelObjective(supernet, metric_class(blocks, batch_size=batch_size), cache="tree")


def section_depth_dp(check: Check, limit: float, record: dict) -> None:
    import torch

    from amoeba_search.models.supernet import Supernet
    from amoeba_search.selection.calibration import PerplexityMetric
    from amoeba_search.selection.depth_dp import depth_dp, dp_evaluation_count

    device, scale = check.device, check.scale("depth_dp", limit)
    model = build_model(check.model_config, device, check.dtype)
    supernet = Supernet(model)
    n = supernet.dims.num_layers
    blocks = random_blocks(max(2, round(check.size("depth_dp", "blocks") * scale)), check.size("depth_dp", "seq_len"),
                           check.model_config["vocab_size"], seed=1).to(device)
    batch_size = check.size("depth_dp", "batch_size")
    min_depth = max(1, n - check.size("depth_dp", "removed"))
    record.update(calibration_tokens=int(blocks.numel()), batch_size=batch_size, num_layers=n, min_depth=min_depth)

    metric_class = PerplexityMetric
    objective = _objective(supernet, blocks, batch_size, metric_class)
    start = time.perf_counter()
    try:
        full = objective.full()
    except RuntimeError as exc:
        if not is_device_mismatch(exc):
            raise
        record["library_metric_error"] = short_error(exc)
        metric_class = _device_safe_metric_class()
        record["metric"] = "DeviceSafePerplexityMetric (script-side: the library's failed on this device)"
        objective = _objective(supernet, blocks, batch_size, metric_class)
        start = time.perf_counter()
        full = objective.full()
    sync(device)
    record["prefix_pass_s"] = round(time.perf_counter() - start, 4)
    record.setdefault("metric", "amoeba_search.selection.calibration.PerplexityMetric")
    record["full_model_ppl"] = full

    rows = []
    evaluate = objective.evaluate

    def timed_evaluate(below, tails):
        t0 = time.perf_counter()
        values = evaluate(below, tails)
        rows.append({"below": below, "networks": len(tails), "s": round(time.perf_counter() - t0, 4)})
        return values

    objective.evaluate = timed_evaluate
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = depth_dp(objective, min_depth=min_depth)
    sync(device)
    seconds = time.perf_counter() - start
    evaluated = sum(r["networks"] for r in rows)
    record.update(dp_s=round(seconds, 3), rows=rows, evaluations=result.evaluations,
                  evaluations_expected=dp_evaluation_count(n, min_depth),
                  evaluations_per_s=round(evaluated / max(sum(r["s"] for r in rows), 1e-9), 2),
                  depth_layers={str(d): v for d, v in sorted(result.depth_layers.items())},
                  depth_metric={str(d): v for d, v in sorted(result.depth_metric.items())},
                  metrics_finite=finite(full, *result.depth_metric.values()), counters=objective.counters())
    if device.type == "cuda":
        record["peak_cuda_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    del objective, supernet, model
    free_memory(device)
    record["device_vs_cpu_fp32"] = part(_compare_with_cpu, device, metric_class, check.tiny)
    if not record["metrics_finite"]:
        raise RuntimeError(f"non-finite DP metrics: {record['depth_metric']}")


def _compare_with_cpu(device, metric_class, tiny: bool) -> dict:
    """One network of a small model (some middle layers removed) scored on the CPU in fp32 and on ``device``."""
    import torch

    from amoeba_search.models.supernet import Supernet

    config = TINY_MODEL if tiny else COMPARE_MODEL
    blocks = random_blocks(2 if tiny else 4, 32 if tiny else 128, config["vocab_size"], seed=2)
    below, tail = 1, (3,)  # the network of layers 0 and 3 only
    values = {}
    for name, where, dtype in (("cpu_fp32", torch.device("cpu"), torch.float32),
                               ("device_fp32", device, torch.float32), ("device_bf16", device, torch.bfloat16)):
        model = build_model(config, "cpu", torch.float32, seed=3, std=0.08).to(where, dtype)
        objective = _objective(Supernet(model), blocks.to(where), 2, metric_class)
        values[name] = objective.evaluate(below, [tail])[0]
        del objective, model
    free_memory(device)
    ref = values["cpu_fp32"]
    return {"status": "ok", "network": [*range(below), *tail], "ppl": values,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None,
            "rel_diff_fp32": abs(values["device_fp32"] - ref) / abs(ref),
            "rel_diff_bf16": abs(values["device_bf16"] - ref) / abs(ref),
            "note": "same weights and tokens; the fp32 difference is kernel rounding, the bf16 one is precision"}


# -- section 2: fine-tuning steps --------------------------------------------------------------------------

def _precision_options(config_class, trainer_class) -> tuple[dict, dict, str | None]:
    """Keyword arguments turning on bf16 for a TrainConfig or Trainer that grew such an option, and its name."""
    import torch

    def value(name, default):
        if name in ("autocast", "amp", "mixed_precision"):
            return True
        return torch.bfloat16 if isinstance(default, torch.dtype) else "bf16"

    names = ("autocast", "amp", "mixed_precision", "dtype", "compute_dtype", "autocast_dtype", "amp_dtype")
    fields = {f.name: f.default for f in dataclasses.fields(config_class)}
    params = inspect.signature(trainer_class.__init__).parameters
    for name in names:
        if name in fields:
            return {name: value(name, fields[name])}, {}, f"TrainConfig.{name}"
        if name in params:
            return {}, {name: value(name, params[name].default)}, f"Trainer({name}=...)"
    return {}, {}, None


def finetune_once(spec: dict, device, run_dir: Path) -> dict:
    """20 (or ``spec["steps"]``) trainer steps of a SMoL adapter (fp32) on a bf16 random model; what it cost.

    Used by the single-process section and by every rank of the multi-GPU one."""
    import torch

    from amoeba_search.finetune.data import TrainingData
    from amoeba_search.finetune.smol import SMoLAdapter, SMoLConfig, default_rank
    from amoeba_search.finetune.trainer import TrainConfig, Trainer
    from amoeba_search.fingerprint import model_fingerprint
    from amoeba_search.models.session import LoadedSupernet
    from amoeba_search.models.supernet import Supernet
    from amoeba_search.selection.strategy import SelectionStrategy
    from amoeba_search.shapes import SearchSpace

    model = build_model(spec["model_config"], device, torch.bfloat16)
    supernet = Supernet(model)
    dims = supernet.dims
    depths = sorted({dims.num_layers, max(1, 3 * dims.num_layers // 4), max(1, dims.num_layers // 2)})
    try:
        fingerprint, fingerprint_error = model_fingerprint(model, name="random-llama"), None
    except Exception as exc:  # noqa: BLE001 - only the strategy's bookkeeping needs it
        fingerprint, fingerprint_error = {"name": "random-llama", "dims": dims.to_dict()}, short_error(exc)
    strategy = SelectionStrategy(fingerprint, {d: spread_layers(dims.num_layers, d) for d in depths})
    loaded = LoadedSupernet("random-llama", supernet, None, fingerprint, strategy)
    heads = tuple(g / dims.group_size for g in range(1, dims.group_size + 1))
    space = SearchSpace(dims, tuple(depths), (0.5, 0.75, 1.0), heads)

    rank = spec["rank"] or default_rank(dims)
    smol = SMoLConfig(rank=rank, alpha=2.0 * rank)
    adapter_kwargs = {"seed": 0, "center_on": loaded.routes(space)}
    if "dtype" in inspect.signature(SMoLAdapter.__init__).parameters:
        adapter_kwargs["dtype"] = torch.float32
    adapter = SMoLAdapter(supernet, smol, **adapter_kwargs).to(device=device, dtype=torch.float32)

    ids = random_blocks(spec["examples"], spec["seq_len"], spec["model_config"]["vocab_size"], seed=4)
    data = TrainingData(ids, ids.clone(), {"kind": "random tokens", "examples": len(ids), "seq_len": spec["seq_len"]})
    config_kwargs, trainer_kwargs, option = _precision_options(TrainConfig, Trainer)
    config = TrainConfig(steps=spec["steps"], batch_size=spec["batch_size"], lr=1e-4, warmup_steps=2, num_random=2,
                         checkpoint_every=max(1, spec["steps"]), **config_kwargs)
    trainer = Trainer(loaded, adapter, data, config, run_dir, space, **trainer_kwargs)
    built_in = getattr(trainer, "autocast", None)
    if option:
        precision = f"the trainer's own option {option}"
        outer = contextlib.nullcontext()
    elif built_in is not None:
        precision = f"the trainer's built-in autocast ({built_in})"
        outer = contextlib.nullcontext()
    else:  # a trainer without mixed precision: autocast around it, or fp32 adapter x bf16 activations fail
        precision = "autocast(bf16) around Trainer.run by this script (the trainer has no precision option)"
        outer = torch.autocast(device.type, dtype=torch.bfloat16)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        memory_before = torch.cuda.memory_allocated(device)
    marks, rows = [time.perf_counter()], []

    def on_step(row):
        marks.append(time.perf_counter())
        rows.append(row)

    torch.manual_seed(0)
    with outer:
        trainer.run(on_step=on_step)
    sync(device)
    run_s = time.perf_counter() - marks[0]
    steps_s = [b - a for a, b in zip(marks, marks[1:])]  # rank 0 only: other ranks get no on_step calls
    losses = [r["loss_largest"] for r in rows] + [r["loss_smallest"] for r in rows]
    record = {"precision": precision, "base_dtype": str(next(model.parameters()).dtype),
              "adapter_dtype": str(next(adapter.parameters()).dtype),
              "adapter_parameters": sum(p.numel() for p in adapter.parameters()), "lora_rank": rank,
              "steps": config.steps, "batch_size": config.batch_size, "seq_len": spec["seq_len"],
              "shapes_per_step": 2 + config.num_random, "world_size": trainer.world, "rank": trainer.rank,
              "first_step_s": round(steps_s[0], 4) if steps_s else None,
              "step_s_median": round(median(steps_s[1:] or steps_s), 4) if steps_s else None,
              "step_s": [round(s, 4) for s in steps_s], "run_s_with_checkpoint": round(run_s, 3),
              "tokens_per_s_last": rows[-1]["tokens_per_s"] if rows else None,
              "loss_largest_first_last": [rows[0]["loss_largest"], rows[-1]["loss_largest"]] if rows else None,
              "loss_smallest_first_last": [rows[0]["loss_smallest"], rows[-1]["loss_smallest"]] if rows else None,
              "losses_finite": finite(*losses) if rows else None}
    if fingerprint_error:
        record["library_fingerprint_error"] = fingerprint_error
    if device.type == "cuda":
        record["cuda_memory_before_bytes"] = memory_before
        record["peak_cuda_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    adapter.detach()
    del trainer, adapter, loaded, supernet, model
    free_memory(device)
    return record


def _finetune_spec(check: Check, scale: float) -> dict:
    batch_size = check.size("finetune", "batch_size")
    return {"model_config": check.model_config, "steps": max(3, round(check.size("finetune", "steps") * scale)),
            "batch_size": batch_size, "seq_len": check.size("finetune", "seq_len"),
            "examples": 8 * batch_size, "rank": check.size("finetune", "rank")}


def section_finetune(check: Check, limit: float, record: dict) -> None:
    import torch

    device = check.device
    distributed_share = 0.45 if device.type == "cuda" and torch.cuda.device_count() > 1 else 0.0
    single_limit = limit * (1 - distributed_share)
    spec = _finetune_spec(check, check.scale("finetune", single_limit))
    with tempfile.TemporaryDirectory(prefix="gpu-check-finetune-") as tmp:
        record.update(finetune_once(spec, device, Path(tmp) / "run"))
    if record["losses_finite"] is False:
        raise RuntimeError(f"non-finite losses: {record['loss_largest_first_last']}, {record['loss_smallest_first_last']}")
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        world = torch.cuda.device_count()
        left = max(30.0, limit - (time.monotonic() - check.section_started))
        record["distributed"] = _run_distributed(spec, world, "nccl", "cuda", left)
        if record["distributed"]["status"] == "failed":
            # The trainer all-reduces some CPU tensors; NCCL has no CPU backend. Try the mixed backend once.
            left = max(20.0, limit - (time.monotonic() - check.section_started))
            record["distributed_mixed_backend"] = _run_distributed(spec, world, "cpu:gloo,cuda:nccl", "cuda", left)
    elif device.type == "cuda":
        record["distributed"] = {"status": "skipped", "error": "1 GPU: NCCL not exercised"}
    else:  # the launcher itself is tested with gloo on 2 CPU processes in tests/test_gpu_check.py
        record["distributed"] = {"status": "skipped", "error": "cpu: NCCL not exercised"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, world: int, backend: str, init_method: str, out: str, spec: dict,
                        device_type: str) -> None:
    import torch
    import torch.distributed as dist

    if device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
    try:
        record = finetune_once(spec, device, Path(out) / "run")
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(json_safe(record)))
    finally:
        dist.destroy_process_group()


def _run_distributed(spec: dict, world: int, backend: str, device_type: str, limit: float) -> dict:
    """``finetune_once`` on ``world`` processes (spawned) joined by ``backend``; status and rank 0's record."""
    import torch.multiprocessing as mp

    start = time.monotonic()
    record: dict = {"backend": backend, "world_size": world, "steps": spec["steps"]}
    out = tempfile.mkdtemp(prefix="gpu-check-dist-")
    context = None
    try:
        context = mp.start_processes(_distributed_worker, nprocs=world, join=False, start_method="spawn",
                                     args=(world, backend, f"tcp://127.0.0.1:{_free_port()}", out, spec, device_type))
        while not context.join(timeout=1.0):
            if time.monotonic() - start > limit:
                raise TimeoutError(f"the {world} processes did not finish within {limit:.0f} s")
        ranks = [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(world)]
        record.update(status="ok", error=None, rank0=ranks[0],
                      peak_cuda_memory_bytes_per_rank=[r.get("peak_cuda_memory_bytes") for r in ranks])
    except BaseException as exc:  # noqa: BLE001 - a child's failure (ProcessRaisedException) is a result here
        if isinstance(exc, KeyboardInterrupt):
            raise
        text = f"{type(exc).__name__}: {exc}"
        record.update(status="failed", error=text if len(text) <= 3000 else "... " + text[-3000:])
    finally:
        if context is not None:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            for process in context.processes:
                process.join(timeout=10)
        shutil.rmtree(out, ignore_errors=True)
    record["wall_s"] = round(time.monotonic() - start, 2)
    return record


# -- section 3: the search's evaluations --------------------------------------------------------------------

def section_perplexity(check: Check, limit: float, record: dict) -> None:
    from amoeba_search.evaluation.perplexity import perplexity
    from amoeba_search.models.supernet import Supernet

    device, scale = check.device, check.scale("perplexity", limit)
    model = build_model(check.model_config, device, check.dtype)
    supernet = Supernet(model)
    batch_size = check.size("perplexity", "batch_size")
    n_blocks = max(batch_size, round(check.size("perplexity", "blocks") * scale))
    blocks = random_blocks(n_blocks, check.size("perplexity", "seq_len"), check.model_config["vocab_size"], seed=5)
    results = []
    record.update(blocks=n_blocks, seq_len=int(blocks.shape[1]), batch_size=batch_size, shapes=results,
                  note="tokens_per_s counts every token run (blocks x seq_len) per second of perplexity()")
    for shape in three_shapes(supernet.dims):
        layers = spread_layers(supernet.dims.num_layers, shape.depth)
        supernet.set_active(shape, layers)
        perplexity(supernet, blocks[:batch_size], batch_size=batch_size)  # warm-up (kernels, allocator)
        sync(device)
        start = time.perf_counter()
        value = perplexity(supernet, blocks, batch_size=batch_size)
        sync(device)
        seconds = time.perf_counter() - start
        results.append({"shape": str(shape), "layers": layers, "ppl": value.ppl, "nll": value.nll,
                        "scored_tokens": value.tokens, "s": round(seconds, 4),
                        "tokens_per_s": round(blocks.numel() / seconds, 1), "finite": finite(value.ppl)})
    supernet.set_active(supernet.full_shape())
    del supernet, model
    free_memory(device)
    if not all(r["finite"] for r in results):
        raise RuntimeError(f"non-finite perplexity: {[(r['shape'], r['ppl']) for r in results]}")


# -- section 4: torch-flow profiling of exported subnets -------------------------------------------------------

class EnergyCounter:
    """NVML's cumulative energy counter (mJ) of the GPU that is torch's ``device``; raises Skip when unusable."""

    def __init__(self, device):
        if device.type != "cuda":
            raise Skip("on the CPU: NVML energy counters are GPU-only")
        try:
            import pynvml
        except ImportError:
            raise Skip("pynvml is not installed (pip install nvidia-ml-py)") from None
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            raise Skip(f"NVML unavailable: {short_error(exc)}") from None
        self.nvml = pynvml
        self.index = nvml_index(device)
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception as exc:
            self.close()
            raise Skip(f"nvmlDeviceGetTotalEnergyConsumption not supported here: {short_error(exc)}") from None

    def read_mj(self) -> int:
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.nvml.nvmlShutdown()


def nvml_index(device) -> int:
    """The NVML index of torch's CUDA ``device`` (matched by UUID; CUDA_VISIBLE_DEVICES renumbers torch's)."""
    import pynvml
    import torch

    index = device.index or 0
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        for i in range(pynvml.nvmlDeviceGetCount()):
            nv = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
            nv = nv.decode() if isinstance(nv, bytes) else str(nv)
            if nv.removeprefix("GPU-") == uuid.removeprefix("GPU-"):
                return i
    except Exception:
        pass
    return index


def _prefill(model, ids):
    from transformers import DynamicCache

    from amoeba_search.profiling.flows._common import forward_with_cache

    out, cache = forward_with_cache(model, DynamicCache(config=model.config), input_ids=ids, logits_to_keep=1)
    return out.logits[:, -1].argmax(-1, keepdim=True), cache  # (1, 1)


def _decode(model, token, cache, steps: int):
    from amoeba_search.profiling.flows._common import forward_with_cache

    for _ in range(steps):  # greedy, no host sync: the argmax stays on the device
        out, cache = forward_with_cache(model, cache, input_ids=token, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
    return token


def profile_checkpoint(model, device, prompt_len: int, decode_tokens: int, energy: EnergyCounter | None,
                       sampler=None, time_left: float = 60.0) -> dict:
    """Prefill and decode timing (device events) of one loaded model; energy per token when ``energy``."""
    import torch

    timer = Timer(device)
    ids = random_blocks(1, prompt_len, model.config.vocab_size, seed=6).to(device)
    with torch.inference_mode():
        for _ in range(2):  # warm-up passes (kernels, allocator); the second one is timed to size the phases
            sync(device)
            t0 = time.perf_counter()
            token, cache = _prefill(model, ids)
            sync(device)
            t1 = time.perf_counter()
            _decode(model, token, cache, decode_tokens)
            sync(device)
        prefill_s, pass_s = max(t1 - t0, 1e-6), max(time.perf_counter() - t0, 1e-6)
        # On a GPU, phases of >= ~1 s (NVML's energy counter moves in steps of a few ms to ~100 ms), within
        # about a third of the time left for this shape; on the CPU a few repeats are enough.
        if timer.cuda:
            rp = max(5, min(500, math.ceil(1.0 / prefill_s), int(time_left * 0.15 / prefill_s)))
            rg = max(2, min(30, math.ceil(1.5 / pass_s), int(time_left * 0.2 / pass_s)))
        else:
            rp, rg = 3, 3
        windows = {"prefill": [], "generate": []}

        def phase(name, repeats, body):
            sync(device)
            e0, w0 = (energy.read_mj() if energy else None), time.perf_counter()
            marks = [body() for _ in range(repeats)]
            sync(device)
            e1, w1 = (energy.read_mj() if energy else None), time.perf_counter()
            windows[name].append([w0, w1])
            return marks, (None if energy is None else e1 - e0), w1 - w0

        def prefill_only():
            a = timer.mark()
            _prefill(model, ids)
            return a, timer.mark()

        def generate():
            a = timer.mark()
            token, cache = _prefill(model, ids)
            b = timer.mark()
            _decode(model, token, cache, decode_tokens)
            return a, b, timer.mark()

        prefill_marks, e_prefill, s_prefill = phase("prefill", rp, prefill_only)
        generate_marks, e_generate, s_generate = phase("generate", rg, generate)
    prefill_ms = [timer.ms(a, b) for a, b in prefill_marks]
    decode_ms = [timer.ms(b, c) / decode_tokens for _, b, c in generate_marks]
    record = {"prompt_len": prompt_len, "decode_tokens": decode_tokens, "prefill_repeats": rp, "generate_repeats": rg,
              "timing": "CUDA events" if timer.cuda else "perf_counter (CPU)",
              "prefill_ms_median": round(median(prefill_ms), 4), "prefill_ms_min": round(min(prefill_ms), 4),
              "decode_ms_per_token_median": round(median(decode_ms), 4),
              "decode_ms_per_token_min": round(min(decode_ms), 4),
              "decode_tokens_per_s": round(1e3 / median(decode_ms), 1),
              "prefill_tokens_per_s": round(prompt_len * 1e3 / median(prefill_ms), 1)}
    if energy is not None:
        per_prefill = e_prefill / rp
        decode_mj = e_generate - rg * per_prefill
        record["energy"] = {
            "status": "ok", "source": "nvmlDeviceGetTotalEnergyConsumption", "nvml_index": energy.index,
            "prefill_window_s": round(s_prefill, 3), "generate_window_s": round(s_generate, 3),
            "prefill_mj_per_token": round(per_prefill / prompt_len, 4),
            "decode_mj_per_token": round(decode_mj / (rg * decode_tokens), 4),
            "prefill_mean_w": round(e_prefill / 1e3 / s_prefill, 1),
            "generate_mean_w": round(e_generate / 1e3 / s_generate, 1),
            "note": "decode energy = generate window minus its prefills at the prefill phase's energy per pass"}
        if sampler is not None:
            joules = {k: sampler.energy_joules(v) for k, v in windows.items()}
            if joules["prefill"] is not None and joules["generate"] is not None:
                sampled_prefill = joules["prefill"] * 1e3 / rp
                record["energy"]["power_sampler_prefill_mj_per_token"] = round(sampled_prefill / prompt_len, 4)
                record["energy"]["power_sampler_decode_mj_per_token"] = round(
                    (joules["generate"] * 1e3 - rg * sampled_prefill) / (rg * decode_tokens), 4)
    return record


def section_torch_profile(check: Check, limit: float, record: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from amoeba_search.models.export import export_subnet
    from amoeba_search.models.supernet import Supernet

    device, scale = check.device, check.scale("torch_profile", limit)
    prompt_len = check.size("torch_profile", "prompt_len")
    decode_tokens = max(4, round(check.size("torch_profile", "decode_tokens") * scale))
    record["shapes"] = []
    try:
        energy = EnergyCounter(device)
        record["energy"] = {"status": "ok", "source": "nvmlDeviceGetTotalEnergyConsumption"}
    except Skip as why:
        energy = None
        record["energy"] = {"status": "skipped", "error": str(why)}
    sampler = None
    if energy is not None:
        try:
            from amoeba_search.profiling.telemetry import NvmlPower, PowerSampler

            sampler = PowerSampler(NvmlPower(energy.index), interval=0.02).start()
        except Exception as exc:
            record["power_sampler"] = f"unavailable: {short_error(exc)}"
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-export-"))
    try:
        model = build_model(check.model_config, device, check.dtype)
        supernet = Supernet(model)
        exports = []
        for shape in three_shapes(supernet.dims):
            layers = spread_layers(supernet.dims.num_layers, shape.depth)
            start = time.perf_counter()
            path = export_subnet(supernet, shape, tmp / str(shape), layers=layers)
            exports.append((shape, layers, path, time.perf_counter() - start))
        del supernet, model
        free_memory(device)
        started = time.monotonic()
        for i, (shape, layers, path, export_s) in enumerate(exports):
            start = time.perf_counter()
            loaded = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).to(device).eval()
            load_s = time.perf_counter() - start
            left = limit - (time.monotonic() - check.section_started)
            entry = {"shape": str(shape), "layers": layers, "export_s": round(export_s, 3), "load_s": round(load_s, 3),
                     "parameters": sum(p.numel() for p in loaded.parameters())}
            entry.update(profile_checkpoint(loaded, device, prompt_len, decode_tokens, energy, sampler,
                                            time_left=left / max(1, len(exports) - i)))
            del loaded
            free_memory(device)
            record["shapes"].append(entry)
        record["profile_s"] = round(time.monotonic() - started, 2)
        left = limit - (time.monotonic() - check.section_started)
        record["torch_flow_crosscheck"] = (part(_torch_flow_crosscheck, exports[0][2], tmp, device, prompt_len,
                                                decode_tokens)
                                           if left > 20 else {"status": "skipped", "error": "not enough time left"})
    finally:
        if sampler is not None:
            sampler.stop()
            sampler.source.close()
        if energy is not None:
            energy.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _torch_flow_crosscheck(checkpoint: Path, workdir: Path, device, prompt_len: int, decode_tokens: int) -> dict:
    """The library's own torch flow (perf_counter timing, a sync per step) on the first shape."""
    from amoeba_search.profiling.flows.base import MeasureSettings
    from amoeba_search.profiling.flows.torch_flow import TorchFlow

    flow = TorchFlow(warmup=1)
    settings = MeasureSettings(dtype="bf16", prompt_len=prompt_len, decode_tokens=decode_tokens, repeats=3)
    handle = flow.prepare(checkpoint, workdir, settings, "cuda" if device.type == "cuda" else "cpu")
    try:
        measured = flow.measure(handle, settings)
    finally:
        flow.close(handle)
    return {"status": "ok", "shape": checkpoint.name, "timing": "perf_counter, a sync per decode step",
            "prefill_ms_median": round(median(measured.prefill_ms), 4),
            "decode_ms_per_token_median": round(median(measured.decode_ms_per_token), 4),
            "peak_memory_bytes": measured.peak_memory_bytes, "versions": flow.versions()}


# -- section 5: TensorRT-LLM ----------------------------------------------------------------------------------

def section_tensorrt_llm(check: Check, limit: float, record: dict) -> None:
    if importlib.util.find_spec("tensorrt_llm") is None:
        raise Skip("tensorrt_llm not installed")
    from amoeba_search.models.export import export_subnet
    from amoeba_search.models.supernet import Supernet
    from amoeba_search.profiling.flows.base import MeasureSettings
    from amoeba_search.profiling.flows.tensorrt_llm import TensorRTLLMFlow

    flow = TensorRTLLMFlow()
    reason = flow.unavailable_reason()
    if reason:
        raise Skip(reason)
    device = check.device
    settings = MeasureSettings(dtype="bf16", prompt_len=check.size("tensorrt_llm", "prompt_len"),
                               decode_tokens=check.size("tensorrt_llm", "decode_tokens"),
                               repeats=check.size("tensorrt_llm", "repeats"))
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-trt-"))
    record.update(versions=flow.versions(), settings=dataclasses.asdict(settings))
    try:
        model = build_model(check.model_config, device, check.dtype)
        supernet = Supernet(model)
        shape = three_shapes(supernet.dims)[1]
        layers = spread_layers(supernet.dims.num_layers, shape.depth)
        export_subnet(supernet, shape, tmp / "subnet", layers=layers)
        del supernet, model
        free_memory(device)
        record["shape"] = str(shape)
        start = time.perf_counter()
        handle = flow.prepare(tmp / "subnet", tmp / "work", settings, "cuda")
        record["prepare_s"] = round(time.perf_counter() - start, 2)
        try:
            measured = flow.measure(handle, settings)
        finally:
            flow.close(handle)
        record.update(prefill_ms_median=round(median(measured.prefill_ms), 4),
                      decode_ms_per_token_median=round(median(measured.decode_ms_per_token), 4),
                      extra=measured.extra)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- the driver -----------------------------------------------------------------------------------------------

SECTIONS = {"depth_dp": section_depth_dp, "finetune": section_finetune, "perplexity": section_perplexity,
            "torch_profile": section_torch_profile, "tensorrt_llm": section_tensorrt_llm}


def run_section(check: Check, name: str, later: int) -> None:
    limit = check.left() if later == 0 else check.left() - RESERVE_S * later
    limit = max(10.0, limit)
    entry = {"status": "running", "wall_s": None, "error": None, "time_limit_s": round(limit, 1)}
    with check.lock:
        check.result["sections"][name] = entry
        check.current = name
    check.write()
    log(f"{name}: start (limit {limit:.0f} s)")
    check.section_started = time.monotonic()
    start = time.perf_counter()
    try:
        if check.left() < 5:
            raise Skip("no time left in the budget")
        with time_limit(limit):
            SECTIONS[name](check, limit, entry)
        entry["status"] = "ok"
    except Skip as why:
        entry.update(status="skipped", error=str(why))
    except Exception as exc:  # noqa: BLE001 - one section's failure must not stop the others
        entry.update(status="failed", error=short_error(exc),
                     traceback=traceback.format_exc().splitlines()[-25:])
    finally:
        entry["wall_s"] = round(time.perf_counter() - start, 3)
        with check.lock:
            check.current = None
        with contextlib.suppress(Exception):
            free_memory(check.device)
    check.write()
    log(f"{name}: {entry['status']} in {entry['wall_s']:.1f} s" + (f" ({entry['error'][:200]})" if entry["error"] else ""))


def start_watchdog(check: Check, seconds: float) -> None:
    """Write what is there and end the process if it is still running ``seconds`` after the start."""
    def fire():
        with check.lock:
            name = check.current
            if name is not None:
                check.result["sections"][name].update(status="failed", error=f"killed by the watchdog at {seconds:.0f} s")
            check.result["killed_by_watchdog"] = True
        for _ in range(3):  # the section may be changing its entry right now
            try:
                check.write()
                break
            except Exception:  # noqa: BLE001
                time.sleep(0.2)
        log(f"watchdog: {seconds:.0f} s passed, exiting")
        os._exit(124)

    timer = threading.Timer(max(1.0, seconds - (time.monotonic() - STARTED)), fire)
    timer.daemon = True
    timer.start()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help=f"result file (default {DEFAULT_OUT.relative_to(ROOT)}; "
                                                    "required with --device cpu or --tiny)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="seconds for the whole run, imports included (default 420); sections shrink to fit")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (cpu: with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model everywhere (a smoke test of the script)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    if args.out is None:
        if args.device == "cpu" or args.tiny:
            parser.error("--device cpu / --tiny need --out PATH: the committed result file is for the GPU run")
        args.out = str(DEFAULT_OUT)
    elif (args.device == "cpu" or args.tiny) and Path(args.out).resolve() == DEFAULT_OUT.resolve():
        parser.error("--device cpu / --tiny must not overwrite the committed GPU result; pass another --out")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.device != "cpu" and not torch.cuda.is_available():
        print(f"gpu_check.py needs an NVIDIA GPU with CUDA (torch {torch.__version__} sees none); "
              "for a smoke test without one run: --device cpu --tiny --out PATH", file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.tiny:
        log("--device cpu without --tiny runs the 1B-shaped model on the CPU: expect sections to be cut short")
    check = Check(args)
    if check.device.type == "cuda":
        torch.cuda.set_device(check.device)  # CUDA events and kernels on the same device
    elif args.tiny:
        torch.set_num_threads(1)  # tiny ops: threads only add synchronisation (and the 2-core box is shared)
    start_watchdog(check, min(HARD_LIMIT_S, args.budget_s + 45))
    try:
        check.result["machine"] = machine_info(check.device)
    except Exception as exc:  # noqa: BLE001
        check.result["machine"] = {"error": short_error(exc)}
    check.write()
    log(f"machine: {check.result['machine'].get('gpus') or check.result['machine'].get('cpu_model')}; "
        f"writing {check.out}")
    for i, name in enumerate(args.sections):
        run_section(check, name, later=len(args.sections) - i - 1)
    sections = check.result["sections"]
    check.result["summary"] = {status: [n for n, s in sections.items() if s["status"] == status]
                               for status in ("ok", "failed", "skipped")}
    check.result["finished"] = True
    check.result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    check.write()
    log(f"done: {check.result['summary']}")
    return 1 if check.result["summary"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
