"""Waiting for what a server does in the background (its request log is written by a
thread): poll until it shows, instead of sleeping a fixed time a loaded machine can
outrun (a 0.2 s sleep failed a full run on two busy cores)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(fetch: Callable[[], T], ready: Callable[[T], bool], timeout_s: float = 10.0) -> T:
    """``fetch()``'s value once ``ready`` holds for it, or its last value at the timeout
    (the caller's assertions then say what is missing)."""
    deadline = time.monotonic() + timeout_s
    value = fetch()
    while not ready(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = fetch()
    return value
