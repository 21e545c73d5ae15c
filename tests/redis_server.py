"""A real ``redis-server`` for the tests of shared state: started on a free port with no
persistence (no RDB snapshots, no AOF), stopped at the end; skipped where the binary is
missing and cannot be installed (``scripts/redis-deps`` installs Debian's package when
root)."""

from __future__ import annotations

import functools
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def _binary() -> str | None:
    """redis-server's path, installed first (``scripts/redis-deps``) on a root machine."""
    if _which() is None:
        subprocess.run([str(REPO / "scripts" / "redis-deps")], capture_output=True, check=False)
    return _which()


def _which() -> str | None:
    return shutil.which("redis-server", path="/usr/bin:/usr/local/bin:/usr/sbin") or shutil.which(
        "redis-server"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_redis() -> Iterator[str]:
    """Starts redis-server; yields its URL once it answers PING."""
    binary = _binary()
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    pytest.importorskip("redis")
    import redis

    port = _free_port()
    directory = tempfile.mkdtemp(prefix="inferline-redis-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", directory, "--loglevel", "warning"]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a redis-server shared by the session (tests use their own key prefixes
    or flush it)."""
    with running_redis() as url:
        yield url
