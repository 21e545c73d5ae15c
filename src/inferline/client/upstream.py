"""`UpstreamClient`: a remote OpenAI-compatible server as a `core.Generator`.

Each request is asked of the upstream as a stream (whatever the gateway's client asked),
so the time to first token, stalls and cuts are seen per attempt; failures are typed
(`inferline.client.errors`) and never retried here: the router owns retries, fallbacks
and breakers.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import aiohttp

from inferline.client.config import UpstreamConfig
from inferline.client.deadlines import Deadlines
from inferline.client.errors import error_from_response, error_from_transport
from inferline.client.flight import Aborted, Flight
from inferline.client.stream import UpstreamStream
from inferline.core.errors import (
    InvalidParameterError,
    StreamInterruptedError,
    UnknownModelError,
    UpstreamConfigError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from inferline.core.outputs import RequestMetrics, RequestOutput
from inferline.core.protocols import GenerationRequest, GeneratorStats, HealthReport, ModelInfo
from inferline.openai.upstream import UpstreamCall, upstream_call
from inferline.openai.upstream_chunks import ChunkAccumulator

EMBEDDINGS_PATH = "/embeddings"
KEEPALIVE_S = 4.0  # an idle pooled connection is closed before common servers' 5 s do
_DRAIN_POLL_S = 0.02
_DEFAULT_HEADERS = {"User-Agent": "inferline", "Content-Type": "application/json"}
_STREAM_HEADERS = {"Accept": "text/event-stream", "Accept-Encoding": "identity"}
_JSON_HEADERS = {"Accept": "application/json", "Accept-Encoding": "gzip, deflate"}


class UpstreamClient:
    """One upstream (`UpstreamConfig`) behind the `Generator` protocol, plus embeddings.

    Requests only ever go to ``config.base_url`` + a fixed path; redirects are not
    followed, the environment (proxies, ``.netrc``) is not read, cookies are not kept.
    HTTP is aiohttp's, over one keep-alive pool per client (``config.max_connections``).
    ``connector`` makes that pool instead (called once, in the event loop: e.g. an
    ``aiohttp.TCPConnector`` with its own resolver or TLS context).
    """

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        connector: Callable[[], aiohttp.BaseConnector] | None = None,
    ) -> None:
        self.config = config
        self._connector = connector
        self._http: aiohttp.ClientSession | None = None
        self._flights: dict[str, Flight] = {}
        self._num_embeddings = 0
        self._is_accepting = True

    @property
    def name(self) -> str:
        """The model entry's name (``config.name``)."""
        return self.config.name

    @property
    def can_continue(self) -> bool:
        """Whether a chat request with an ``assistant_prefix`` can be sent here."""
        return self.config.can_continue

    async def start(self) -> None:
        """Opens the connection pool (if not yet) and admits requests."""
        self._is_accepting = True
        self._client()

    async def shutdown(self, drain_timeout_s: float) -> None:
        """Stops admitting, waits up to ``drain_timeout_s`` for requests in flight, then
        ends the rest with `StreamInterruptedError` (code ``shutdown``) and closes the pool."""
        self._is_accepting = False
        deadline = time.monotonic() + drain_timeout_s
        while (self._flights or self._num_embeddings) and time.monotonic() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)
        for flight in list(self._flights.values()):
            flight.stop(
                StreamInterruptedError(
                    f"{self.name}: the client shut down before the answer ended",
                    target=self.name,
                    code="shutdown",
                )
            )
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """Sends ``request`` and waits for the upstream's status (within the first-token
        timeout); a non-2xx status or a failure to connect raises its typed error here.
        Returns the stream of outputs (cumulative text, counts and calls, with deltas)."""
        self._check_admissible(request)
        stream = self._open(request, self._call(request))
        try:
            await stream.wait_started()
        except BaseException:
            stream.close_now()
            raise
        return stream

    def _open(self, request: GenerationRequest, call: UpstreamCall) -> UpstreamStream:
        """Sends ``call`` now (its deadlines start now) and registers it as in flight."""
        metrics = RequestMetrics(arrival_s=time.time())
        deadlines = Deadlines.starting_now(self.config.timeouts, request.deadline)
        flight = Flight(
            request.request_id,
            self._client(),
            self._url(call.path),
            json.dumps(call.body).encode(),
            deadlines,
            target=self.name,
            secrets=self.config.secrets,
            headers={"traceparent": request.traceparent} if request.traceparent else None,
        )
        self._flights[request.request_id] = flight
        accumulator = ChunkAccumulator(
            request.request_id,
            n=request.params.n,
            is_chat=call.is_chat,
            model=self.name,
            metrics=metrics,
            prompt=request.prompt if isinstance(request.prompt, str) else None,
            target=self.name,
            estimated_prompt_tokens=request.estimated_prompt_tokens(),
        )
        release = functools.partial(self._release, request.request_id, flight)
        return UpstreamStream(flight, accumulator, release)

    def _call(self, request: GenerationRequest) -> UpstreamCall:
        """The upstream body. A continuation this upstream cannot do is a fault of the
        target (`UpstreamConfigError`: another target may continue it), not of the request."""
        try:
            return upstream_call(request, self.config.model, can_continue=self.can_continue)
        except InvalidParameterError as exc:
            if exc.param != "assistant_prefix":
                raise
            message = f"{self.name}: {exc.message}"
            raise UpstreamConfigError(
                message, target=self.name, code="cannot_continue", param="assistant_prefix"
            ) from None

    async def abort(self, request_id: str) -> None:
        """Closes the request's HTTP response; its stream ends at once with an output whose
        unfinished completions have finish reason ``abort``. No-op if unknown or done."""
        flight = self._flights.get(request_id)
        if flight is not None:
            flight.stop(Aborted())

    def models(self) -> list[ModelInfo]:
        """The one model this upstream serves, under its entry's name."""
        return [ModelInfo(self.name, "model", self.config.max_model_len)]

    def health(self) -> HealthReport:
        """Always live and ready: whether the upstream answers is the router's breakers'
        business (a probe here would cost a request)."""
        return HealthReport(True, True, "ok")

    def stats(self) -> dict[str, GeneratorStats]:
        """Requests in flight (streams not yet closed, embeddings calls) as ``num_running``."""
        return {self.name: GeneratorStats(num_running=len(self._flights) + self._num_embeddings)}

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        """Posts an OpenAI ``/embeddings`` body with the upstream's model name; returns the
        upstream's body with ``model`` set to this entry's name. Errors as for `submit`."""
        self._check_accepting()
        self._num_embeddings += 1
        try:
            answer = await self._post_json(EMBEDDINGS_PATH, {**body, "model": self.config.model})
        finally:
            self._num_embeddings -= 1
        return {**answer, "model": self.name}

    async def _post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming call: status within the first-token timeout, the whole body
        within the total timeout."""
        timeouts, http = self.config.timeouts, self._client()
        started = time.monotonic()
        phase = "first_token_timeout"
        try:
            async with asyncio.timeout(timeouts.first_token_s) as scope:
                response = await http.post(
                    self._url(path),
                    data=json.dumps(payload).encode(),
                    headers=_JSON_HEADERS,
                    allow_redirects=False,
                )
                async with response:
                    phase = "total_timeout"
                    remaining_s = timeouts.total_s - (time.monotonic() - started)
                    scope.reschedule(asyncio.get_running_loop().time() + remaining_s)
                    body = await response.read()
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ClientError):
                raise self._transport_error(exc) from None
            message = f"{self.name}: no complete answer from the upstream in time ({phase})"
            raise UpstreamTimeoutError(message, target=self.name, code=phase) from None
        except Exception as exc:  # anything else the transport raises, typed
            raise self._transport_error(exc) from None
        return self._json_answer(response, body)

    def _transport_error(self, exc: Exception) -> UpstreamError:
        return error_from_transport(
            exc, is_started=False, target=self.name, secrets=self.config.secrets
        )

    def _json_answer(self, response: aiohttp.ClientResponse, body: bytes) -> dict[str, Any]:
        if not 200 <= response.status < 300:
            raise error_from_response(
                response.status, response.headers, body, target=self.name,
                secrets=self.config.secrets,
            )  # fmt: skip
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            message = f"{self.name}: the upstream's answer is not a JSON object"
            raise UpstreamError(message, target=self.name, code="malformed_response")
        return answer

    def _check_admissible(self, request: GenerationRequest) -> None:
        self._check_accepting()
        if request.model and request.model != self.name:
            raise UnknownModelError.not_served(request.model, [self.name])
        if request.request_id in self._flights:
            raise InvalidParameterError(
                f"request id {request.request_id!r} is already in use", "request_id"
            )

    def _check_accepting(self) -> None:
        if not self._is_accepting:
            message = f"{self.name}: the upstream client is shutting down"
            raise UpstreamUnavailableError(message, target=self.name, code="shutting_down")

    def _release(self, request_id: str, flight: Flight) -> None:
        if self._flights.get(request_id) is flight:
            del self._flights[request_id]

    def _url(self, path: str) -> str:
        """Only ever the configured base URL plus one of our fixed paths."""
        return self.config.base_url + path

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            config = self.config
            auth = {} if config.api_key is None else {"Authorization": f"Bearer {config.api_key}"}
            connector = self._connector() if self._connector else _pool(config)
            self._http = aiohttp.ClientSession(
                connector=connector,
                # what streams send; embeddings calls replace Accept and Accept-Encoding
                headers=_merged(_DEFAULT_HEADERS, config.headers, auth, _STREAM_HEADERS),
                # only connecting has a transport timeout: the deadlines bound the rest
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.timeouts.connect_s),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._http


def _pool(config: UpstreamConfig) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=config.max_connections, keepalive_timeout=KEEPALIVE_S)


def _merged(*layers: Mapping[str, str]) -> dict[str, str]:
    """The layers' headers, later layers winning; names compare case-insensitively."""
    merged: dict[str, tuple[str, str]] = {}
    for layer in layers:
        for name, value in layer.items():
            merged[name.lower()] = (name, value)
    return dict(merged.values())
