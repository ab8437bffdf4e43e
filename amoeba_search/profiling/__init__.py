"""Latency profiling: devices and their spec sheets, deployment flows, the measure loop, lookup tables.

Modules: ``devices`` (registry of spec sheets), ``machine`` (what this machine is), ``telemetry`` (power
sampling), ``flows`` (one plugin per deployment flow), ``model_source`` (config and random-weight
checkpoints of subnets), ``profiler`` (design of shapes, measure loop, resume), ``lut`` (table schema,
``LatencyTable`` and its predictor), ``roofline`` (labelled estimates from a spec sheet).
"""
from __future__ import annotations

import os
from pathlib import Path


def profiles_dir() -> Path:
    """Where lookup tables and device spec files live.

    ``$AMOEBA_PROFILES`` if set; else ``./profiles`` if it exists; else the ``profiles/`` folder of the
    source checkout this package was imported from, if any; else ``./profiles``.
    """
    env = os.environ.get("AMOEBA_PROFILES")
    if env:
        return Path(env)
    here = Path.cwd() / "profiles"
    if here.is_dir():
        return here
    checkout = Path(__file__).resolve().parents[2] / "profiles"
    if checkout.is_dir():
        return checkout
    return here
