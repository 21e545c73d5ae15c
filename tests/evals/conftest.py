"""A migrated SQLite store per test."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from inferline.store import connect, migrate


@pytest.fixture
def database(tmp_path) -> Engine:  # type: ignore[no-untyped-def]
    """A fresh, migrated SQLite file."""
    engine = connect(f"sqlite:///{tmp_path / 'inferline.db'}")
    migrate(engine)
    return engine
