"""Serving the fake upstream: in a background thread or a subprocess, plus the reset port.

ASGI cannot reset a TCP connection, so the connection-reset fault is a second port: every
connection accepted on ``reset_port`` is closed at once with a TCP RST (``SO_LINGER`` 0),
so a client sees "connection reset by peer" (or an empty reply) on its first read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import uvicorn

from inferline.bench.fake_upstream.app import FakeUpstream
from inferline.bench.fake_upstream.respond import Dropped
from inferline.bench.fake_upstream.text import DEFAULT_WORDS

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _DropFilter(logging.Filter):
    """Hides uvicorn's "Exception in ASGI application" record for deliberate drops."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], Dropped))


def install_drop_filter() -> None:
    """Keeps the ``cut`` fault's deliberate exception out of the ``uvicorn.error`` log."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropFilter) for f in logger.filters):
        logger.addFilter(_DropFilter())


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: any free port).

    ``IPPROTO_TCP`` explicitly: asyncio sets ``TCP_NODELAY`` on accepted connections only
    when the protocol is named, and without it every response waits ~40 ms (Nagle against
    the client's delayed ACK).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


class ResetListener:
    """Accepts TCP connections on a port and closes each at once with an RST."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = bind(host, port)
        self.port: int = self.sock.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="fake-upstream-reset", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        linger = struct.pack("ii", 1, 0)
        while True:
            readable, _, _ = select.select([self.sock, self._wake_r], [], [])
            if self._wake_r in readable:
                return
            with contextlib.suppress(OSError):
                conn, _ = self.sock.accept()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                conn.close()

    def stop(self) -> None:
        """Stops accepting and closes the port."""
        self._wake_w.send(b"x")
        self._thread.join(5)
        for sock in (self.sock, self._wake_r, self._wake_w):
            sock.close()


class FakeServer(uvicorn.Server):
    """A uvicorn server that ends the fake's pauses (hang, stall) when asked to exit."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        """Signal handler: release paused requests, then shut down as uvicorn does."""
        app = self.config.app
        if isinstance(app, FakeUpstream):
            app.close()
        super().handle_exit(sig, frame)


class FakeUpstreamHandle:
    """A running fake upstream: its URLs, the control API as methods, and `stop`.

    ``api_base`` (``http://host:port/v1``) is what an OpenAI client takes as ``base_url``;
    ``reset_url`` is the reset port's URL (None when not started). Use as a context manager.
    """

    def __init__(
        self, host: str, port: int, reset_port: int | None, stop: Callable[[], None], app: Any
    ) -> None:
        self.host, self.port, self.reset_port = host, port, reset_port
        self.app: FakeUpstream | None = app
        self._stop: Callable[[], None] | None = stop

    @property
    def base_url(self) -> str:
        """``http://host:port`` (no ``/v1``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        """``http://host:port/v1``: the OpenAI SDK's ``base_url``."""
        return self.base_url + "/v1"

    @property
    def reset_url(self) -> str | None:
        """``http://host:reset_port/v1``, where every connection is reset, or None."""
        return None if self.reset_port is None else f"http://{self.host}:{self.reset_port}/v1"

    def control(self, method: str, path: str, payload: Any = None) -> Any:
        """Calls the control API (``/_control/...``) and returns its JSON."""
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        with _OPENER.open(request, timeout=10) as response:
            return json.loads(response.read())

    def script(self, model: str, *faults: dict[str, Any]) -> int:
        """Queues ``faults`` for requests to ``model`` (``*``: any); returns the queue length."""
        return int(
            self.control("POST", "/_control/script", {"model": model, "faults": list(faults)})[
                "queued"
            ]
        )

    def reset(self) -> None:
        """Clears scripts, model-name fault state, flap clocks and the request log."""
        self.control("POST", "/_control/reset", {})

    def log(self, **filters: Any) -> list[dict[str, Any]]:
        """The request log, oldest first; ``filters`` keep entries whose fields match."""
        rows: list[dict[str, Any]] = self.control("GET", "/_control/log")["data"]
        return [r for r in rows if all(r.get(k) == v for k, v in filters.items())]

    def set_token_delay(self, ms: float) -> None:
        """Changes the pause between word chunks of later streams."""
        self.control("POST", "/_control/config", {"token_delay_ms": ms})

    def stop(self) -> None:
        """Stops the server (and the reset port); idempotent."""
        stop, self._stop = self._stop, None
        if stop is not None:
            stop()

    def __enter__(self) -> FakeUpstreamHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _start_thread(app: FakeUpstream, sock: socket.socket, timeout: float) -> Callable[[], None]:
    install_drop_filter()
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="on",
        ws="none",
        loop="asyncio",
        timeout_graceful_shutdown=1,
    )
    server = FakeServer(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="fake-upstream", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the fake upstream did not start")
        time.sleep(0.002)

    def stop() -> None:
        app.close()
        server.should_exit = True
        thread.join(10)
        sock.close()

    return stop


def _start_process(args: list[str], timeout: float) -> tuple[dict[str, Any], Callable[[], None]]:
    src = str(Path(__file__).resolve().parents[3])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferline.bench.fake_upstream", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout is not None

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()

    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if readable else ""
    if not line:
        stop()
        raise RuntimeError(f"the fake upstream process did not start (exit code {proc.returncode})")
    return json.loads(line), stop


def start_fake_upstream(
    port: int = 0,
    reset_port: int | None = None,
    *,
    host: str = "127.0.0.1",
    words: int = DEFAULT_WORDS,
    token_delay_ms: float = 0.0,
    models: tuple[str, ...] = ("fake-model",),
    mode: Literal["thread", "process"] = "thread",
    max_log: int = 100_000,
    startup_timeout: float = 15.0,
) -> FakeUpstreamHandle:
    """Starts a fake upstream and returns once it accepts requests.

    ``port``/``reset_port``: 0 picks a free port; ``reset_port=None`` opens no reset port.
    ``mode="thread"`` serves from a daemon thread with its own event loop in this process
    (starts in milliseconds; ``handle.app`` is the live app); ``"process"`` runs
    ``python -m inferline.bench.fake_upstream`` (no GIL or loop shared with the code under
    test: use it for benchmarks).
    """
    if mode == "process":
        args = ["--host", host, "--port", str(port), "--words", str(words)]
        args += ["--token-delay-ms", str(token_delay_ms), "--models", ",".join(models)]
        args += ["--max-log", str(max_log)]
        args += [] if reset_port is None else ["--reset-port", str(reset_port)]
        ready, stop = _start_process(args, startup_timeout)
        return FakeUpstreamHandle(host, ready["port"], ready["reset_port"], stop, None)
    app = FakeUpstream(words=words, token_delay_ms=token_delay_ms, models=models, max_log=max_log)
    sock = bind(host, port)
    resetter = None if reset_port is None else ResetListener(host, reset_port)
    try:
        stop_server = _start_thread(app, sock, startup_timeout)
    except BaseException:
        if resetter is not None:
            resetter.stop()
        raise

    def stop_all() -> None:
        stop_server()
        if resetter is not None:
            resetter.stop()

    reset = None if resetter is None else resetter.port
    return FakeUpstreamHandle(host, sock.getsockname()[1], reset, stop_all, app)


@contextlib.contextmanager
def fake_upstream(**options: Any) -> Iterator[FakeUpstreamHandle]:
    """``with fake_upstream(...) as up:``: `start_fake_upstream` and a guaranteed stop."""
    handle = start_fake_upstream(**options)
    try:
        yield handle
    finally:
        handle.stop()
