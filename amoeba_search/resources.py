"""Where the committed ``profiles/`` tree is: the default model's strategy, adapter, predictor and latency
tables, the device spec sheets and the flow overheads. One rule for every reader.

In a source checkout (or an editable install) it is the ``profiles/`` folder at the checkout's root. A wheel
installs the same files as data files (setup.cfg ``[options.data_files]``) under
``<prefix>/share/amoeba-search/profiles``: no second copy in the repository. The committed tree is only ever
read; what a user measures or refits goes to ``$AMOEBA_PROFILES``, ``./profiles``, ``--out`` or the cache
(``amoeba_search.paths.cache_dir``), see ``amoeba_search.profiling.table_path``.
"""
from __future__ import annotations

import os
import site
import sys
import sysconfig
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1] / "profiles"
DATA_SUBDIR = ("share", "amoeba-search", "profiles")  # where setup.cfg's data_files put them in a prefix


def _installed_candidates() -> list[Path]:
    prefixes = [sysconfig.get_path("data"), sys.prefix, sys.base_prefix, getattr(site, "USER_BASE", None)]
    seen: list[Path] = []
    for prefix in prefixes:
        if prefix and Path(prefix) not in seen:
            seen.append(Path(prefix))
    return [prefix.joinpath(*DATA_SUBDIR) for prefix in seen]


def committed_profiles() -> Path:
    """The committed ``profiles/`` folder: the checkout's, else the one an installed wheel carries, else the
    checkout's path (which then does not exist: readers say what is missing)."""
    for candidate in (CHECKOUT, *_installed_candidates()):
        if candidate.is_dir():
            return candidate
    return CHECKOUT


def is_committed(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies inside the committed profiles tree (which nothing may write)."""
    try:
        Path(path).resolve().relative_to(committed_profiles().resolve())
        return True
    except (ValueError, OSError):
        return False
