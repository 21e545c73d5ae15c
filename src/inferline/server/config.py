"""Server settings, built by the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from inferline.core.errors import InvalidParameterError


@dataclass(frozen=True)
class ServerConfig:
    """How the HTTP layer behaves.

    Attributes:
        api_keys: if any, every route but ``/health`` needs ``Authorization: Bearer <key>``;
            these keys are also the admin keys (``/admin/*``).
        cors_origins: allowed browser origins; empty = CORS off.
        max_body_bytes: larger request bodies get 413.
        max_file_bytes: larger uploads to ``/v1/files`` get 413.
        log_text: store prompt and output text in the request log (off = counts only).
        drain_timeout_s: on SIGTERM, how long in-flight requests may take to finish.
    """

    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    max_file_bytes: int = 200 * 1024 * 1024
    log_text: bool = True
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise InvalidParameterError("max_body_bytes must be at least 1024", "max_body_bytes")
        if self.max_file_bytes < self.max_body_bytes:
            raise InvalidParameterError(
                "max_file_bytes must be at least max_body_bytes", "max_file_bytes"
            )
        if any(not key for key in self.api_keys):
            raise InvalidParameterError("API keys must be non-empty", "api_keys")
