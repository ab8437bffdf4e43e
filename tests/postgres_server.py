"""A PostgreSQL server of our own, in a temporary directory, for the tests and benchmarks of shared search workers.

Not part of the library (which only opens a storage it is given). Used by ``tests/search/test_workers.py`` (a
fixture) and ``benchmarks/search_workers.py`` (``--storage postgres``); needs no pytest.

    with PostgresServer() as server:          # raises PostgresUnavailable with the reason where it cannot run
        url = server.create_database("amoeba")  # postgresql+psycopg2://postgres@127.0.0.1:PORT/amoeba

Started with initdb and pg_ctl (trust authentication, a Unix socket and 127.0.0.1 on a free port, fsync off),
as the ``postgres`` user when we are root (the server refuses to run as root); stopped and removed on exit.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """The server cannot be run here (binaries, driver or a user to run it as missing); the message says why."""


class PostgresStartError(RuntimeError):
    """The binaries are there but the server did not start; the message carries its output."""


def postgres_bin() -> Path | None:
    """The folder of ``initdb``, ``pg_ctl`` and ``createdb`` (the newest Debian install first), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return None if initdb is None else Path(initdb).resolve().parent


def unavailable_reason() -> str | None:
    """Why a server cannot be started here, or None when it can (which does not promise it will start)."""
    if postgres_bin() is None:
        return "PostgreSQL server binaries (initdb) are not installed: apt-get install -y postgresql"
    if importlib.util.find_spec("psycopg2") is None:
        return "psycopg2 is not installed: pip install psycopg2-binary"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the server (it refuses root)"
        if shutil.which("runuser") is None:
            return "running as root without runuser to start the server as the postgres user"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throw-away server; ``start()``/``stop()`` or a ``with`` block. ``create_database(name)`` -> its URL."""

    def __init__(self) -> None:
        self.bin_dir: Path | None = None
        self.root: Path | None = None
        self.port: int | None = None
        self.as_user: list[str] = []

    def _run(self, *cmd) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, *map(str, cmd)], check=True, capture_output=True, text=True)

    def start(self) -> "PostgresServer":
        why = unavailable_reason()
        if why is not None:
            raise PostgresUnavailable(why)
        self.bin_dir = postgres_bin()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.root = Path(tempfile.mkdtemp(prefix="amoeba-pg-"))  # the postgres user must reach it
        if self.as_user:
            shutil.chown(self.root, "postgres")
        self.port = free_port()
        data = self.root / "data"
        try:
            self._run(self.bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
            self._run(self.bin_dir / "pg_ctl", "-D", data, "-l", self.root / "log", "-w", "-t", "60", "-o",
                      f"-k {self.root} -p {self.port} -h 127.0.0.1 -c fsync=off", "start")
        except subprocess.CalledProcessError as err:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            raise PostgresStartError(f"could not start PostgreSQL: {err.stderr or err.stdout}") from err
        return self

    def create_database(self, name: str) -> str:
        """Create database ``name`` (empty) and return its SQLAlchemy URL."""
        if self.root is None:
            raise RuntimeError("the server is not running: call start() first")
        self._run(self.bin_dir / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", name)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"

    def version(self) -> str | None:
        try:
            return self._run(self.bin_dir / "pg_ctl", "--version").stdout.strip()
        except (subprocess.CalledProcessError, OSError, TypeError):
            return None

    def stop(self) -> None:
        if self.root is None:
            return
        subprocess.run([*self.as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-w", "-m",
                        "fast", "stop"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
