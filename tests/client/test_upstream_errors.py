"""Every HTTP status and transport failure maps to its typed error, raised by `submit`;
no error message ever holds the API key; redirects are not followed. Against a local
upstream (`tests.client.scripted_upstream`) and raw sockets."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from inferline.client import UpstreamTimeouts, retry_after_s
from inferline.client.errors import error_fields, redact
from inferline.core import (
    ContentFilteredError,
    ContextLengthExceededError,
    GenerationRequest,
    RateLimitedError,
    UpstreamConfigError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from tests.client.scripted_upstream import (
    KEY,
    Handler,
    answer,
    free_port,
    make_client,
    raw_server,
    resolver_for,
    serving,
    unanswered_port,
)

Place = Callable[[], AbstractAsyncContextManager[str]]  # opens a base URL to send to


def chat_request() -> GenerationRequest:
    return GenerationRequest("req-1", messages=[{"role": "user", "content": "hi"}])


def submit_error(handler: Handler) -> Exception:
    """The error `submit` raises against ``handler``, served locally."""

    @asynccontextmanager
    async def served() -> AsyncIterator[str]:
        async with serving(handler) as (_, base_url):
            yield base_url

    return submit_error_at(served)


def submit_error_at(place: Place, **fields: Any) -> Exception:
    """The error `submit` raises against the base URL ``place`` opens (fails the test if it
    returns a stream), within 2 s; ``fields`` go to the client's `UpstreamConfig`."""

    async def scenario() -> Exception:
        async with place() as base_url:
            client = make_client(base_url, resolver_for(), **fields)
            try:
                await client.submit(chat_request())
            except Exception as exc:
                assert client.stats()["gpt"].num_running == 0
                return exc
            finally:
                await client.shutdown(0)
        raise AssertionError("submit returned a stream")

    started = time.monotonic()
    error = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert time.monotonic() - started < 2
    return error


def key_echo(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    """A handler that answers ``status`` with an error body that echoes the API key."""
    if body is None:
        body = {"error": {"message": f"Incorrect API key provided: {KEY}", "type": "x"}}
    return answer(status, body, headers)


def rejected(message: str, code: str | None = None, **more: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code, **more}}


def test_429_is_rate_limited_with_retry_after_seconds() -> None:
    error = submit_error(key_echo(429, headers={"Retry-After": "3"}))
    assert isinstance(error, RateLimitedError) and error.retryable
    assert error.retry_after_s == 3.0 and error.status_code == 429 and error.target == "gpt"


def test_429_retry_after_ms_and_http_date() -> None:
    error = submit_error(key_echo(429, headers={"retry-after-ms": "1500", "Retry-After": "2"}))
    assert isinstance(error, RateLimitedError) and error.retry_after_s == 1.5
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    error = submit_error(key_echo(429, headers={"Retry-After": when}))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after_s is not None and 17 <= error.retry_after_s <= 20


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_unavailable_with_its_status(status: int) -> None:
    error = submit_error(key_echo(status, headers={"Retry-After": "7"}))
    assert isinstance(error, UpstreamUnavailableError) and error.retryable
    assert error.status_code == status and error.retry_after_s == 7.0
    assert KEY not in str(error) and KEY not in error.message


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, "upstream_unauthorized"), (403, "upstream_forbidden"), (404, "upstream_not_found")],
)
def test_401_403_404_are_config_errors_without_the_key(status: int, code: str) -> None:
    error = submit_error(key_echo(status))
    assert isinstance(error, UpstreamConfigError) and not error.retryable
    assert error.code == code and error.status_code == 502 and str(status) in error.message
    assert "Incorrect API key provided" in error.message
    assert KEY not in error.message and KEY not in str(error) and KEY[:20] not in error.message


def test_bearer_tokens_in_a_message_are_redacted() -> None:
    body = {"error": {"message": "header was Authorization: Bearer abc.def-123 (bad)"}}
    error = submit_error(key_echo(401, body))
    assert "abc.def-123" not in error.message and "Bearer ***" in error.message


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, rejected("too long", "context_length_exceeded")),
        (
            400,
            {
                "object": "error",
                "message": "This model's maximum context length is 4096 "
                "tokens. However, you requested 5000 tokens.",
                "type": "BadRequestError",
                "code": 400,
            },
        ),  # fmt: skip
        (422, {"detail": "prompt exceeds the maximum context length"}),
    ],
)
def test_context_length_errors(status: int, body: dict[str, Any]) -> None:
    error = submit_error(key_echo(status, body))
    assert isinstance(error, ContextLengthExceededError)
    assert error.message in json.dumps(body) and error.param == "messages"


@pytest.mark.parametrize("code", ["content_filter", "content_policy_violation"])
def test_content_filter_400(code: str) -> None:
    error = submit_error(key_echo(400, rejected("flagged by the policy", code)))
    assert isinstance(error, ContentFilteredError) and not error.counts_as_failure
    assert error.target == "gpt" and "flagged by the policy" in error.message


@pytest.mark.parametrize("status", [400, 409, 413, 422])
def test_other_4xx_are_rejected_with_the_upstream_message(status: int) -> None:
    body = rejected("top_p must be at most 1", "invalid_value", param="top_p")
    error = submit_error(key_echo(status, body))
    assert isinstance(error, UpstreamRejectedError)
    assert not error.retryable and not error.counts_as_failure
    assert error.message == "top_p must be at most 1" and error.status_code == status
    assert error.param == "top_p" and error.code == "invalid_value" and error.target == "gpt"


def test_long_or_plain_text_messages_are_truncated() -> None:
    error = submit_error(key_echo(400, b"x" * 5000))
    assert isinstance(error, UpstreamRejectedError) and 400 <= len(error.message) <= 600


def test_408_is_a_timeout() -> None:
    assert isinstance(submit_error(key_echo(408, {})), UpstreamTimeoutError)


def test_redirects_are_not_followed() -> None:
    async def scenario() -> tuple[UpstreamConfigError, list[str], list[int]]:
        async with serving(answer(200, b"data: [DONE]\n\n")) as (evil, evil_url):
            location = evil_url.replace("upstream.test", "evil.test") + "/chat/completions"
            redirect = answer(302, headers={"Location": location})
            async with serving(redirect) as (upstream, base_url):
                resolver = resolver_for("evil.test")
                client = make_client(base_url, resolver)
                with pytest.raises(UpstreamConfigError) as info:
                    await client.submit(chat_request())
                await client.shutdown(0)
        return info.value, resolver.asked, [len(upstream.requests), len(evil.requests)]

    error, asked, num_requests = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert "302" in error.message and error.code == "unexpected_status"
    assert asked == ["upstream.test"] and num_requests == [1, 0]


@asynccontextmanager
async def _refused() -> AsyncIterator[str]:
    yield f"http://127.0.0.1:{free_port()}/v1"


@asynccontextmanager
async def _unknown_name() -> AsyncIterator[str]:
    yield "http://no-such-host.test/v1"  # the resolver knows only upstream.test


def _raw(ending: str) -> Place:
    @asynccontextmanager
    async def opener() -> AsyncIterator[str]:
        async with raw_server(ending) as port:
            yield f"http://127.0.0.1:{port}/v1"

    return opener


@asynccontextmanager
async def _unanswered() -> AsyncIterator[str]:
    async with unanswered_port() as port:
        yield f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize(
    ("where", "error_type", "code"),
    [
        (_refused, UpstreamUnavailableError, "connect_error"),
        (_unknown_name, UpstreamUnavailableError, "connect_error"),
        (_raw("reset"), UpstreamUnavailableError, "connect_error"),
        (_raw("hang_up"), UpstreamUnavailableError, "connect_error"),
        (_unanswered, UpstreamTimeoutError, "connect_timeout"),
    ],
    ids=["refused", "dns", "reset", "disconnected", "connect_timeout"],
)
def test_transport_failures_before_a_response(
    where: Place, error_type: type[Exception], code: str
) -> None:
    timeouts = UpstreamTimeouts(connect_s=0.2, first_token_s=0.5, idle_s=0.3, total_s=2.0)
    error = submit_error_at(where, timeouts=timeouts)
    assert type(error) is error_type and getattr(error, "code", None) == code
    assert getattr(error, "retryable", False) and getattr(error, "target", "") == "gpt"
    assert KEY not in str(error)


def test_no_status_within_the_first_token_timeout() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3)
        return web.Response()

    error = submit_error(handler)
    assert isinstance(error, UpstreamTimeoutError) and error.code == "first_token_timeout"


def test_retry_after_parsing() -> None:
    assert retry_after_s({}) is None
    assert retry_after_s({"retry-after": "2.5"}) == 2.5
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now_s=1445412470) == 10
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25


def test_error_fields_of_each_shape() -> None:
    assert error_fields(b'{"error": {"message": "m", "param": "p", "code": "c"}}') == (
        "m", None, "p", "c",
    )  # fmt: skip
    assert error_fields(b'{"object": "error", "message": "m", "code": 400}').code is None
    assert error_fields(b'{"error": "just text"}').message == "just text"
    assert error_fields(b"<html>bad gateway</html>").message == "<html>bad gateway</html>"
    assert redact(f"key {KEY} and Bearer xyz", (KEY,)) == "key *** and Bearer ***"
