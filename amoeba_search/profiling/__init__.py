"""Latency profiling: devices and their spec sheets, deployment flows, the measure loop, lookup tables.

Modules: ``devices`` (registry of spec sheets), ``machine`` (what this machine is), ``telemetry`` (power
sampling), ``flows`` (one plugin per deployment flow), ``model_source`` (config and random-weight
checkpoints of subnets), ``profiler`` (design of shapes, measure loop, resume), ``table_schema`` (the table's CSV
columns, crash-safe appends, validation), ``latency_model`` (the fits), ``lut`` (``LatencyTable``: a validated
table and its chosen latency model), ``roofline`` (labelled estimates from a spec sheet).

Where latency tables live (one rule for amoeba-profile, amoeba-search and the notebooks, see
:func:`table_path`): ``<profiles>/<model>/<device>/<flow>.csv``, its ``<flow>.eval.json`` and the device's
``device.json`` beside it.
"""
from __future__ import annotations

import os
from pathlib import Path

from amoeba_search.errors import InputError
from amoeba_search.resources import committed_profiles

# The committed profiles/: the source checkout's, or the copy an installed wheel carries (amoeba_search.resources).
CHECKOUT_PROFILES = committed_profiles()
_DEFAULT_MODEL = "smollm2-135m"  # amoeba_search.models.DEFAULT_MODEL, without importing torch for a path


def profiles_dir() -> Path:
    """Where device spec files (``devices/*.json``) live.

    ``$AMOEBA_PROFILES`` if set; else ``./profiles`` if it exists; else the ``profiles/`` folder of the
    source checkout this package was imported from, if any; else ``./profiles``.
    """
    env = os.environ.get("AMOEBA_PROFILES")
    if env:
        return Path(env)
    here = Path.cwd() / "profiles"
    if here.is_dir():
        return here
    if CHECKOUT_PROFILES.is_dir():
        return CHECKOUT_PROFILES
    return here


def model_slug(model: str | os.PathLike | None) -> str:
    """The folder name a model's tables live under: the alias (``smollm2-135m``) as it is, else a safe slug
    of the basename of a local directory, ``.gguf`` (without suffix), ``config.json`` (its folder) or hub id.

    The slug has only letters, digits, ``-``, ``_`` and ``.``, never starts with a dot and is never empty, so
    it cannot climb out of the profiles folder.
    """
    spec = str(model or "").strip() or _DEFAULT_MODEL
    name = spec.replace("\\", "/").rstrip("/").split("/")[-1]
    lower = name.lower()
    if lower == "config.json":
        parts = [p for p in spec.replace("\\", "/").split("/")[:-1] if p]
        name = parts[-1] if parts else "model"
    elif lower.endswith((".gguf", ".json")):
        name = name.rsplit(".", 1)[0]
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name.lower()).lstrip(".")
    slug = slug.strip("-") or "model"
    return "model" if set(slug) <= {".", "-"} else slug


def table_roots(*, for_writing: bool = False) -> list[Path]:
    """The profiles folders tables are looked up in, first wins: ``$AMOEBA_PROFILES`` if set, ``./profiles``,
    then the checkout's committed ``profiles/``. For writing only the first of ``$AMOEBA_PROFILES`` and
    ``./profiles``: a default path never writes into a checkout the user is not standing in."""
    env = os.environ.get("AMOEBA_PROFILES")
    roots = [Path(env)] if env else []
    if for_writing:
        return roots or [Path.cwd() / "profiles"]
    roots += [Path.cwd() / "profiles", CHECKOUT_PROFILES]
    unique: list[Path] = []
    for root in roots:
        if not any(_same(root, seen) for seen in unique):
            unique.append(root)
    return unique


def table_path(model: str | os.PathLike | None, device: str, flow: str, *, for_writing: bool = False,
               profiles: str | os.PathLike | None = None) -> Path:
    """Where the latency table of ``model`` (alias or path, see :func:`model_slug`), ``device`` and ``flow``
    (the file stem, e.g. ``torch`` or ``torch-bf16``) lives: ``<profiles>/<model>/<device>/<flow>.csv``.

    Reading: the first that exists of ``$AMOEBA_PROFILES``, ``./profiles`` and the checkout's committed
    ``profiles/`` (so committed tables are found from any working directory); raises ``FileNotFoundError``
    naming every place looked in when none has it.

    Writing (the default ``--out`` of amoeba-profile): under ``$AMOEBA_PROFILES`` if set, else ``./profiles``.
    Raises ``FileExistsError`` when that path is an existing table of the committed checkout: a default path
    never continues or overwrites a committed table (give ``--out`` or set ``$AMOEBA_PROFILES``).

    ``profiles``: one folder to use instead of the lookup (amoeba-profile ``--profiles``).
    """
    for name, value in (("device", device), ("flow", flow)):
        if not value or "/" in value or "\\" in value or value.strip(".") == "":
            raise InputError(f"{name} {value!r} cannot name a table file; give a plain name such as "
                             f"{'cpu' if name == 'device' else 'torch'}")
    relative = Path(model_slug(model)) / device / f"{flow}.csv"
    if profiles is not None:
        roots = [Path(profiles)]
    else:
        roots = table_roots(for_writing=for_writing)
    if for_writing:
        path = roots[0] / relative
        if path.exists() and _inside(path, CHECKOUT_PROFILES):
            raise FileExistsError(
                f"{path} is a committed table of this checkout; a default path never continues or overwrites it: "
                f"set $AMOEBA_PROFILES to your own profiles folder (or run from another directory), or pass "
                f"--out to name the file explicitly")
        return path
    for root in roots:
        if (root / relative).is_file():
            return root / relative
    looked = ", ".join(str(root / relative) for root in roots)
    legacy = [root / device / f"{flow}.csv" for root in roots if (root / device / f"{flow}.csv").is_file()]
    hint = (f"; found one in the old layout at {legacy[0]}: move it to {legacy[0].parents[1] / relative}"
            if legacy else "")
    raise FileNotFoundError(f"no latency table for model {model_slug(model)}, device {device}, flow {flow}: "
                            f"looked in {looked}{hint}; measure one with amoeba-profile --device {device} "
                            f"--flow {flow}{'' if model is None else f' --model {model}'} (or pass --table)")


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False
