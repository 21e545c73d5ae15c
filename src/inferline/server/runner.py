"""Submit requests to the generator, then collect or stream their outputs, observed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import Request

from inferline.core.outputs import RequestOutput
from inferline.core.protocols import GenerationRequest
from inferline.core.sampling_params import Priority
from inferline.server.disconnect import ClientDisconnected, until_disconnect
from inferline.server.errors import api_error_from
from inferline.server.formatting import sse
from inferline.server.observe import RequestTrace
from inferline.server.state import ServerState

Stream = AsyncGenerator[RequestOutput, None]
CLIENT_CLOSED = 499  # nginx's code for "client closed the request"
PRIORITY_HEADER = "x-inferline-priority"


def request_priority(request: Request) -> Priority:
    """``x-inferline-priority: batch`` puts a request behind live traffic (batch job lines)."""
    if request.headers.get(PRIORITY_HEADER, "").lower() == "batch":
        return Priority.BATCH
    return Priority.INTERACTIVE


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
        error = api_error_from(exc)
        state.observer.finish(trace, error.status_code, error.message)
        error.is_logged = True
        raise error from exc
    return streams


async def _last_output(stream: Stream, state: ServerState, trace: RequestTrace) -> RequestOutput:
    last = None
    async for output in stream:
        trace.on_output(output, state.metrics)
        last = output
    assert last is not None and last.finished
    return last


async def respond(
    request: Request,
    state: ServerState,
    trace: RequestTrace,
    streams: list[Stream],
    build: Callable[[list[RequestOutput]], dict[str, Any]],
) -> Response:
    """Waits for every stream to finish (aborting if the client leaves); returns JSON."""
    work = asyncio.gather(*(_last_output(s, state, trace) for s in streams))
    try:
        finals = await until_disconnect(_await(work), request)
    except ClientDisconnected:
        state.observer.finish(trace, CLIENT_CLOSED, "client disconnected")
        return Response(status_code=CLIENT_CLOSED)
    except Exception as exc:
        error = api_error_from(exc)
        state.observer.finish(trace, error.status_code, error.message)
        return error.response()
    trace.outputs = list(finals)
    state.observer.finish(trace, 200)
    return JSONResponse(build(trace.outputs))


async def _await(work: Any) -> list[RequestOutput]:
    return list(await work)


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


def stream_response(
    state: ServerState,
    trace: RequestTrace,
    streams: list[Stream],
    chunks: Callable[[int, RequestOutput], Iterable[dict[str, Any]]],
    final_chunk: Callable[[list[RequestOutput]], dict[str, Any] | None],
) -> StreamingResponse:
    """Server-sent events: ``chunks`` per output, then ``final_chunk`` (usage), then [DONE].

    An error after the stream started is sent as ``data: {"error": ...}``. A client that
    disconnects cancels this generator, which aborts the requests (their blocks are freed).
    """

    async def events() -> AsyncIterator[str]:
        status, error_message = CLIENT_CLOSED, "client disconnected"
        finals: dict[int, RequestOutput] = {}
        source = merged(streams)
        try:
            async for index, output in source:
                trace.on_output(output, state.metrics)
                finals[index] = output
                for chunk in chunks(index, output):
                    yield sse(chunk)
            trace.outputs = [finals[i] for i in sorted(finals)]
            last = final_chunk(trace.outputs)
            if last is not None:
                yield sse(last)
            status, error_message = 200, ""
        except Exception as exc:
            error = api_error_from(exc)
            status, error_message = error.status_code, error.message
            yield sse(error.body())
        finally:
            await source.aclose()  # stops the pumps first
            for stream in streams:
                await stream.aclose()  # aborts unfinished ones
            trace.outputs = trace.outputs or [finals[i] for i in sorted(finals)]
            state.observer.finish(trace, status, error_message or None)
        yield sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")
