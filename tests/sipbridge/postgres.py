"""A real PostgreSQL server for the tests: Debian's binaries, a cluster in a temporary directory.

`initdb` refuses to run as root (CI containers often are root), so as root the cluster belongs to the
unprivileged `nobody` and the server runs as `nobody` (through `runuser`); otherwise it runs as the test's own
user. It listens only on a Unix socket in its own directory (no TCP port to collide with parallel runs), and
trusts local connections: the tests connect as the cluster's superuser `sipbridge`. One server per test
session; each test gets a fresh database (`fresh_database`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "sipbridge"


@dataclass(frozen=True)
class PgServer:
    socket_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@/{database}?host={self.socket_dir}"

    def fresh_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_server_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", "nobody", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if not (BIN / "initdb").exists():
        pytest.fail(f"PostgreSQL binaries not found in {BIN}: run deploy/setup.sh --dev (package postgresql)")
    root = Path(tempfile.mkdtemp(prefix="sipbridge-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "nobody")
        shutil.chown(sock, "nobody")
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    run = {"check": True, "env": env, "cwd": root, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    subprocess.run(
        _as_server_user([str(BIN / "initdb"), "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8"]),
        **run,
    )
    opts = f"-c listen_addresses='' -k {sock} -c fsync=off -c max_connections=50"
    subprocess.run(
        _as_server_user(
            [str(BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"]
        ),
        **run,
    )
    try:
        yield PgServer(sock)
    finally:
        subprocess.run(
            _as_server_user([str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), **run
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    return pg_server.fresh_database()
