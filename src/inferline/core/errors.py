"""Errors raised by inferline.

Hierarchy::

    InferlineError
    ├── InvalidParameterError (ValueError)   bad input; names the field (`param`)
    │   ├── ContextLengthExceededError        prompt (+ max_tokens) over the context window
    │   └── UnknownModelError (also LookupError)
    ├── NotFoundError (LookupError)            a file, batch or other object id that does not exist
    ├── ModelLoadError                         a model file is missing, corrupt or unsupported
    ├── OverloadedError                        the waiting queue is full; retry later
    ├── EngineDeadError (RuntimeError)         the engine loop stopped; requests cannot finish
    ├── DeadlineExceededError (TimeoutError)   the request's deadline passed before an answer
    ├── PermissionDeniedError                  the caller's key may not do this (403)
    ├── LimitExceededError                     a key's rate, parallel or budget limit (429)
    └── UpstreamError                          a target (remote server or local engine) failed
        ├── RateLimitedError                   429: retry after ``retry_after_s``
        ├── UpstreamUnavailableError           5xx, connection refused/reset: retryable
        ├── UpstreamTimeoutError               connect / first token / idle / total timeout
        ├── StreamInterruptedError             a stream cut, stalled or malformed mid-way
        ├── ContentFilteredError               the upstream's filter refused the request
        ├── UpstreamConfigError                401/403/404 from the upstream: our config is wrong
        ├── UpstreamRejectedError              a 4xx the request itself caused: not retried
        └── AllTargetsFailedError              a router tried everything it could

Every user-facing error carries the field it is about, so the server can answer an
OpenAI-shaped 4xx naming it.
"""

from __future__ import annotations


class InferlineError(Exception):
    """Base class of every error inferline raises on purpose."""


class InvalidParameterError(InferlineError, ValueError):
    """A request or config value is invalid.

    Args:
        message: what is wrong, with the limit that was crossed.
        param: the name of the offending field (e.g. ``"temperature"``).
        code: a machine-readable kind (default ``invalid_value``; ``unsupported_parameter``
            for a feature not implemented).
    """

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class ContextLengthExceededError(InvalidParameterError):
    """The prompt, plus the tokens asked for, does not fit the model's context window."""

    def __init__(
        self, num_prompt_tokens: int, max_tokens: int, max_model_len: int, message: str = ""
    ) -> None:
        total = num_prompt_tokens + max_tokens
        super().__init__(
            message
            or f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {total} tokens ({num_prompt_tokens} in the prompt, {max_tokens} for "
            "the completion). Please reduce the length of the prompt or max_tokens.",
            param="messages" if num_prompt_tokens >= max_model_len else "max_tokens",
        )
        self.num_prompt_tokens = num_prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len


class UnknownModelError(InvalidParameterError, LookupError):
    """No model matches the name, path or directory given."""

    def __init__(self, name: str, known: list[str], message: str = "") -> None:
        super().__init__(
            message
            or f"Unknown model {name!r}: not a known short name ({', '.join(known)}), "
            "not a .gguf file, and not a Hugging Face directory with config.json.",
            param="model",
            code="model_not_found",
        )
        self.name = name
        self.known = known

    @classmethod
    def not_served(cls, name: str, served: list[str]) -> UnknownModelError:
        """A name that no route or model of this server answers to."""
        message = f"The model {name!r} does not exist. Available: {', '.join(served)}."
        return cls(name, served, message)


class CannotTokenizeError(InvalidParameterError):
    """The model named cannot tokenize here (a remote upstream, a route without a local
    model): a 400 naming ``model``."""

    def __init__(self, model: str, why: str = "") -> None:
        super().__init__(
            f"the model {model!r} cannot tokenize on this server" + (f": {why}" if why else ""),
            param="model",
            code="model_cannot_tokenize",
        )


class NotFoundError(InferlineError, LookupError):
    """An object named by id (a file, a batch) does not exist."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ModelLoadError(InferlineError):
    """A model was found but could not be loaded (missing package, bad file, unsupported)."""


class OverloadedError(InferlineError):
    """The bounded waiting queue is full; the client should retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineDeadError(InferlineError, RuntimeError):
    """The engine loop has stopped; no request can make progress."""


class DeadlineExceededError(InferlineError, TimeoutError):
    """The request's deadline (route ``deadline_s`` or the client's timeout header) passed."""


class UpstreamError(InferlineError):
    """A target failed to answer a request.

    Attributes:
        target: the model entry that failed (its config name, never its URL or key).
        status_code: the HTTP status to report (the upstream's own when it sent one).
        code: a stable machine-readable kind (``rate_limited``, ``upstream_timeout``...).
        retryable: the same request may succeed if tried again, here or on another target.
        retry_after_s: the upstream asked to wait this long before trying it again.
        counts_as_failure: counts toward the target's circuit breaker (a request the client
            got wrong does not).
        retry_here: the same target may continue a stream this error cut (another of its
            replicas answers: a Ray Serve deployment whose replica died).
    """

    retryable = True
    counts_as_failure = True
    retry_here = False
    default_code = "upstream_error"
    default_status = 502

    def __init__(
        self,
        message: str,
        *,
        target: str = "",
        status_code: int | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.target = target
        self.status_code = status_code or self.default_status
        self.code = code or self.default_code
        self.retry_after_s = retry_after_s
        self.param = param


class RateLimitedError(UpstreamError):
    """429 from the upstream (or its quota): retry after ``retry_after_s`` if it fits."""

    default_code = "rate_limited"
    default_status = 429


class UpstreamUnavailableError(UpstreamError):
    """5xx, refused or reset connections, an engine that is down or overloaded."""

    default_code = "upstream_unavailable"
    default_status = 503


class UpstreamTimeoutError(UpstreamError):
    """No connection, first token, next chunk or end within the target's timeouts."""

    default_code = "upstream_timeout"
    default_status = 504


class StreamInterruptedError(UpstreamError):
    """A stream that had started ended without its end: cut, stalled, or malformed."""

    default_code = "stream_interrupted"
    default_status = 502


class ContentFilteredError(UpstreamError):
    """The upstream's content filter refused the request (another target may answer)."""

    retryable = False
    counts_as_failure = False
    default_code = "content_filter"
    default_status = 400


class UpstreamConfigError(UpstreamError):
    """The upstream refused our credentials or does not know the model: a fault of the
    target's config, not of the request; another target may answer, retrying cannot."""

    retryable = False
    default_code = "upstream_misconfigured"
    default_status = 502


class UpstreamRejectedError(UpstreamError):
    """A 4xx caused by the request itself (bad parameter): retrying cannot help."""

    retryable = False
    counts_as_failure = False
    default_code = "invalid_request"
    default_status = 400


class AllTargetsFailedError(UpstreamError):
    """Every attempt a router could make failed; the message lists them."""

    retryable = False
    default_code = "all_targets_failed"


class PermissionDeniedError(InferlineError):
    """The caller's key may not do this (a route it is not allowed, the admin API)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class LimitExceededError(InferlineError):
    """A key's limit refused the request: ``code`` is ``rate_limit_exceeded`` (requests or
    tokens per minute, requests in flight) or ``insufficient_quota`` (its budget);
    ``headers`` are the ``x-ratelimit-*`` headers to send with the 429."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "rate_limit_exceeded",
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retry_after_s = retry_after_s
        self.headers = headers or {}
