"""The contract every deployment flow plugin keeps.

A flow takes a standalone Hugging Face checkpoint of one subnet (written by ``amoeba_search.models.export``
or built with random weights of the right shape), turns it into whatever the runtime needs (a GGUF file,
an ONNX model, an engine), and times prefill and per-token decode on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from amoeba_search.errors import InputError
from amoeba_search.profiling.flows import _common


class FlowUnavailable(RuntimeError):
    """The flow cannot run here; the message says why and what to install."""


@dataclass(frozen=True)
class MeasureSettings:
    dtype: str = "fp32"
    batch: int = 1
    prompt_len: int = 128       # tokens in the prefill
    decode_tokens: int = 32     # tokens generated after the prompt, timed one by one
    repeats: int = 5            # timed repetitions (after one untimed warm-up)
    threads: int | None = None  # CPU threads; None = the runtime's default


@dataclass
class Measurement:
    prefill_ms: list[float]             # one per repeat: whole prompt to first logits
    decode_ms_per_token: list[float]    # one per repeat: mean time per generated token
    peak_memory_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # runtime-specific facts worth keeping


class Flow(Protocol):
    name: str

    def unavailable_reason(self) -> str | None:
        """``None`` if the flow can run on this machine, else one line: why not and what to install."""

    def versions(self) -> dict[str, str]:
        """Versions of the runtime packages, for the lookup table's provenance columns."""

    def prepare(self, checkpoint: Path, workdir: Path, settings: MeasureSettings, device: str) -> Any:
        """Build the runtime artefact from ``checkpoint`` inside ``workdir``; return a handle for ``measure``."""

    def measure(self, handle: Any, settings: MeasureSettings) -> Measurement:
        """Time prefill and decode on ``handle``."""

    def close(self, handle: Any) -> None:
        """Free what ``prepare`` allocated."""


class BaseFlow:
    """What every runtime flow checks before it builds anything, in one place: that its runtime is installed,
    that the device's backend is one it serves, and that it can measure these settings for this checkpoint.

    A flow names the backends it runs on, the dtypes it runs per backend, and implements ``build``."""

    name: str = ""
    backends: tuple[str, ...] = ("cpu", "cuda")
    wrong_backend: str = ""  # the error when the device's backend is not in ``backends``: what to pick instead

    def dtypes(self, backend: str) -> tuple[str, ...]:
        """The ``MeasureSettings.dtype`` values this flow runs on ``backend``."""
        raise NotImplementedError

    def unavailable_reason(self) -> str | None:
        return None

    def prepare(self, checkpoint: Path, workdir: Path, settings: MeasureSettings, device: str) -> Any:
        reason = self.unavailable_reason()
        if reason:
            raise FlowUnavailable(reason)
        backend = _common.backend(device)
        if backend not in self.backends:
            raise InputError(self.wrong_backend or f"the {self.name} flow runs on {' or '.join(self.backends)}")
        config = _common.read_config(checkpoint)
        _common.check_settings(self.name, settings, self.dtypes(backend), config.get("max_position_embeddings"))
        return self.build(Path(checkpoint), Path(workdir), settings, device, config)

    def build(self, checkpoint: Path, workdir: Path, settings: MeasureSettings, device: str, config: dict) -> Any:
        """Build the runtime artefact of a checked request (``config``: the checkpoint's config.json)."""
        raise NotImplementedError
