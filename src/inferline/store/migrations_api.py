"""Migrations of the APIs beside Chat Completions (issue 22): stored Responses API
responses, so a client continues a conversation by ``previous_response_id`` and polls a
background response. Registered after ``migrations_evals.py``'s, in order."""

from __future__ import annotations

from sqlalchemy import Column, Connection, Float, Index, MetaData, String, Table, Text

from inferline.store import migrations_evals  # noqa: F401  (m013-m016 are registered first)
from inferline.store.migrations import migration


@migration
def m017_responses(conn: Connection) -> None:
    """``responses``: one row per stored response: the response object as last returned,
    the conversation up to and including it (chat messages, without instructions), the
    request as sent (a background response is run again from it after a crash) and the key
    that created it (only that key, or an admin, may read it)."""
    Table(
        "responses",
        MetaData(),
        Column("id", String(64), primary_key=True),
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
        Column("status", String(16), nullable=False),
        Column("key_id", String(64)),
        Column("background", String(1), nullable=False, server_default="0"),
        Column("previous_response_id", String(64)),
        Column("request", Text, nullable=False),  # JSON: the body as sent
        Column("input_items", Text, nullable=False),  # JSON: the new turn's input items
        Column("conversation", Text),  # JSON: chat messages of every turn up to this one
        Column("response", Text, nullable=False),  # JSON: the response object
        Index("ix_responses_status", "status"),
    ).create(conn)
