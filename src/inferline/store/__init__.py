"""Persistent records: the request log (SQLite by default, any SQLAlchemy URL)."""

from inferline.store.db import connect, default_database_url
from inferline.store.migrations import MIGRATIONS, migrate
from inferline.store.request_log import RequestLog, RequestLogWriter, RequestRecord

__all__ = [
    "MIGRATIONS",
    "RequestLog",
    "RequestLogWriter",
    "RequestRecord",
    "connect",
    "default_database_url",
    "migrate",
]
