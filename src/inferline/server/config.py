"""Server settings, built by the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from inferline.core.errors import InvalidParameterError


@dataclass(frozen=True)
class ServerConfig:
    """How the HTTP layer behaves.

    Attributes:
        api_keys: if any, every route but ``/health`` needs ``Authorization: Bearer <key>``.
        cors_origins: allowed browser origins; empty = CORS off.
        max_body_bytes: larger request bodies get 413.
        log_text: store prompt and output text in the request log (off = counts only).
        drain_timeout_s: on SIGTERM, how long in-flight requests may take to finish.
        served_model_names: names `model` may take (the first one is reported).
    """

    served_model_names: tuple[str, ...] = ("smollm2-135m",)
    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    log_text: bool = True
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.served_model_names:
            raise InvalidParameterError("at least one served model name is needed", "model")
        if self.max_body_bytes < 1024:
            raise InvalidParameterError("max_body_bytes must be at least 1024", "max_body_bytes")
        if any(not key for key in self.api_keys):
            raise InvalidParameterError("API keys must be non-empty", "api_keys")
