"""W3C trace context for a request: the client's ``traceparent`` accepted, a span of our own,
and the header returned to the client and passed to remote upstreams.

https://www.w3.org/TR/trace-context/: ``version-traceid-parentid-flags``, lowercase hex; an
all-zero trace or span id, version ``ff``, or a malformed header is ignored (a new trace
starts), as the spec asks, rather than refused.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


@dataclass(frozen=True)
class TraceContext:
    """This request's place in a trace: its trace, its own span, the client's span."""

    trace_id: str
    span_id: str
    parent_span_id: str | None = None
    flags: str = "01"

    @property
    def traceparent(self) -> str:
        """The header naming this request's span (returned, and sent upstream)."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def new_span_id() -> str:
    """16 random lowercase hex digits, never all zero."""
    while True:
        span = secrets.token_hex(8)
        if span != "0" * 16:
            return span


def trace_context(header: str | None) -> TraceContext:
    """A span in the client's trace when ``header`` is a valid ``traceparent``, else in a
    new trace."""
    match = _TRACEPARENT.match((header or "").strip())
    if match is not None:
        version, trace_id, parent, flags, rest = match.groups()
        valid = version != "ff" and not (version == "00" and rest)
        if valid and trace_id != "0" * 32 and parent != "0" * 16:
            return TraceContext(trace_id, new_span_id(), parent, flags)
    return TraceContext(secrets.token_hex(16), new_span_id())
