"""The contract every deployment flow plugin keeps.

A flow takes a standalone Hugging Face checkpoint of one subnet (written by ``amoeba_search.models.export``
or built with random weights of the right shape), turns it into whatever the runtime needs (a GGUF file,
an ONNX model, an engine), and times prefill and per-token decode on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


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
