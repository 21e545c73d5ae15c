"""What an upstream is: where it lives, how to authenticate, how long to wait.

Built by the CLI from the models file; the API key is read from the environment there,
never here. ``api_key`` and ``headers`` stay out of ``repr`` (they may hold secrets).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from inferline.core.errors import InvalidParameterError

_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_RESERVED_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


@dataclass(frozen=True)
class UpstreamTimeouts:
    """How long each phase of an upstream request may take, in seconds.

    Attributes:
        connect_s: to open the TCP/TLS connection.
        first_token_s: from submission to the first content (it includes connecting and
            the response's status line): the budget of the upstream's queue and prefill.
        idle_s: between two server-sent events once content has started.
        total_s: from submission to the end of the stream.
    """

    connect_s: float = 5.0
    first_token_s: float = 30.0
    idle_s: float = 30.0
    total_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("connect_s", "first_token_s", "idle_s", "total_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise InvalidParameterError(f"timeouts.{name} must be > 0, got {value!r}", name)


@dataclass(frozen=True)
class UpstreamConfig:
    """One remote OpenAI-compatible upstream.

    Attributes:
        name: the model entry's name: what clients and routes call it, what errors and
            metrics name (never the URL or the key).
        base_url: ``http(s)://host[:port]/prefix`` ending where ``/chat/completions`` goes
            (``https://api.openai.com/v1``); no credentials, query or fragment. Requests
            only ever go there: nothing in a request can change the host.
        model: the model name sent upstream (default: ``name``).
        api_key: sent as ``Authorization: Bearer``; None: no header.
        timeouts: see `UpstreamTimeouts`.
        max_connections: the pool's size; more concurrent requests wait for a connection.
        max_model_len: the upstream model's context window, if known (for routing).
        can_continue: the upstream accepts vLLM's ``continue_final_message`` (inferline and
            vLLM do, OpenAI does not), so a stream cut elsewhere can be finished here; the
            default matches the router's ``TargetConfig.can_continue``.
        headers: extra headers sent with every request (e.g. an organization id).
    """

    name: str
    base_url: str
    model: str = ""
    api_key: str | None = field(default=None, repr=False)
    timeouts: UpstreamTimeouts = field(default_factory=UpstreamTimeouts)
    max_connections: int = 100
    max_model_len: int | None = None
    can_continue: bool = True
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidParameterError("an upstream needs a name", "name")
        object.__setattr__(self, "base_url", _checked_base_url(self.base_url))
        object.__setattr__(self, "model", self.model or self.name)
        if self.api_key is not None and (not self.api_key or "\n" in self.api_key):
            raise InvalidParameterError("api_key must be a non-empty single line", "api_key")
        if self.max_connections < 1:
            raise InvalidParameterError(
                f"max_connections must be at least 1, got {self.max_connections}",
                "max_connections",
            )
        if self.max_model_len is not None and self.max_model_len < 1:
            raise InvalidParameterError(
                f"max_model_len must be at least 1, got {self.max_model_len}", "max_model_len"
            )
        object.__setattr__(self, "headers", MappingProxyType(_checked_headers(self.headers)))

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in a message or log line: the key, header values."""
        values = [self.api_key or "", *self.headers.values()]
        return tuple(v for v in values if len(v) >= 4)


def _checked_base_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except (ValueError, TypeError, AttributeError):
        raise InvalidParameterError(f"base_url is not a URL: {url!r}", "base_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameterError(
            "base_url must be an http:// or https:// URL with a host", "base_url"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidParameterError(
            "base_url must not carry credentials, a query or a fragment (use api_key)",
            "base_url",
        )
    return url.rstrip("/")


def _checked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    checked = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise InvalidParameterError(f"invalid header name {name!r}", "headers")
        if name.lower() in _RESERVED_HEADERS:
            raise InvalidParameterError(f"the header {name!r} cannot be set", "headers")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise InvalidParameterError(f"the header {name!r} must be one line", "headers")
        checked[name] = value
    return checked
