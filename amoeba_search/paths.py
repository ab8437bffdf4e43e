"""Where amoeba-search keeps what it prepares: the dequantized default model, token blocks, corpora."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$AMOEBA_CACHE`` (default ``~/.cache/amoeba-search``), joined with ``parts`` and created."""
    root = Path(os.environ.get("AMOEBA_CACHE") or Path.home() / ".cache" / "amoeba-search")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def portable_path(path: str | os.PathLike) -> str:
    """``path`` as files meant for other machines record it: ``$AMOEBA_CACHE/...`` inside the cache."""
    path, cache = Path(path).resolve(), cache_dir().resolve()
    return f"$AMOEBA_CACHE/{path.relative_to(cache)}" if path.is_relative_to(cache) else str(path)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, *, overwrite: bool = False):
    """Yield a temporary directory beside ``final`` that is renamed to ``final`` only on success.

    A crash or an exception leaves nothing at ``final``: no half-written output for a user to trip on.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; choose another output directory or remove it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
