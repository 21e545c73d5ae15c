"""Persistent records: the request log and the batch jobs (SQLite by default, any
SQLAlchemy URL)."""

from inferline.store import (
    migrations_api,  # noqa: F401  (registers m017 onwards)
    migrations_evals,  # noqa: F401  (registers m013 onwards)
)
from inferline.store.db import connect, default_database_url
from inferline.store.jobs import JobStore
from inferline.store.keys import KeyStore
from inferline.store.migrations import MIGRATIONS, migrate
from inferline.store.request_log import AttemptRecord, RequestLog, RequestLogWriter, RequestRecord

__all__ = [
    "MIGRATIONS",
    "AttemptRecord",
    "JobStore",
    "KeyStore",
    "RequestLog",
    "RequestLogWriter",
    "RequestRecord",
    "connect",
    "default_database_url",
    "migrate",
]
