"""Settings of a dynamic batcher, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from inferline.core.errors import InvalidParameterError


@dataclass(frozen=True)
class BatcherConfig:
    """How one model's requests are grouped.

    Attributes:
        max_batch_size: rows per model call, never exceeded (a request's own rows count;
            a larger request is split across consecutive batches).
        max_wait_ms: the longest the first request of a batch waits for company.
        max_queue_rows: rows that may wait; beyond, `submit` raises `OverloadedError`.
        adaptive: when requests arrive further apart than ``max_wait_ms``, a lone request
            does not wait at all.
    """

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue_rows: int = 4096
    adaptive: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise InvalidParameterError("max_batch_size must be at least 1", "max_batch_size")
        if self.max_wait_ms < 0:
            raise InvalidParameterError("max_wait_ms must not be negative", "max_wait_ms")
        if self.max_queue_rows < self.max_batch_size:
            raise InvalidParameterError(
                "max_queue_rows must hold at least one full batch", "max_queue_rows"
            )
