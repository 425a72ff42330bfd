"""A throwaway PostgreSQL cluster for tests: `CCGATE_TEST_POSTGRES_URL` if set, else initdb + pg_ctl in a temp dir.

PostgreSQL refuses to run as root, so as root the cluster is made and run as the `postgres` user in a
directory it owns. Bound to 127.0.0.1 on a free port, fsync off (throwaway data), stopped by `stop()`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

URL_ENV = "CCGATE_TEST_POSTGRES_URL"
_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in _BIN_DIRS:
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    url: str  # the maintenance database (`postgres`) as the superuser
    directory: Path | None = None
    pg_ctl: str | None = None
    as_postgres: bool = False

    def _run(self, args: list[str]) -> None:
        command = ["runuser", "-u", "postgres", "--", *args] if self.as_postgres else args
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        if self.directory is None or self.pg_ctl is None:
            return
        try:
            self._run([self.pg_ctl, "-D", str(self.directory / "data"), "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def start_cluster() -> Cluster:
    """Start a cluster (a few seconds); raises RuntimeError saying what is missing."""
    initdb, pg_ctl = find_tool("initdb"), find_tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("PostgreSQL's initdb/pg_ctl are not installed (Debian package `postgresql`)")
    as_postgres = os.geteuid() == 0
    directory = Path(tempfile.mkdtemp(prefix="ccgate-pg-"))
    user = "postgres" if as_postgres else os.environ.get("USER", "postgres")
    cluster = Cluster(url="", directory=directory, pg_ctl=pg_ctl, as_postgres=as_postgres)
    if as_postgres:
        shutil.chown(directory, user="postgres")
    data = directory / "data"
    port = _free_port()
    try:
        cluster._run([initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -k {directory} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        cluster._run([pg_ctl, "-D", str(data), "-o", options, "-l", str(directory / "log"), "-w", "start"])
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        shutil.rmtree(directory, ignore_errors=True)
        detail = getattr(error, "stderr", b"") or b""
        raise RuntimeError(f"could not start PostgreSQL: {error} {detail.decode(errors='replace')[-500:]}") from error
    del user
    cluster.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    return cluster
