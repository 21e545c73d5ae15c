"""The connection every gateway process shares state through: one Redis server.

Imported only when a Redis URL is configured (``state.redis_url`` in the config file or
``serve --redis-url``), so a single process never needs the ``redis`` package. Every
counter is changed by a Lua script, which Redis runs atomically, and every script reads
the time from Redis itself (``TIME``), so the processes' clocks never have to agree.

What a process holds (a request in flight, a budget hold) is held under a lease of
``lease_s`` seconds that the process renews while it lives (`Tenants.watch`); a process
that dies stops renewing, and what it held is released when its leases run out.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from inferline.core.errors import OverloadedError

DEFAULT_PREFIX = "inferline"
CONNECT_TIMEOUT_S = 2.0
CALL_TIMEOUT_S = 5.0
DEFAULT_LEASE_S = 30.0


class SharedStateError(OverloadedError):
    """Redis did not answer: the request is refused (503, retry). Limits and budgets fail
    closed, since admitting without them could pass a budget."""


@dataclass
class RedisState:
    """A Redis client (thread-safe, pooled) and how this process names and leases things.

    Attributes:
        client: a ``redis.Redis`` (``decode_responses=True``).
        prefix: the first part of every key (several deployments can share a server).
        lease_s: how long a dead process's holds and in-flight slots outlive it.
        instance: this process (in log lines only).
    """

    client: Any
    prefix: str = DEFAULT_PREFIX
    lease_s: float = DEFAULT_LEASE_S
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        if self.lease_s <= 0:
            raise ValueError(f"lease_s must be positive, got {self.lease_s!r}")

    def key(self, *parts: object) -> str:
        """``prefix:part:part...``."""
        return ":".join([self.prefix, *(str(p) for p in parts)])

    def script(self, source: str) -> Any:
        """A registered Lua script (sent by SHA, loaded on first use)."""
        return self.client.register_script(source)

    def call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Runs ``script``; a Redis failure becomes `SharedStateError`."""
        import redis

        try:
            return script(keys=keys, args=args)
        except redis.RedisError as error:
            raise SharedStateError(f"the shared state (Redis) did not answer: {error}") from error


def connect_redis(
    url: str, *, prefix: str = DEFAULT_PREFIX, lease_s: float = DEFAULT_LEASE_S
) -> RedisState:
    """Connects to ``url`` (``redis://host:port/db``) and checks it answers."""
    try:
        import redis
    except ImportError as error:  # pragma: no cover - an install without the extra
        raise RuntimeError(
            "a Redis URL is configured but the redis package is missing: "
            "pip install 'inferline[redis]'"
        ) from error
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=CALL_TIMEOUT_S,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),  # one retry, not seconds of them
    )
    client.ping()
    return RedisState(client, prefix, lease_s)
