"""Versioned datasets (migration ``m013``): each write makes the next version; an item
belongs to versions ``added_in`` ≤ v < ``removed_in``, so a version reads back exactly as
it was, and appending one reviewed case is one row.

A write either appends (an item whose key exists replaces it) or replaces the whole set (a
re-imported file: items missing from it are removed). An item equal to the live one with
its key is left alone, so writing the same file twice makes no new version.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, Table, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from inferline.core.errors import InvalidParameterError, NotFoundError


@dataclass(frozen=True)
class DatasetItem:
    """One case: the input (chat messages, a prompt's variables, or a string), what is
    expected (optional), free metadata, and where it came from."""

    key: str
    input: Any
    expected: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The item as exported (JSONL line / API object)."""
        return {"id": self.key, "input": self.input, "expected": self.expected,
                "metadata": self.metadata, "source": self.source}  # fmt: skip

    def content(self) -> tuple[str, str, str]:
        """What makes two items with one key the same item."""
        return _dump(self.input), _dump(self.expected), _dump(self.metadata)


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


class DatasetStore:
    """Reads and writes ``datasets``, ``dataset_versions`` and ``dataset_items``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata = MetaData()
        self.datasets = Table("datasets", metadata, autoload_with=engine)
        self.versions = Table("dataset_versions", metadata, autoload_with=engine)
        self.items_table = Table("dataset_items", metadata, autoload_with=engine)

    def write(
        self,
        name: str,
        items: Sequence[DatasetItem],
        *,
        source: str,
        note: str | None = None,
        replace: bool = False,
        description: str | None = None,
    ) -> dict[str, Any]:
        """Writes ``items`` as the next version (``replace``: as the whole dataset); returns
        the version's row (``changed``: False when nothing differed and the latest version
        is returned as it is)."""
        _check(name, items)
        attempts = 12
        for attempt in range(attempts):  # writers racing for one number: the loser reads again
            try:
                row = self._write(name, items, source, note, replace, description)
            except (IntegrityError, OperationalError):  # SQLite: a stale snapshot, busy
                if attempt == attempts - 1:
                    raise
                row = None
            if row is not None:
                return row
            # jittered, growing pause: four writers retrying in lockstep lost 5 times running
            time.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))
        raise RuntimeError(f"could not number a new version of dataset {name!r}")

    def _write(
        self, name: str, items: Sequence[DatasetItem], source: str, note: str | None,
        replace: bool, description: str | None,
    ) -> dict[str, Any] | None:  # fmt: skip
        """One try at writing the next version; None when another writer took its number."""
        with self.engine.begin() as conn:
            latest = self._latest(conn, name, description)
            live = {row.key: row for row in self._live(conn, name, latest)}
            added = [i for i in items if i.key not in live or live[i.key].content() != i.content()]
            wanted = {i.key for i in items}
            gone = [k for k in live if replace and k not in wanted]
            removed = [i.key for i in added if i.key in live] + gone
            if not added and not removed:
                if not latest:
                    self._empty(name)
                return {**self.version(name, latest), "changed": False}
            version = latest + 1
            c = self.datasets.c
            moved = conn.execute(
                update(self.datasets)
                .where(c.name == name, c.latest_version == latest)
                .values(latest_version=version)
            )
            if moved.rowcount != 1:
                return None
            self._remove(conn, name, removed, version)
            rows = [_row(name, item, version) for item in added]
            if rows:
                conn.execute(insert(self.items_table), rows)
            row = {"dataset": name, "version": version, "created_at": time.time(),
                   "source": source, "note": note, "added": len(added),
                   "removed": len(removed)}  # fmt: skip
            conn.execute(insert(self.versions).values(**row))
        return {**row, "changed": True}

    def items(self, name: str, version: int | None = None) -> list[DatasetItem]:
        """The items of a version (the latest by default), in the order they were added."""
        info = self.get(name)
        number = info["latest_version"] if version is None else version
        if not 1 <= number <= info["latest_version"]:
            raise NotFoundError(f"dataset {name!r} has no version {number}", "version")
        with self.engine.connect() as conn:
            return self._live(conn, name, number)

    def get(self, name: str) -> dict[str, Any]:
        """A dataset's row with its versions, oldest first (404 when there is none)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(self.datasets).where(self.datasets.c.name == name)).first()
            if row is None or row.latest_version == 0:
                raise NotFoundError(f"no dataset {name!r}", "dataset")
            v = self.versions.c
            found = conn.execute(
                select(self.versions).where(v.dataset == name).order_by(v.version)
            ).all()
        return {**row._asdict(), "versions": [r._asdict() for r in found]}

    def version(self, name: str, number: int) -> dict[str, Any]:
        """One version's row."""
        for row in self.get(name)["versions"]:
            if row["version"] == number:
                return dict(row)
        raise NotFoundError(f"dataset {name!r} has no version {number}", "version")

    def catalog(self) -> list[dict[str, Any]]:
        """Every dataset with its latest version and item count."""
        i = self.items_table.c
        count = (
            select(func.count())
            .where(i.dataset == self.datasets.c.name, i.removed_in.is_(None))
            .scalar_subquery()
        )
        query = select(self.datasets, count.label("items")).order_by(self.datasets.c.name)
        with self.engine.connect() as conn:
            return [r._asdict() for r in conn.execute(query).all() if r.latest_version > 0]

    def sources_present(self, sources: Sequence[str]) -> set[str]:
        """Which of ``sources`` (``review:<id>``, ``trace:<id>``) some item came from."""
        i = self.items_table.c
        found: set[str] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(sources), 500):
                chunk = list(sources[start : start + 500])
                found.update(conn.scalars(select(i.source).where(i.source.in_(chunk))))
        return found

    def _latest(self, conn: Connection, name: str, description: str | None) -> int:
        c = self.datasets.c
        row = conn.execute(select(c.latest_version).where(c.name == name)).first()
        if row is not None:
            return int(row[0])
        new = {"name": name, "created_at": time.time(), "description": description,
               "latest_version": 0}  # fmt: skip
        conn.execute(insert(self.datasets).values(**new))
        return 0

    def _live(self, conn: Connection, name: str, version: int) -> list[DatasetItem]:
        i = self.items_table.c
        query = (
            select(self.items_table)
            .where(
                i.dataset == name,
                i.added_in <= version,
                or_(i.removed_in.is_(None), i.removed_in > version),
            )  # fmt: skip
            .order_by(i.id)
        )
        return [_item(r._asdict()) for r in conn.execute(query).all()]

    def _remove(self, conn: Connection, name: str, keys: list[str], version: int) -> None:
        i = self.items_table.c
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            conn.execute(
                update(self.items_table)
                .where(and_(i.dataset == name, i.item_key.in_(chunk), i.removed_in.is_(None)))
                .values(removed_in=version)
            )

    def _empty(self, name: str) -> None:
        raise InvalidParameterError(f"dataset {name!r} would have no items", "items")


def _check(name: str, items: Sequence[DatasetItem]) -> None:
    if not name or len(name) > 128:
        raise InvalidParameterError("a dataset name has 1 to 128 characters", "name")
    seen: set[str] = set()
    for item in items:
        if item.key in seen:
            raise InvalidParameterError(f"item id {item.key!r} appears twice", "id")
        seen.add(item.key)


def _row(name: str, item: DatasetItem, version: int) -> dict[str, Any]:
    return {"dataset": name, "item_key": item.key, "added_in": version, "removed_in": None,
            "input": _dump(item.input), "expected": _dump(item.expected),
            "metadata": _dump(item.metadata), "source": item.source}  # fmt: skip


def _item(row: dict[str, Any]) -> DatasetItem:
    return DatasetItem(
        key=row["item_key"], input=json.loads(row["input"]),
        expected=json.loads(row["expected"]) if row["expected"] else None,
        metadata=json.loads(row["metadata"]), source=row["source"],
    )  # fmt: skip
