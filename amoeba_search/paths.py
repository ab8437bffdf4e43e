"""Where amoeba-search keeps what it prepares (the dequantized default model, token blocks, corpora), and the
one way it writes files: atomically (temporary file beside the target, fsync, rename) with the umask's modes.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
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

    A crash or an exception leaves nothing at ``final``: no half-written output for a user to trip on. With
    ``overwrite`` an existing ``final`` stays in place until the new one is complete. Modes come from the umask.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists; choose another output directory or remove it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    aside = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
        yield tmp
        _fsync_tree(tmp)
        if final.exists() or final.is_symlink():
            # Moved aside, not deleted: a crash before the next rename leaves the old output in ``aside``.
            aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            os.replace(final, aside / final.name)
        try:
            os.replace(tmp, final)
        except BaseException:
            if aside is not None:
                os.replace(aside / final.name, final)
            raise
        _fsync_dir(final.parent)
    finally:
        for leftover in (tmp, aside):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary path beside ``path`` for a writer that wants a file name (``save_file``, ``savefig``).

    On success the file is fsync'd, given the umask's mode (0644 under umask 022) and renamed to ``path``,
    and the directory is fsync'd: after a crash ``path`` holds the old content or the new, never a part.
    The temporary name keeps ``path``'s suffix, so writers that pick a format by extension still do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (see ``atomic_file``)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably (see ``atomic_file``)."""
    atomic_write_bytes(path, text.encode("utf-8"))


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc``), else set and restored."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it; other threads may still race with this
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # enough for fsync on POSIX, and works on read-only files
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable; a no-op where directories cannot be opened (Windows) or synced."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk, so that renaming it publishes complete files."""
    for folder, _, files in os.walk(root):
        for name in files:
            file = Path(folder, name)
            if file.is_file() and not file.is_symlink():
                _fsync_file(file)
        _fsync_dir(Path(folder))
