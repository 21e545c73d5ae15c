"""Errors raised by inferline.

Hierarchy::

    InferlineError
    ├── InvalidParameterError (ValueError)   bad input; names the field (`param`)
    │   ├── ContextLengthExceededError        prompt (+ max_tokens) over the context window
    │   └── UnknownModelError (also LookupError)
    ├── NotFoundError (LookupError)            a file, batch or other object id that does not exist
    ├── ModelLoadError                         a model file is missing, corrupt or unsupported
    ├── OverloadedError                        the waiting queue is full; retry later
    └── EngineDeadError (RuntimeError)         the engine loop stopped; requests cannot finish

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
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ContextLengthExceededError(InvalidParameterError):
    """The prompt, plus the tokens asked for, does not fit the model's context window."""

    def __init__(self, num_prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
        total = num_prompt_tokens + max_tokens
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {total} tokens ({num_prompt_tokens} in the prompt, {max_tokens} for "
            "the completion). Please reduce the length of the prompt or max_tokens.",
            param="messages" if num_prompt_tokens >= max_model_len else "max_tokens",
        )
        self.num_prompt_tokens = num_prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len


class UnknownModelError(InvalidParameterError, LookupError):
    """No model matches the name, path or directory given."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"Unknown model {name!r}: not a known short name ({', '.join(known)}), "
            "not a .gguf file, and not a Hugging Face directory with config.json.",
            param="model",
        )
        self.name = name


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
