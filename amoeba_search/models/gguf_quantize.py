"""Quantize a GGUF file to any llama.cpp type (Q4_K_M, Q5_K_S, IQ4_XS, ...) with llama.cpp's own quantizer.

gguf-py quantizes only a few types (``write_gguf`` writes f32/f16/bf16/q8_0 with it); the k- and i-quants
need llama.cpp's own code, so this runs the ``llama-quantize`` executable when it is on PATH, else
``llama_model_quantize`` from llama-cpp-python. Quantize from an f32 or f16 file: llama.cpp refuses to
requantize an already quantized one.
"""
from __future__ import annotations

import ctypes
import difflib
import logging
import os
import shutil
import subprocess
from pathlib import Path

import gguf

from amoeba_search.errors import InputError, MissingDependency
from amoeba_search.paths import atomic_file

# gguf-py mirrors llama.h's llama_ftype enum as LlamaFileType. llama-quantize names a type without the
# member's prefix ("Q4_K_M" for MOSTLY_Q4_K_M, "F32" for ALL_F32); llama-cpp-python as LLAMA_FTYPE_<member>.
_FTYPES = {m.name.split("_", 1)[1]: m for m in gguf.LlamaFileType if m is not gguf.LlamaFileType.GUESSED}

INSTALL_HINT = ("llama.cpp's quantizer is not installed: put llama-quantize on PATH, or "
                "`pip install llama-cpp-python` (builds llama.cpp from source, ~12 min)")


def llamacpp_quant_types() -> tuple[str, ...]:
    """The type names ``quantize_with_llamacpp`` accepts ("Q4_K_M", "Q8_0", "F16", ...), in llama.h's order."""
    return tuple(_FTYPES)


def quantize_with_llamacpp(src_gguf, dst_gguf, type_name: str) -> Path:
    """Quantize the GGUF file ``src_gguf`` to ``type_name`` (any of ``llamacpp_quant_types()``, any case) and
    write ``dst_gguf``; returns its path. Written to a temporary name in the same folder and renamed at the end.

    Raises ValueError for an unknown type, MissingDependency when neither llama-quantize nor llama-cpp-python
    is installed, RuntimeError when llama.cpp fails.
    """
    key = type_name.upper()
    if key not in _FTYPES:
        close = difflib.get_close_matches(key, _FTYPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"unknown llama.cpp quantization type {type_name!r}{hint}; known: {', '.join(_FTYPES)}")
    src, dst = Path(src_gguf), Path(dst_gguf)
    if not src.is_file():
        raise FileNotFoundError(f"no GGUF file at {src}")
    exe = shutil.which("llama-quantize")
    llama_cpp = None
    if exe is None:
        try:
            import llama_cpp
        except ImportError:
            raise MissingDependency(INSTALL_HINT) from None

    with atomic_file(dst) as tmp:
        if exe is not None:
            _run_executable(exe, src, tmp, key)
        else:
            _run_python(llama_cpp, src, tmp, key)
    return dst


def _run_executable(exe: str, src: Path, out: Path, key: str) -> None:
    proc = subprocess.run([exe, str(src), str(out), key], capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise RuntimeError(f"llama-quantize {key} failed (exit {proc.returncode}): {lines[-1] if lines else ''}")


def _run_python(llama_cpp, src: Path, out: Path, key: str) -> None:
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{_FTYPES[key].name}", None)
    if ftype is None:
        raise InputError(f"the installed llama-cpp-python does not know the type {key}; upgrade it")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    # llama-cpp-python prints llama.cpp's log lines at or above its logger's level; keep quantizing quiet.
    llama_logger = logging.getLogger("llama-cpp-python")
    level = llama_logger.level
    llama_logger.setLevel(logging.ERROR)
    try:
        status = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(out), ctypes.byref(params))
    finally:
        llama_logger.setLevel(level)
    if status != 0:
        raise RuntimeError(f"llama_model_quantize to {key} failed (status {status}); see llama.cpp's log")
