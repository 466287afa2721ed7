"""A private PostgreSQL for tests: its own cluster in a temporary directory, on its own
loopback port, started with Debian's `initdb` and `pg_ctl` (package `postgresql`).

Private, so a test may stop and restart it (the bad days of docs/cluster.md) without
touching the machine's own PostgreSQL or anyone else's databases. As root (CI), the
cluster runs as the `postgres` user the package creates: PostgreSQL refuses root.
`pg_dsn` gives each test a database of its own; the cluster lives for the session.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.needs import need

__all__ = ["PgCluster", "pg_cluster", "pg_dsn"]


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """initdb'd on construction; `start`, `stop` (fast: as a crash would look to clients,
    "immediate"), `dsn(db)`, `createdb()`."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mailgate-pg-"))
        self.data = self.dir / "data"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--no-instructions")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.dir}'\nmax_connections = 200\n"
                       "synchronous_commit = on\nfsync = on\n")

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t",
                  "60", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def createdb(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def private_cluster() -> PgCluster:
    """A started private cluster, or skip/fail (CI) when PostgreSQL is not installed."""
    bindir = _binaries()
    need(bindir is not None, "PostgreSQL's initdb and pg_ctl (Debian package postgresql)")
    assert bindir is not None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        need(False, "psycopg 3 (pip: psycopg[binary,pool], in pyproject's dependencies)")
    cluster = PgCluster(bindir)
    cluster.start()
    return cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = private_cluster()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> str:
    """A fresh database of its own for the test."""
    deadline = time.monotonic() + 60
    while True:  # a test before may have stopped the cluster and not yet restarted it
        try:
            return pg_cluster.createdb()
        except Exception:
            if time.monotonic() > deadline:
                raise
            pg_cluster.start()
