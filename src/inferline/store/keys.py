"""Virtual keys and their spend ledger (tables from migration ``m005``).

A key's secret is shown once, when it is created, and stored only as its SHA-256; a
lookup hashes the presented secret. Each request of a key has one ledger row: inserted when
it is admitted (``reserved``, with the amount reserved), settled when it ends (``spend_usd``
from its attempts). Rows still ``reserved`` at start-up belong to requests that were in
flight when the process died: `interrupt_unsettled` marks them ``interrupted``, charged at
what they had reserved, and returns them so they can be reported.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Integer, MetaData, Table, case, cast, func, insert, select, update

SECRET_PREFIX = "sk-inf-"


def hash_secret(secret: str) -> str:
    """The stored form of a key's secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    """A new key secret (``sk-inf-`` and 43 URL-safe characters: 256 random bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hint(secret: str) -> str:
    """What identifies a secret to a person without revealing it: ``sk-inf-abcd...wxyz``."""
    return f"{secret[: len(SECRET_PREFIX) + 4]}...{secret[-4:]}"


@dataclass(frozen=True)
class SpendRow:
    """One request's spend as the ledger keeps it."""

    key_id: str
    request_id: str
    route: str
    reserved_usd: float
    status: str
    spend_usd: float | None = None


_JSON_FIELDS = ("routes", "metadata")


class KeyStore:
    """Reads and writes ``api_keys`` and ``key_spend``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        meta = MetaData()
        self.keys = Table("api_keys", meta, autoload_with=engine)
        self.spend = Table("key_spend", meta, autoload_with=engine)

    # ---- keys --------------------------------------------------------------------------

    def create(self, fields: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """A new key with ``fields`` (name, routes, limits, budget...); returns its row and
        its secret (the only time the secret exists outside the client)."""
        secret = new_secret()
        now = time.time()
        row = {
            **fields,
            "id": f"key_{uuid.uuid4().hex[:24]}",
            "key_hash": hash_secret(secret),
            "key_hint": hint(secret),
            "created_at": now,
            "updated_at": now,
        }
        with self.engine.begin() as conn:
            conn.execute(insert(self.keys).values(**_encoded(row)))
        return self.get(row["id"]) or row, secret

    def get(self, key_id: str) -> dict[str, Any] | None:
        """One key's row (without its hash), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(self.keys).where(self.keys.c.id == key_id)).first()
        return _decoded(dict(row._mapping)) if row else None

    def all(self) -> list[dict[str, Any]]:
        """Every key, newest first (revoked ones included)."""
        query = select(self.keys).order_by(self.keys.c.created_at.desc())
        with self.engine.connect() as conn:
            return [_decoded(dict(r._mapping)) for r in conn.execute(query)]

    def rows_with_hashes(self) -> list[dict[str, Any]]:
        """Every key with its hash (for the in-memory registry of the server)."""
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(select(self.keys))]
        return [_decoded(r, keep_hash=True) for r in rows]

    def version(self) -> tuple[float, int]:
        """(latest change, number of keys): cheap to poll for changes made elsewhere."""
        c = self.keys.c
        query = select(func.coalesce(func.max(c.updated_at), 0.0), func.count())
        with self.engine.connect() as conn:
            latest, count = conn.execute(query).one()
        return float(latest), int(count)

    def update(self, key_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Changes some fields of a key; returns the new row (None if unknown)."""
        values = _encoded({**fields, "updated_at": time.time()})
        with self.engine.begin() as conn:
            found = conn.execute(
                update(self.keys).where(self.keys.c.id == key_id).values(**values)
            ).rowcount
        return self.get(key_id) if found else None

    def revoke(self, key_id: str) -> dict[str, Any] | None:
        """Revokes a key at once (its row stays, for its spend history)."""
        return self.update(key_id, {"revoked_at": time.time()})

    # ---- spend -------------------------------------------------------------------------

    def reserve(self, key_id: str, request_id: str, route: str, reserved_usd: float) -> None:
        """Records an admitted request and what it reserved (before it runs)."""
        row = {
            "key_id": key_id,
            "request_id": request_id,
            "route": route,
            "created_at": time.time(),
            "reserved_usd": reserved_usd,
            "status": "reserved",
        }
        with self.engine.begin() as conn:
            conn.execute(insert(self.spend).values(**row))

    def settle(
        self,
        request_id: str,
        spend_usd: float,
        prompt_tokens: int = 0,
        cached_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> bool:
        """Records what a request really cost; a row is settled once."""
        query = (
            update(self.spend)
            .where(self.spend.c.request_id == request_id, self.spend.c.status == "reserved")
            .values(
                status="settled",
                settled_at=time.time(),
                spend_usd=spend_usd,
                prompt_tokens=prompt_tokens,
                cached_tokens=cached_tokens,
                completion_tokens=completion_tokens,
            )
        )
        with self.engine.begin() as conn:
            return bool(conn.execute(query).rowcount)

    def interrupt_unsettled(
        self, keep: Callable[[list[str]], set[str]] | None = None
    ) -> list[SpendRow]:
        """Marks the rows of requests in flight at a crash ``interrupted``, charged at their
        reservation; returns them (to report). ``keep`` names, of the unsettled request ids,
        those still running in a living process (gateway replicas sharing the database):
        their rows are left alone. Only rows read here are changed, and only while still
        ``reserved``, so a row written or settled meanwhile is never interrupted."""
        c = self.spend.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(self.spend).where(c.status == "reserved")).all()
        alive = keep([r.request_id for r in rows]) if keep is not None and rows else set()
        rows = [r for r in rows if r.request_id not in alive]
        changed: set[str] = set()
        with self.engine.begin() as conn:
            for start in range(0, len(rows), 500):
                ids = [r.request_id for r in rows[start : start + 500]]
                where = (c.status == "reserved", c.request_id.in_(ids))
                changed |= set(conn.execute(select(c.request_id).where(*where)).scalars())
                conn.execute(
                    update(self.spend)
                    .where(*where)
                    .values(status="interrupted", spend_usd=c.reserved_usd, settled_at=time.time())
                )
        return [
            SpendRow(r.key_id, r.request_id, r.route, r.reserved_usd, "interrupted", r.reserved_usd)
            for r in rows
            if r.request_id in changed
        ]

    def spent_since(self, key_id: str, since: float) -> float:
        """What a key's finished requests cost since ``since`` (epoch seconds)."""
        c = self.spend.c
        query = select(func.coalesce(func.sum(c.spend_usd), 0.0)).where(
            c.key_id == key_id, c.status != "reserved", c.created_at >= since
        )
        with self.engine.connect() as conn:
            return float(conn.execute(query).scalar_one())

    def usage(self, key_id: str, since: float) -> list[dict[str, Any]]:
        """Spend, what is reserved now, tokens and requests by UTC day and route since
        ``since`` (``interrupted``: requests in flight at a crash, charged as reserved)."""
        c = self.spend.c
        day = cast(c.created_at / 86400, Integer) * 86400
        query = (
            select(
                day.label("day"),
                c.route,
                func.count().label("requests"),
                func.coalesce(func.sum(c.spend_usd), 0.0).label("spend_usd"),
                func.sum(case((c.status == "reserved", c.reserved_usd), else_=0.0)).label(
                    "reserved_usd"
                ),
                func.sum(c.prompt_tokens).label("prompt_tokens"),
                func.sum(c.cached_tokens).label("cached_tokens"),
                func.sum(c.completion_tokens).label("completion_tokens"),
                func.sum(case((c.status == "interrupted", 1), else_=0)).label("interrupted"),
            )
            .where(c.key_id == key_id, c.created_at >= since)
            .group_by(day, c.route)
            .order_by(day, c.route)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]


def _encoded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if k in _JSON_FIELDS and v is not None else v for k, v in row.items()}


def _decoded(row: dict[str, Any], keep_hash: bool = False) -> dict[str, Any]:
    for key in _JSON_FIELDS:
        if row.get(key) is not None:
            row[key] = json.loads(row[key])
    if not keep_hash:
        row.pop("key_hash", None)
    return row
