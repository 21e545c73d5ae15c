"""Where gateway replicas keep what they share: ``state:`` in the config file, or
``serve --redis-url`` / ``--database-url`` (the flags win).

```yaml
state:
  database_url: postgresql+psycopg://inferline@db/inferline   # keys, ledger, reviews, logs
  redis_url: redis://cache:6379/0      # or redis_url_env: NAME (a URL with a password)
  redis_prefix: inferline              # the first part of every Redis key
  lease_s: 30                          # how long a dead replica's holds outlive it
```

Without a Redis URL nothing changes: rate limits, budgets and the response cache live in
the process. With one, every process on the same Redis shares them (`build_shared_state`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from inferline.cli.config_fields import fail, mapping, value

if TYPE_CHECKING:
    from inferline.store import KeyStore
    from inferline.tenants import Tenants
    from inferline.tenants.redis_state import RedisState

_KEYS = {"database_url", "redis_url", "redis_url_env", "redis_prefix", "lease_s"}


@dataclass(frozen=True)
class StateConfig:
    """The ``state:`` section: the database and the Redis every replica shares."""

    database_url: str | None = None
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    redis_prefix: str = "inferline"
    lease_s: float = 30.0

    def __post_init__(self) -> None:
        if self.lease_s <= 0:
            raise fail("state.lease_s", "must be positive")
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise fail("state.redis_url", "expected a redis://, rediss:// or unix:// URL")


def parse_state(raw: Any, environ: Mapping[str, str]) -> StateConfig:
    """Checks the ``state:`` section (absent: nothing shared)."""
    if raw is None:
        return StateConfig()
    entry = mapping(raw, "state", _KEYS)
    url = value(entry, "redis_url", str, "state", None)
    env = value(entry, "redis_url_env", str, "state", None)
    if env is not None:
        if url is not None:
            raise fail("state.redis_url_env", "give redis_url or redis_url_env, not both")
        url = environ.get(env) or None
        if url is None:
            raise fail("state.redis_url_env", f"${env} is not set")
    return StateConfig(
        database_url=value(entry, "database_url", str, "state", None),
        redis_url=url,
        redis_prefix=value(entry, "redis_prefix", str, "state", "inferline"),
        lease_s=value(entry, "lease_s", float, "state", 30.0),
    )


def state_config(args: argparse.Namespace, environ: Mapping[str, str]) -> StateConfig:
    """The file's ``state:`` with the command line's ``--database-url`` / ``--redis-url``
    over it."""
    from inferline.cli.config_file import load_config

    config = load_config(args.config, environ).state if args.config else StateConfig()
    return StateConfig(
        database_url=getattr(args, "database_url", None) or config.database_url,
        redis_url=getattr(args, "redis_url", None) or config.redis_url,
        redis_prefix=config.redis_prefix,
        lease_s=config.lease_s,
    )


def build_shared_state(config: StateConfig) -> RedisState | None:
    """The Redis connection (checked with a PING), or None when none is configured."""
    if config.redis_url is None:
        return None
    from inferline.tenants.redis_state import connect_redis

    return connect_redis(config.redis_url, prefix=config.redis_prefix, lease_s=config.lease_s)


def build_tenants(store: KeyStore, api_keys: tuple[str, ...], shared: RedisState | None) -> Tenants:
    """The keys' limits and budgets: in this process, or in Redis for every replica."""
    from inferline.tenants import Tenants

    if shared is None:
        return Tenants(store, api_keys)
    from inferline.tenants.redis_budget import RedisLedger
    from inferline.tenants.redis_limits import RedisLimits

    limits, ledger = RedisLimits(shared), RedisLedger(shared, store.spent_since)
    return Tenants(store, api_keys, limits=limits, ledger=ledger, renew_every_s=shared.lease_s / 3)
