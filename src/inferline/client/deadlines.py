"""The deadlines of one upstream attempt, and the error each one's passing means."""

from __future__ import annotations

import time
from dataclasses import dataclass

from inferline.client.config import UpstreamTimeouts
from inferline.core.errors import (
    DeadlineExceededError,
    InferlineError,
    StreamInterruptedError,
    UpstreamTimeoutError,
)


@dataclass
class Deadlines:
    """When the attempt must have progressed, in ``time.monotonic()`` seconds.

    Before the first content, ``first_token`` applies; after, ``idle_s`` since the last
    event (comments do not count: keep-alives are not progress). ``total`` and the
    request's own ``request`` deadline apply throughout.
    """

    first_token: float
    total: float
    request: float | None
    idle_s: float
    last_event: float

    @classmethod
    def starting_now(cls, timeouts: UpstreamTimeouts, request: float | None) -> Deadlines:
        """The deadlines of an attempt that starts now."""
        now = time.monotonic()
        return cls(
            now + timeouts.first_token_s, now + timeouts.total_s, request, timeouts.idle_s, now
        )

    def next(self, has_content: bool) -> tuple[float, str]:
        """The nearest deadline and its kind (``first_token``, ``idle``, ``total``,
        ``request``); on a tie, the first of those kinds in alphabetical order."""
        if has_content:
            when, kind = self.last_event + self.idle_s, "idle"
        else:
            when, kind = self.first_token, "first_token"
        if self.total < when:
            when, kind = self.total, "total"
        request = self.request
        if request is not None and (request < when or (request == when and kind == "total")):
            when, kind = request, "request"
        return when, kind

    @staticmethod
    def error(kind: str, has_content: bool, target: str) -> InferlineError:
        """The error for deadline ``kind`` passing: a timeout until content arrived (retry
        it anywhere), an interrupted stream after (continue it elsewhere)."""
        if kind == "request":
            return DeadlineExceededError(f"{target}: the request's deadline passed")
        if kind == "idle":
            message = f"{target}: no event from the upstream within the idle timeout"
            return StreamInterruptedError(message, target=target, code="stream_stalled")
        if kind == "first_token":
            message = f"{target}: no answer from the upstream within the first-token timeout"
            return UpstreamTimeoutError(message, target=target, code="first_token_timeout")
        message = f"{target}: the answer did not end within the total timeout"
        cls = StreamInterruptedError if has_content else UpstreamTimeoutError
        return cls(message, target=target, code="total_timeout")
