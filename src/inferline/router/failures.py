"""How the router reads a target's failure: the client's fault or the target's, worth a
retry or not, counted against the target or not, and the error when nothing worked."""

from __future__ import annotations

from inferline.core.errors import (
    AllTargetsFailedError,
    ContentFilteredError,
    ContextLengthExceededError,
    DeadlineExceededError,
    EngineDeadError,
    InvalidParameterError,
    OverloadedError,
    RateLimitedError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
)
from inferline.core.outputs import RouteReport


def deadline(requested: float | None, route_s: float | None, now: float) -> float | None:
    """The earlier of the client's deadline and the route's (``time.monotonic()``)."""
    candidates = [d for d in (requested, None if route_s is None else now + route_s) if d]
    return min(candidates) if candidates else None


def is_clients_fault(error: BaseException) -> bool:
    """An error no other target would avoid: the request itself is wrong."""
    if isinstance(error, ContextLengthExceededError | ContentFilteredError):
        return False  # another target may have a longer window, or another filter
    return isinstance(error, InvalidParameterError | UpstreamRejectedError)


def is_retryable(error: BaseException) -> bool:
    """Worth trying the same target again (a timeout is not: a target that did not answer
    in time is passed over at once, rather than waited for again)."""
    if isinstance(error, UpstreamTimeoutError):
        return False
    if isinstance(error, UpstreamError):
        return error.retryable
    return isinstance(error, OverloadedError)


def counts_as_failure(error: BaseException) -> bool:
    """Whether the error says something about the target's health (breaker, error rate)."""
    if isinstance(error, UpstreamError):
        return error.counts_as_failure
    # a full local queue is load, not failure (the router sees the queue anyway); an engine
    # that died, or a bug in a target, is
    return not isinstance(error, InvalidParameterError | DeadlineExceededError | OverloadedError)


def error_type(error: BaseException) -> str:
    """A short, stable name of the error's kind (attempt records, headers, metrics)."""
    if isinstance(error, UpstreamError):
        return error.code
    if isinstance(error, ContextLengthExceededError):
        return "context_length_exceeded"
    return {
        DeadlineExceededError: "deadline_exceeded",
        EngineDeadError: "engine_dead",
        OverloadedError: "overloaded",
        InvalidParameterError: "invalid_request",
    }.get(type(error), type(error).__name__)


def describe(error: BaseException | None) -> str:
    """The error's kind and the start of its message."""
    if error is None:
        return "no target available"
    return f"{error_type(error)}: {str(error)[:200]}"


def exhausted_error(
    route: str,
    report: RouteReport,
    errors: list[Exception],
    *,
    single_target: bool,
    retry_after_s: float | None,
) -> Exception:
    """The error of a request that no target answered, before anything was sent.

    A local engine alone behind its route is transparent (its own error: a full queue's 503
    with its Retry-After, a dead engine's 503 ``engine_dead``, which batch jobs wait out); a
    prompt no target could take is the client's to fix (its 400); when every attempt was
    rate limited, a 429 with the shortest Retry-After; otherwise a 503 (code
    ``all_targets_failed``) listing every attempt.
    """
    if single_target and len(errors) == 1 and not isinstance(errors[0], UpstreamError):
        return errors[0]
    for kind in (ContextLengthExceededError, ContentFilteredError):
        if errors and all(isinstance(e, kind) for e in errors):
            return errors[-1]
    summary = "; ".join(f"{a.target}: {a.error_type or a.status}" for a in report.attempts)
    status = 503
    limits = [e for e in errors if isinstance(e, RateLimitedError)]
    if errors and len(limits) == len(errors):
        status = 429
        retry_after_s = min(e.retry_after_s or 1.0 for e in limits)
    return AllTargetsFailedError(
        f"route {route!r}: every target failed ({summary or 'none available'})",
        status_code=status,
        retry_after_s=retry_after_s,
    )
