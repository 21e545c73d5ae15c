"""Submit requests to the generator, then collect or stream their outputs, observed.

Both paths wait for the first output before answering: a request that fails before its
first token (every target down, deadline passed) gets a proper HTTP error, and a stream's
headers name the target that produced its first token.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import Request

from inferline.core.errors import StreamInterruptedError
from inferline.core.outputs import RequestOutput, RouteReport
from inferline.core.protocols import GenerationRequest
from inferline.openai.responses import sse
from inferline.server.disconnect import CLIENT_CLOSED, ClientDisconnected, until_disconnect
from inferline.server.errors import APIError, api_error_from
from inferline.server.observe import RequestTrace
from inferline.server.state import ServerState

Stream = AsyncGenerator[RequestOutput, None]
Chunks = Callable[[int, RequestOutput], Iterable[dict[str, Any]]]
Finals = dict[str, Any] | list[dict[str, Any]] | None
# the last events of a stream (usage; a Responses stream's ``response.completed``), given
# every final output; may be a coroutine (a stored response is written before it is sent)
FinalChunk = Callable[[list[RequestOutput]], Finals | Awaitable[Finals]]
# the events that end a stream which failed after it started (default: the dialect's error)
FailedChunk = Callable[[APIError], Finals | Awaitable[Finals]]
Body = dict[str, Any]
BuildBody = Callable[[list[RequestOutput]], Body | Awaitable[Body]]


@dataclass(frozen=True)
class Dialect:
    """How one API writes its stream events and its errors: OpenAI's Chat Completions
    (``data:`` lines, ``[DONE]``), its Responses API and Anthropic's Messages (``event:``
    lines, no terminator, errors in their own shapes)."""

    event: Callable[[dict[str, Any]], str] = sse
    error_body: Callable[[APIError], dict[str, Any]] = APIError.body
    done: str | None = "data: [DONE]\n\n"

    def error_response(self, error: APIError) -> Response:
        """The HTTP response of an error before the answer started."""
        return JSONResponse(
            self.error_body(error), status_code=error.status_code, headers=error.headers
        )


OPENAI = Dialect()


def named_event(data: dict[str, Any]) -> str:
    """One server-sent event named by its ``type`` (``event: <type>``), as the Responses
    and Messages APIs send them."""
    return f"event: {data['type']}\n{sse(data)}"


async def _resolved(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _listed(events: Finals) -> list[dict[str, Any]]:
    return [events] if isinstance(events, dict) else list(events or [])


async def submit_all(
    state: ServerState, trace: RequestTrace, requests: list[GenerationRequest]
) -> list[Stream]:
    """Submits every request; on the first error, aborts the others and raises the HTTP error."""
    streams: list[Stream] = []
    try:
        for request in requests:
            streams.append(await state.generator.submit(request))
    except Exception as exc:
        for stream in streams:
            await stream.aclose()
        raise _failed(state, trace, exc) from exc
    return streams


def _failed(state: ServerState, trace: RequestTrace, exc: Exception) -> APIError:
    """The HTTP error for ``exc``, logged once (with the route report it may carry)."""
    error = api_error_from(exc)
    trace.route = getattr(exc, "route_report", None) or trace.route
    state.observer.finish(trace, error.status_code, error.message)
    error.is_logged = True
    error.headers.update(route_headers(trace.request_id, trace.route))
    error.headers.update({k: v for k, v in trace.headers.items() if k not in error.headers})
    return error


def route_headers(
    request_id: str, route: RouteReport | None, *, final: bool = True
) -> dict[str, str]:
    """``x-request-id`` and, when a router served it, the route, target, attempts and
    cost (of every attempt, judges' included, as the key is charged; only when ``final``:
    a stream's headers go out before its cost is known)."""
    headers = {"x-request-id": request_id}
    if route is None:
        return headers
    headers["x-inferline-route"] = route.route
    if route.target:
        headers["x-inferline-target"] = route.target
    tried = sum(1 for attempt in route.attempts if attempt.status != "skipped")
    headers["x-inferline-attempts"] = str(tried)
    if route.fallback_reason:
        headers["x-inferline-fallback-reason"] = route.fallback_reason
    if route.stopped_by:
        headers["x-inferline-stopped"] = route.stopped_by
    if final:
        headers["x-inferline-cost-usd"] = f"{route.cost_usd:.8f}"
    headers["x-inferline-cache"] = route.cache or "miss"
    if route.cache_similarity is not None:
        headers["x-inferline-cache-similarity"] = f"{route.cache_similarity:.4f}"
    if route.decision is not None:
        headers["x-inferline-decision"] = route.decision.decision
    return headers


def with_decision(body: dict[str, Any], route: RouteReport | None) -> dict[str, Any]:
    """``body`` with the top-level ``inferline`` object when the route's checks decided."""
    if route is not None and route.decision is not None:
        body["inferline"] = route.decision.as_dict()
    return body


async def _last_output(stream: Stream, state: ServerState, trace: RequestTrace) -> RequestOutput:
    last = None
    async for output in stream:
        trace.on_output(output, state.metrics)
        last = output
    if last is None or not last.finished:
        raise StreamInterruptedError("the generator's stream ended before its answer did")
    return last


async def collect_all(
    streams: list[Stream], state: ServerState, trace: RequestTrace
) -> list[RequestOutput]:
    """Every stream's final output; the first failure cancels the others (and raises)."""
    tasks = [asyncio.ensure_future(_last_output(s, state, trace)) for s in streams]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = next((t for t in tasks if t.done() and t.exception() is not None), None)
        if failed is not None:
            raise failed.exception()  # type: ignore[misc]
        return [t.result() for t in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def respond(
    request: Request,
    state: ServerState,
    trace: RequestTrace,
    streams: list[Stream],
    build: BuildBody,
    dialect: Dialect = OPENAI,
) -> Response:
    """Waits for every stream to finish (aborting if the client leaves); returns JSON.

    The body is built (and, by a coroutine ``build``, stored) before the request is
    logged, so a failure to build it is logged as the 500 it is, not as a 200.
    """
    try:
        finals = await until_disconnect(collect_all(streams, state, trace), request)
    except ClientDisconnected:
        state.observer.finish(trace, CLIENT_CLOSED, "client disconnected")
        return Response(status_code=CLIENT_CLOSED)
    except Exception as exc:
        return dialect.error_response(_failed(state, trace, exc))
    trace.outputs = finals
    try:
        body = with_decision(await _resolved(build(finals)), trace.route)
    except Exception as exc:
        return dialect.error_response(_failed(state, trace, exc))
    state.observer.finish(trace, 200)
    headers = {**trace.headers, **route_headers(trace.request_id, trace.route)}
    return JSONResponse(body, headers=headers)


async def merged(streams: list[Stream]) -> AsyncGenerator[tuple[int, RequestOutput], None]:
    """Outputs of several streams as they come, tagged with the stream's index."""
    if len(streams) == 1:
        async for output in streams[0]:
            yield 0, output
        return
    queue: asyncio.Queue[tuple[int, RequestOutput | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: Stream) -> None:
        try:
            async for output in stream:
                await queue.put((index, output))
        except Exception as exc:
            await queue.put((index, exc))
        finally:
            await queue.put((index, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        # let the pumps unwind: each stream's own cleanup aborts its request
        await asyncio.gather(*tasks, return_exceptions=True)


async def _close(source: AsyncGenerator[Any, None], streams: list[Stream]) -> None:
    await source.aclose()  # stops the pumps first
    for stream in streams:
        await stream.aclose()  # aborts unfinished ones


async def stream_response(
    request: Request,
    state: ServerState,
    trace: RequestTrace,
    streams: list[Stream],
    chunks: Chunks,
    final_chunk: FinalChunk,
    dialect: Dialect = OPENAI,
    failed: FailedChunk | None = None,
) -> Response:
    """Server-sent events: ``chunks`` per output, then ``final_chunk`` (usage), then [DONE]
    (as the ``dialect`` writes them).

    The response starts with the first output, so its headers name the target that made
    it, and a failure before it is an HTTP error. An error after that is sent as
    ``data: {"error": ...}`` before ``[DONE]``; a stream that ends before its answer is
    complete is such an error (``failed``'s events when given), never a clean end. A
    client that disconnects cancels the generator, which aborts the requests (their blocks
    are freed).
    """
    source = merged(streams)
    try:
        first = await until_disconnect(anext(source), request)
    except ClientDisconnected:
        await _close(source, streams)
        state.observer.finish(trace, CLIENT_CLOSED, "client disconnected")
        return Response(status_code=CLIENT_CLOSED)
    except Exception as exc:
        await _close(source, streams)
        if isinstance(exc, StopAsyncIteration):
            exc = StreamInterruptedError("the generator's stream ended before its answer did")
        return dialect.error_response(_failed(state, trace, exc))
    trace.route = first[1].route
    headers = {**trace.headers, **route_headers(trace.request_id, trace.route, final=False)}
    events = _events(state, trace, streams, source, first, (chunks, final_chunk, failed), dialect)
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _events(
    state: ServerState,
    trace: RequestTrace,
    streams: list[Stream],
    source: AsyncGenerator[tuple[int, RequestOutput], None],
    first: tuple[int, RequestOutput],
    formatters: tuple[Chunks, FinalChunk, FailedChunk | None],
    dialect: Dialect,
) -> AsyncIterator[str]:
    chunks, final_chunk, failed = formatters
    status, error_message = CLIENT_CLOSED, "client disconnected"
    finals: dict[int, RequestOutput] = {}
    try:
        index, output = first
        decided = trace.route is not None and trace.route.decision is not None
        while True:
            trace.on_output(output, state.metrics)
            finals[index] = output
            for chunk in chunks(index, output):
                if decided:  # the decision rides on the first chunk
                    chunk, decided = with_decision(chunk, trace.route), False
                yield dialect.event(chunk)
            try:
                index, output = await anext(source)
            except StopAsyncIteration:
                break
        if len(finals) < len(streams) or not all(o.finished for o in finals.values()):
            raise StreamInterruptedError("the generator's stream ended before its answer did")
        trace.outputs = [finals[i] for i in sorted(finals)]
        for event in _listed(await _resolved(final_chunk(trace.outputs))):
            yield dialect.event(event)
        status, error_message = 200, ""
    except Exception as exc:
        error = api_error_from(exc)
        trace.route = getattr(exc, "route_report", None) or trace.route
        status, error_message = error.status_code, error.message
        ending = dialect.error_body(error) if failed is None else await _resolved(failed(error))
        for event in _listed(ending):
            yield dialect.event(event)
    finally:
        try:  # a client that left cancels every await here: the request is logged anyway
            with contextlib.suppress(Exception):
                await _close(source, streams)
        finally:
            trace.outputs = trace.outputs or [finals[i] for i in sorted(finals)]
            state.observer.finish(trace, status, error_message or None)
    if dialect.done is not None:
        yield dialect.done
