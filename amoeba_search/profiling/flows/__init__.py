"""Registry of deployment flows, loaded lazily from ``"module:attr"`` strings (as lm-eval does), so that
listing flows never imports a runtime and a missing runtime only matters to the flow that needs it."""
from __future__ import annotations

import difflib
import importlib
import inspect

from amoeba_search.errors import InputError
from amoeba_search.profiling.flows.base import Flow, FlowUnavailable, Measurement, MeasureSettings

_PKG = "amoeba_search.profiling.flows"

FLOWS: dict[str, str] = {
    "torch": f"{_PKG}.torch_flow:TorchFlow",
    "llamacpp": f"{_PKG}.llamacpp:LlamaCppFlow",
    "ort": f"{_PKG}.ort:OrtGenAIFlow",
    "openvino": f"{_PKG}.openvino:OpenVinoFlow",
    "tensorrt-llm": f"{_PKG}.tensorrt_llm:TensorRTLLMFlow",
    "mlc": f"{_PKG}.mlc:MLCFlow",
}

ALIASES: dict[str, str] = {
    "pytorch": "torch", "eager": "torch",
    "llama.cpp": "llamacpp", "llama-cpp": "llamacpp", "llama_cpp": "llamacpp", "gguf": "llamacpp",
    "onnxruntime": "ort", "onnx": "ort", "ort-genai": "ort", "onnxruntime-genai": "ort",
    "ov": "openvino",
    "trtllm": "tensorrt-llm", "trt-llm": "tensorrt-llm", "tensorrt_llm": "tensorrt-llm", "tensorrt": "tensorrt-llm",
    "mlc-llm": "mlc", "mlc_llm": "mlc",
}

__all__ = ["FLOWS", "ALIASES", "Flow", "FlowUnavailable", "Measurement", "MeasureSettings", "UnknownFlowError",
           "resolve_flow_name", "load_flow_class", "get_flow", "flow_availability", "register_flow"]


class UnknownFlowError(InputError):
    """No flow of that name; the message lists close names."""


def register_flow(name: str, target: str) -> None:
    """Add (or replace) a flow: ``target`` is ``"package.module:ClassName"``."""
    if ":" not in target:
        raise InputError(f"flow target must look like 'package.module:ClassName', got {target!r}")
    FLOWS[name] = target


def resolve_flow_name(name: str) -> str:
    key = name.strip().lower()
    if key in FLOWS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    close = difflib.get_close_matches(key, list(FLOWS) + list(ALIASES), n=3, cutoff=0.5)
    close = list(dict.fromkeys(ALIASES.get(c, c) for c in close))
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise UnknownFlowError(f"unknown flow {name!r}; {hint}known flows: {', '.join(FLOWS)}")


def load_flow_class(name: str) -> type:
    """Import the flow's class; a plugin module that is missing raises FlowUnavailable."""
    canonical = resolve_flow_name(name)
    module_name, _, attr = FLOWS[canonical].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise FlowUnavailable(f"flow {canonical!r}: plugin module {module_name} is not installed") from None
        raise FlowUnavailable(f"flow {canonical!r}: its plugin needs the Python module {exc.name!r}, "
                              f"which is not installed") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise FlowUnavailable(f"flow {canonical!r}: {module_name} has no {attr}") from None


def get_flow(name: str, **options) -> Flow:
    """An instance of the flow ``name`` built with ``options`` (e.g. ``compile=True`` for torch)."""
    cls = load_flow_class(name)
    if options:
        params = inspect.signature(cls).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = [k for k in options if k not in params and not takes_any]
        if unknown:
            accepted = [p for p in params if params[p].kind is not inspect.Parameter.VAR_POSITIONAL]
            raise InputError(f"flow {resolve_flow_name(name)!r} takes no option {', '.join(unknown)}; "
                             f"its options: {', '.join(accepted) or 'none'}")
    return cls(**options)


def flow_availability(names=None) -> dict[str, str | None]:
    """``{flow: None if it can run here else one line saying why not}`` for every (or each named) flow."""
    result: dict[str, str | None] = {}
    for name in names or FLOWS:
        try:
            result[name] = get_flow(name).unavailable_reason()
        except FlowUnavailable as exc:
            result[name] = str(exc)
        except Exception as exc:  # a broken plugin must not break the listing
            result[name] = f"flow plugin failed to load: {type(exc).__name__}: {exc}"
    return result
