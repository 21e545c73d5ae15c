"""An async OpenAI-compatible upstream client that implements `core.Generator`."""

from inferline.client.config import UpstreamConfig, UpstreamTimeouts
from inferline.client.errors import error_from_response, error_from_transport, retry_after_s
from inferline.client.sse import SSEError, SSEEvent, SSEParser
from inferline.client.stream import UpstreamStream
from inferline.client.upstream import UpstreamClient

__all__ = [
    "SSEError",
    "SSEEvent",
    "SSEParser",
    "UpstreamClient",
    "UpstreamConfig",
    "UpstreamStream",
    "UpstreamTimeouts",
    "error_from_response",
    "error_from_transport",
    "retry_after_s",
]
