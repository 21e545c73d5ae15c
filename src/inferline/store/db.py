"""Database connections through SQLAlchemy (SQLite file by default, PostgreSQL by URL)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event


def default_database_url(data_dir: Path) -> str:
    """``sqlite:///<data_dir>/inferline.db``."""
    return f"sqlite:///{data_dir / 'inferline.db'}"


def connect(url: str) -> Engine:
    """An SQLAlchemy engine for ``url``; SQLite gets WAL mode and a busy timeout.

    ``postgresql://`` URLs use psycopg 3 (``pip install inferline[postgres]``).
    """
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _configure_sqlite)
    return engine


def _configure_sqlite(connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (inferline logs) never block writers
    # with WAL, NORMAL keeps every commit through a crash of the process (kill -9); only a
    # power loss may lose the last ones. FULL fsynced each commit: 5 ms of wall time each.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
