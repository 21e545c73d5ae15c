"""Run a coroutine until it finishes or the client disconnects (then cancel it).

Starlette cancels streaming responses on disconnect by itself, but not plain handlers; this
closes that gap so an abandoned non-streaming request frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's code for "client closed the request"


class ClientDisconnected(Exception):
    """The client closed the connection before the response was ready."""


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(work: Coroutine[Any, Any, T], request: Request) -> T:
    """Returns ``work``'s result; raises `ClientDisconnected` if the client left first."""
    task = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(_wait_for_disconnect(request))
    await asyncio.wait({task, listener}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        listener.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientDisconnected
