"""The fake upstream's ASGI app (raw ASGI, no framework): routes, control API, request log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qs

from inferline.bench.fake_upstream.faults import FaultBook, FaultError
from inferline.bench.fake_upstream.request import BadRequest, parse_call
from inferline.bench.fake_upstream.respond import Context, Exchange, Receive, Send
from inferline.bench.fake_upstream.text import DEFAULT_WORDS, Canon
from inferline.bench.fake_upstream.wire import Wire, error_body

_JSON = (b"content-type", b"application/json")
_ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/v1/chat/completions"): "_chat",
    ("POST", "/v1/completions"): "_completions",
    ("GET", "/v1/models"): "_models",
    ("GET", "/health"): "_health",
    ("POST", "/_control/script"): "_script",
    ("GET", "/_control/script"): "_scripts",
    ("POST", "/_control/reset"): "_reset",
    ("GET", "/_control/log"): "_log",
    ("POST", "/_control/config"): "_config",
}
_PATHS = {path for _, path in _ROUTES}


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


async def _read(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _reply(send: Send, status: int, body: bytes | Any) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = [_JSON, (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def _field(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    return value if isinstance(value, str) else json.dumps(value)


class FakeUpstream:
    """An OpenAI-compatible ASGI app whose answers are the canonical text, or scripted faults.

    ``words``: length of the canonical answer; ``token_delay_ms``: pause between word
    chunks of a stream; ``models``: the ids ``GET /v1/models`` lists (any model name is
    accepted in requests); ``max_log``: how many of the latest requests the log keeps.
    """

    def __init__(
        self,
        *,
        words: int = DEFAULT_WORDS,
        token_delay_ms: float = 0.0,
        models: tuple[str, ...] = ("fake-model",),
        max_log: int = 100_000,
    ) -> None:
        self.canon = Canon(words)
        self.ctx = Context(Wire(self.canon), delay=token_delay_ms / 1000)
        self.book = FaultBook()
        self.log: deque[dict[str, Any]] = deque(maxlen=max_log)
        self._seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._models_body = json.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "fake-upstream"}
                    for m in models
                ],
            }
        ).encode()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """The ASGI entry point (``http`` and ``lifespan`` scopes)."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            self._loop = self._loop or asyncio.get_running_loop()
            name = _ROUTES.get((scope["method"], scope["path"]))
            if name is None:
                status = 405 if scope["path"] in _PATHS else 404
                await _reply(send, status, error_body(status, message="no such route"))
                return
            with contextlib.suppress(ClientGone):
                await getattr(self, name)(scope, receive, send)

    def close(self) -> None:
        """Ends every pause in progress (hang, stall...): call before stopping the server.

        Safe from any thread; a paused request is answered 500 if its response has not
        started, else its connection is dropped.
        """
        if self._loop is None or self._loop.is_closed():
            self.ctx.closing = True
        else:
            self._loop.call_soon_threadsafe(self.ctx.close)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._loop = asyncio.get_running_loop()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the OpenAI API

    async def _chat(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await self._completion(scope, receive, send, chat=True)

    async def _completions(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await self._completion(scope, receive, send, chat=False)

    async def _completion(
        self, scope: dict[str, Any], receive: Receive, send: Send, *, chat: bool
    ) -> None:
        body = await _read(receive)
        entry = self._entry(scope["path"])
        headers = dict(scope.get("headers") or [])
        traceparent = headers.get(b"traceparent")
        entry["traceparent"] = traceparent.decode("latin-1") if traceparent else None
        try:
            call = parse_call(body, chat=chat, canon=self.canon)
            entry.update(model=call.model, stream=call.stream, continuation=call.continuation)
            entry["prefix_words"] = call.start if call.continuation else None
            pick = self.book.pick(call.model, time.monotonic())
        except (BadRequest, FaultError) as exc:
            entry.update(status=400, outcome="error")
            param = exc.param if isinstance(exc, BadRequest) else "model"
            await _reply(send, 400, error_body(400, message=str(exc), param=param))
            return
        entry["fault"] = pick.fault.spec if pick else None
        await Exchange(self.ctx, call, entry, send, receive).run(pick)

    def _entry(self, endpoint: str) -> dict[str, Any]:
        self._seq = seq = self._seq + 1
        now = time.time()
        entry: dict[str, Any] = {
            "seq": seq,
            "id": f"fake-{seq}-{int(now * 1000)}",
            "time": now,
            "model": None,
            "endpoint": endpoint,
            "stream": False,
            "continuation": False,
            "prefix_words": None,
            "traceparent": None,
            "fault": None,
            "status": None,
            "words_sent": 0,
            "outcome": "pending",
        }
        self.log.append(entry)
        return entry

    async def _models(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        entry = self._entry(scope["path"])
        entry.update(status=200, outcome="ok")
        await _reply(send, 200, self._models_body)

    async def _health(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await _reply(send, 200, {"status": "ok"})

    # -- the control API

    async def _script(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        try:
            req = json.loads(await _read(receive))
            model, faults = req.get("model"), req.get("faults")
            if not isinstance(model, str) or not isinstance(faults, list):
                raise FaultError('expected {"model": "<name or *>", "faults": [...]}')
            queued = self.book.script(model, faults)
        except (ValueError, AttributeError) as exc:
            await _reply(send, 400, error_body(400, message=str(exc)))
            return
        await _reply(send, 200, {"model": model, "queued": queued})

    async def _scripts(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await _reply(send, 200, {"scripts": self.book.pending()})

    async def _reset(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await _read(receive)
        self.book.reset()
        self.log.clear()
        self._seq = 0
        await _reply(send, 200, {"reset": True})

    async def _log(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode())
        rows = [e for e in self.log if all(_field(e, k) in v for k, v in query.items())]
        await _reply(send, 200, {"object": "list", "data": rows})

    async def _config(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        try:
            delay = json.loads(await _read(receive))["token_delay_ms"]
            if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
                raise ValueError("token_delay_ms must be a non-negative number")
        except (ValueError, KeyError, TypeError) as exc:
            await _reply(send, 400, error_body(400, message=f"bad config: {exc}"))
            return
        self.ctx.delay = delay / 1000
        await _reply(send, 200, {"token_delay_ms": delay})
