"""A throwaway PostgreSQL server for tests: initdb and pg_ctl in a temporary folder.

It listens on a unix socket in that folder only (no TCP), under a port number the kernel
says is free, so it can never clash with another server. PostgreSQL refuses to run as
root, so as root the server runs as the `postgres` user (or `nobody`). Each test gets a
database of its own from `create_database`.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

START_TIMEOUT_S = 30
USER = "mdns"


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def unavailable() -> str | None:
    """Why no temporary PostgreSQL can run here, or None when it can."""
    if postgres_bindir() is None:
        return ("PostgreSQL is not installed (no initdb/pg_ctl on PATH or in "
                "/usr/lib/postgresql/*/bin); `apt-get install postgresql` or run "
                "`deploy/quickstart setup`, which installs it when it can")
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "asyncpg is not installed: pip install -e '.[postgres]'"
    if os.geteuid() == 0 and _runas() is None:
        return "running as root and there is neither a 'postgres' nor a 'nobody' user to run it"
    return None


def _runas() -> str | None:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class TempPostgres:
    """One PostgreSQL cluster in a temporary folder; `stop` removes everything."""

    def __init__(self) -> None:
        bindir = postgres_bindir()
        assert bindir is not None, unavailable()
        self._bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="mdns-pg-"))
        self.port = _free_port()
        self._names = itertools.count(1)
        self._user = _runas() if os.geteuid() == 0 else None
        self._started = False

    def __repr__(self) -> str:
        return f"<TempPostgres {self.root} port {self.port} started={self._started}>"

    @property
    def socket_dir(self) -> Path:
        return self.root

    def _run(self, *argv: str) -> None:
        command = [str(self._bindir / argv[0]), *argv[1:]]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_S,
                                check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): "
                               f"{result.stdout}{result.stderr}")

    def start(self) -> None:
        if self._user is not None:
            info = pwd.getpwnam(self._user)
            os.chown(self.root, info.pw_uid, info.pw_gid)
        data = self.root / "data"
        self._run("initdb", "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        options = (f"-k {self.root} -p {self.port} -c listen_addresses='' -c fsync=off "
                   "-c max_connections=200 -c shared_buffers=16MB")
        self._run("pg_ctl", "-D", str(data), "-l", str(self.root / "server.log"), "-o", options,
                  "-w", "-t", str(START_TIMEOUT_S), "start")
        self._started = True

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT to the postmaster, as `pg_ctl -m immediate`), then
        remove the folder; pg_ctl itself polls once a second, which adds seconds here."""
        try:
            if self._started:
                pid = int((self.root / "data" / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGQUIT)
                deadline = time.monotonic() + START_TIMEOUT_S
                while time.monotonic() < deadline:
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.02)
                self._started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        """The SQLAlchemy async URL of one database of this server."""
        return f"postgresql+asyncpg://{USER}@/{database}?host={self.root}&port={self.port}"

    def create_database(self, prefix: str = "t") -> str:
        """A new, empty database; its URL."""
        name = f"{prefix}{next(self._names)}"
        self._run("createdb", "-h", str(self.root), "-p", str(self.port), "-U", USER, name)
        return self.url(name)
