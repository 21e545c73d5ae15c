"""Stored Responses API responses (migration ``m017``). A response is written when it is
created (background) or finished (``store: true``), and updated by conditional UPDATEs on
its status, so a cancel and a finish cannot both win."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Engine, MetaData, Table, delete, insert, select, update

from inferline.core.errors import NotFoundError

ACTIVE = ("queued", "in_progress")  # a background response not yet decided


class ResponseStore:
    """Reads and writes ``responses``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.table = Table("responses", MetaData(), autoload_with=engine)

    def put(
        self,
        response: dict[str, Any],
        *,
        request: dict[str, Any],
        input_items: list[dict[str, Any]],
        conversation: list[dict[str, Any]] | None,
        key_id: str | None,
    ) -> None:
        """Writes a new response (its id is the response's)."""
        now = time.time()
        values = {
            "id": response["id"], "created_at": now, "updated_at": now,
            "status": response["status"], "key_id": key_id,
            "background": "1" if response.get("background") else "0",
            "previous_response_id": response.get("previous_response_id"),
            "request": json.dumps(request), "input_items": json.dumps(input_items),
            "conversation": json.dumps(conversation) if conversation is not None else None,
            "response": json.dumps(response),
        }  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(insert(self.table).values(**values))

    def finish(
        self,
        response: dict[str, Any],
        conversation: list[dict[str, Any]] | None,
        *,
        only_if: tuple[str, ...] = ACTIVE,
    ) -> bool:
        """Records a background response's outcome unless it was decided meanwhile (a
        cancel); True when written."""
        c = self.table.c
        values = {
            "status": response["status"],
            "updated_at": time.time(),
            "response": json.dumps(response),
            "conversation": json.dumps(conversation) if conversation is not None else None,
        }
        query = update(self.table).where(c.id == response["id"], c.status.in_(only_if))
        with self.engine.begin() as conn:
            return conn.execute(query.values(**values)).rowcount == 1

    def get(self, response_id: str, key_id: str | None, *, is_admin: bool) -> dict[str, Any]:
        """The stored row (decoded), if the caller may see it; else ``NotFoundError`` (a
        response of another key is not found, not forbidden: its existence is not told)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(self.table).where(self.table.c.id == response_id)).first()
        if row is None or (not is_admin and row.key_id != key_id):
            raise NotFoundError(f"no response {response_id!r}", "response_id")
        return {
            **row._asdict(),
            "request": json.loads(row.request),
            "input_items": json.loads(row.input_items),
            "conversation": json.loads(row.conversation) if row.conversation else None,
            "response": json.loads(row.response),
        }

    def delete(self, response_id: str, key_id: str | None, *, is_admin: bool) -> None:
        """Deletes a stored response (``NotFoundError`` as ``get``)."""
        self.get(response_id, key_id, is_admin=is_admin)
        with self.engine.begin() as conn:
            conn.execute(delete(self.table).where(self.table.c.id == response_id))

    def active_background(self) -> list[dict[str, Any]]:
        """Background responses not yet decided (at start: those a crash interrupted)."""
        c = self.table.c
        query = select(c.id).where(c.status.in_(ACTIVE), c.background == "1")
        with self.engine.connect() as conn:
            ids = list(conn.scalars(query.order_by(c.created_at)))
        return [self.get(i, None, is_admin=True) for i in ids]
