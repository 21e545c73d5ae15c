"""A real PostgreSQL server for the tests (started from the machine's binaries, stopped
at the end; skipped where there are none)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BINARIES = bool(shutil.which("initdb") and shutil.which("pg_ctl"))


def _as_postgres_user(args: list[str]) -> list[str]:
    """initdb refuses to run as root: run it as the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextmanager
def running_postgres() -> Iterator[str]:
    """Starts a throwaway cluster on a free port; yields its SQLAlchemy URL."""
    if not BINARIES:
        pytest.skip("no PostgreSQL binaries on this machine")
    pytest.importorskip("psycopg")
    # not under pytest's tmp dir: its parents are closed to the postgres user
    directory = Path(tempfile.mkdtemp(prefix="inferline-pg-"))
    data = directory / "data"
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
    initdb = ["initdb", "-D", str(data), "-U", "inferline", "--auth=trust"]
    subprocess.run(_as_postgres_user(initdb), check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1"
    subprocess.run(_as_postgres_user(["pg_ctl", "-D", str(data), "-o", options, "-w",
                                      "-l", str(directory / "log"), "start"]),
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield f"postgresql+psycopg://inferline@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres_user(["pg_ctl", "-D", str(data), "-m", "fast", "stop"]),
                       capture_output=True)  # fmt: skip
        shutil.rmtree(directory, ignore_errors=True)
