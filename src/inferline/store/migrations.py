"""Schema changes as an append-only list of named functions.

Never edit or reorder a migration that has shipped; add a new one. Applied names are
recorded in ``_migrations``; `migrate` applies the missing ones in order. Tables are declared
with SQLAlchemy Core, so the same migration runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    select,
    text,
)

Migration = Callable[[Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []

_migrations_table = Table(
    "_migrations",
    MetaData(),
    Column("name", String(128), primary_key=True),
    Column("applied_at", Float, nullable=False),
)


def migration(fn: Migration) -> Migration:
    """Registers ``fn`` as the next migration, under its function name."""
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_requests(conn: Connection) -> None:
    """One row per request: what was asked, what came back, and how long it took."""
    requests = Table(
        "requests",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("request_id", String(128), nullable=False),
        Column("created_at", Float, nullable=False),
        Column("model", String(256), nullable=False),
        Column("endpoint", String(64), nullable=False),
        Column("status_code", Integer, nullable=False),
        Column("finish_reason", String(32)),
        Column("error", Text),
        Column("prompt", Text),
        Column("output", Text),
        Column("prompt_tokens", Integer, nullable=False, default=0),
        Column("completion_tokens", Integer, nullable=False, default=0),
        Column("cached_tokens", Integer, nullable=False, default=0),
        Column("queue_time_s", Float),
        Column("ttft_s", Float),
        Column("total_time_s", Float),
        Column("user_id", String(256)),
        Index("ix_requests_created_at", "created_at"),
        Index("ix_requests_request_id", "request_id"),
    )
    requests.create(conn)


@migration
def m002_requests_batch_ids(conn: Connection) -> None:
    """Micro-batched models: the ids of the batches a request's rows ran in ("3,4")."""
    conn.execute(text("ALTER TABLE requests ADD COLUMN batch_ids VARCHAR(256)"))


@migration
def m003_files_and_batches(conn: Connection) -> None:
    """The OpenAI Files and Batches API: files (content on disk), jobs and their lines.

    Each line's result is written as it finishes, so a restarted server resumes a job from
    its pending lines; ``(batch_id, custom_id)`` is unique, so no line is recorded twice.
    """
    metadata = MetaData()
    Table(
        "files",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("filename", String(512), nullable=False),
        Column("purpose", String(32), nullable=False),
        Column("bytes", Integer, nullable=False),
        Column("created_at", Integer, nullable=False),
        Column("path", Text, nullable=False),
        Column("deleted", Integer, nullable=False, server_default="0"),
    )
    Table(
        "batches",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("status", String(16), nullable=False),
        Column("endpoint", String(64), nullable=False),
        Column("input_file_id", String(64), nullable=False),
        Column("completion_window", String(8), nullable=False),
        Column("created_at", Integer, nullable=False),
        Column("expires_at", Integer, nullable=False),
        Column("in_progress_at", Integer),
        Column("finalizing_at", Integer),
        Column("completed_at", Integer),
        Column("failed_at", Integer),
        Column("expired_at", Integer),
        Column("cancelling_at", Integer),
        Column("cancelled_at", Integer),
        Column("output_file_id", String(64)),
        Column("error_file_id", String(64)),
        Column("errors", Text),
        Column("metadata", Text),
        Index("ix_batches_status", "status"),
    )
    Table(
        "batch_lines",
        metadata,
        Column("batch_id", String(64), primary_key=True),
        Column("line", Integer, primary_key=True),
        Column("custom_id", String(512), nullable=False),
        Column("request", Text, nullable=False),
        Column("status_code", Integer),  # null while pending
        Column("response", Text),
        Column("error", Text),
        Column("input_tokens", Integer, nullable=False, server_default="0"),
        Column("cached_tokens", Integer, nullable=False, server_default="0"),
        Column("output_tokens", Integer, nullable=False, server_default="0"),
        Column("finished_at", Float),
        Index("ux_batch_lines_custom_id", "batch_id", "custom_id", unique=True),
        Index("ix_batch_lines_pending", "batch_id", "status_code"),
    )
    metadata.create_all(conn)


@migration
def m004_routes_and_attempts(conn: Connection) -> None:
    """The gateway: which route and target served a request, its cost, and every attempt.

    ``request_attempts`` has one row per try of a request on a target (retries, fallbacks,
    cascade stages, stream continuations), with its tokens and cost, so the cost of a
    failed attempt is never lost.
    """
    for column in (
        "route VARCHAR(256)",
        "target VARCHAR(256)",
        "num_attempts INTEGER NOT NULL DEFAULT 0",
        "fallback_reason VARCHAR(128)",
        "cost_usd FLOAT NOT NULL DEFAULT 0",
    ):
        conn.execute(text(f"ALTER TABLE requests ADD COLUMN {column}"))
    Table(
        "request_attempts",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("request_id", String(128), nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("target", String(256), nullable=False),
        Column("reason", String(64), nullable=False),
        Column("started_at", Float, nullable=False),
        Column("ttft_s", Float),
        Column("duration_s", Float),
        Column("status", String(16), nullable=False),
        Column("error_type", String(64)),
        Column("error", Text),
        Column("prompt_tokens", Integer, nullable=False, default=0),
        Column("completion_tokens", Integer, nullable=False, default=0),
        Column("cost_usd", Float, nullable=False, default=0.0),
        Index("ix_request_attempts_request_id", "request_id"),
        Index("ix_request_attempts_started_at", "started_at"),
    ).create(conn)


@migration
def m005_keys_and_spend(conn: Connection) -> None:
    """Virtual keys (stored as a SHA-256 of the secret, never the secret) and their spend:
    one ledger row per request, written when it is admitted (its reservation) and settled
    when it ends, so a crash leaves the requests in flight visible as unsettled rows."""
    metadata = MetaData()
    Table(
        "api_keys",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("name", String(256), nullable=False),
        Column("key_hash", String(64), nullable=False, unique=True),
        Column("key_hint", String(32), nullable=False),
        Column("routes", Text),  # JSON list; null: every route
        Column("rpm", Integer),
        Column("tpm", Integer),
        Column("max_parallel", Integer),
        Column("budget_usd", Float),
        Column("budget_period", String(8)),
        Column("budget_policy", String(16), nullable=False, server_default="refuse"),
        Column("expires_at", Float),
        Column("revoked_at", Float),
        Column("metadata", Text),  # JSON object
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
    )
    Table(
        "key_spend",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("key_id", String(64), nullable=False),
        Column("request_id", String(128), nullable=False),
        Column("route", String(256), nullable=False),
        Column("created_at", Float, nullable=False),
        Column("reserved_usd", Float, nullable=False),
        Column("status", String(16), nullable=False),  # reserved | settled | interrupted
        Column("settled_at", Float),
        Column("spend_usd", Float),
        Column("prompt_tokens", Integer, nullable=False, server_default="0"),
        Column("cached_tokens", Integer, nullable=False, server_default="0"),
        Column("completion_tokens", Integer, nullable=False, server_default="0"),
        Index("ix_key_spend_key_time", "key_id", "created_at"),
        Index("ux_key_spend_request", "request_id", unique=True),
    )
    metadata.create_all(conn)


@migration
def m006_requests_key_id(conn: Connection) -> None:
    """The virtual key a request came with (its id, never its secret)."""
    conn.execute(text("ALTER TABLE requests ADD COLUMN key_id VARCHAR(64)"))
    conn.execute(text("CREATE INDEX ix_requests_key_id ON requests (key_id)"))


@migration
def m007_attempt_cached_tokens_and_engine_time(conn: Connection) -> None:
    """An attempt's prompt tokens served from a prefix cache and a local engine's time it
    used: the two other things its cost is computed from."""
    for column in ("cached_tokens INTEGER NOT NULL DEFAULT 0", "engine_s FLOAT"):
        conn.execute(text(f"ALTER TABLE request_attempts ADD COLUMN {column}"))


_TRACE_COLUMNS = (
    "trace_id VARCHAR(32)",  # W3C trace context: the client's trace, or a new one
    "span_id VARCHAR(16)",  # this request's span
    "parent_span_id VARCHAR(16)",  # the client's span, when it sent a traceparent
    "task_id VARCHAR(128)",
    "team VARCHAR(128)",  # the key's metadata.team
    "cache VARCHAR(16)",  # hit, semantic-hit, miss (null: no cache on the route)
    "stopped_by VARCHAR(32)",  # budget
    "prompt_id VARCHAR(128)",
    "prompt_version INTEGER",
    "prompt_label VARCHAR(64)",
    "prefill_s FLOAT",
    "decode_s FLOAT",
    "tpot_s FLOAT",
    "preemptions INTEGER NOT NULL DEFAULT 0",
    "tool_calls TEXT",  # JSON: [{"id", "name"}] (arguments only when text is logged)
    "tool_results TEXT",  # JSON: the tool_call_ids whose results the request brought
    "metadata TEXT",  # JSON: the request's metadata
)


@migration
def m008_traces(conn: Connection) -> None:
    """A request's row becomes its trace: trace context, task, team, cache outcome, prompt
    version, engine timings and tool calls, with indexes for the traces API's filters."""
    for column in _TRACE_COLUMNS:
        conn.execute(text(f"ALTER TABLE requests ADD COLUMN {column}"))
    for name, columns in (
        ("ix_requests_route_created", "route, created_at"),
        ("ix_requests_status_created", "status_code, created_at"),
        ("ix_requests_prompt", "prompt_id, prompt_version, created_at"),
        ("ix_requests_task_id", "task_id"),
        ("ix_requests_trace_id", "trace_id"),
    ):
        conn.execute(text(f"CREATE INDEX {name} ON requests ({columns})"))


@migration
def m009_prompts(conn: Connection) -> None:
    """The prompt registry: immutable numbered versions of each prompt, labels that move
    between them (moving one back is the rollback), and every move kept."""
    metadata = MetaData()
    Table(
        "prompt_versions",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("prompt_id", String(128), nullable=False),
        Column("version", Integer, nullable=False),
        Column("created_at", Float, nullable=False),
        Column("body", Text, nullable=False),  # JSON: messages, route/model, params, ...
        Column("body_hash", String(64), nullable=False),
        Column("prefix_tokens", Integer),  # the static prefix its renders share
        Column("warning", Text),
        Column("message", Text),  # what changed, from whoever pushed it
        Index("ux_prompt_versions", "prompt_id", "version", unique=True),
    )
    Table(
        "prompt_labels",
        metadata,
        Column("prompt_id", String(128), primary_key=True),
        Column("label", String(64), primary_key=True),
        Column("version", Integer, nullable=False),
        Column("updated_at", Float, nullable=False),
    )
    Table(
        "prompt_label_moves",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("prompt_id", String(128), nullable=False),
        Column("label", String(64), nullable=False),
        Column("from_version", Integer),
        Column("to_version", Integer, nullable=False),
        Column("moved_at", Float, nullable=False),
        Index("ix_prompt_label_moves", "prompt_id", "moved_at"),
    )
    metadata.create_all(conn)


@migration
def m010_task_outcomes(conn: Connection) -> None:
    """What became of each task (a group of requests serving one job): success, a score, a
    comment, and who said so; the requests themselves are in ``requests`` by task_id."""
    Table(
        "task_outcomes",
        MetaData(),
        Column("task_id", String(128), primary_key=True),
        Column("success", Boolean, nullable=False),
        Column("score", Float),
        Column("comment", Text),
        Column("source", String(32), nullable=False),  # api, or the check that decided
        Column("key_id", String(64)),
        Column("recorded_at", Float, nullable=False),
    ).create(conn)


@migration
def m011_trace_list_indexes(conn: Connection) -> None:
    """Indexes that walk the traces API's equality filters in id order (newest first, a
    page read without sorting every match: ``route = 'chat'``, 40% of a million rows, was a
    sort of 400,000 ids) and one for ``min_latency`` (a threshold few requests pass)."""
    for name, columns in (
        ("ix_requests_route_id", "route, id"),
        ("ix_requests_status_id", "status_code, id"),
        ("ix_requests_team_id", "team, id"),
        ("ix_requests_model_id", "model, id"),
        ("ix_requests_total_time", "total_time_s"),
    ):
        conn.execute(text(f"CREATE INDEX {name} ON requests ({columns})"))


@migration
def m012_checks_and_reviews(conn: Connection) -> None:
    """What a route's checks decided about each request (and every check's score), the
    human-review cases they opened, and a key's role (``reviewer`` keys work the queue)."""
    for column in (
        "decision VARCHAR(32)",
        "decision_check VARCHAR(128)",
        "decision_score FLOAT",
        "review_id VARCHAR(64)",
        "checks TEXT",  # JSON: every check that ran, with its score and verdict
    ):
        conn.execute(text(f"ALTER TABLE requests ADD COLUMN {column}"))
    conn.execute(text("CREATE INDEX ix_requests_decision ON requests (decision, created_at)"))
    conn.execute(text("ALTER TABLE api_keys ADD COLUMN role VARCHAR(16)"))
    Table(
        "reviews",
        MetaData(),
        Column("id", String(64), primary_key=True),
        Column("request_id", String(128), nullable=False),
        Column("trace_id", String(32)),
        Column("route", String(256), nullable=False),
        Column("key_id", String(64)),
        Column("created_at", Float, nullable=False),
        Column("deadline_at", Float, nullable=False),
        Column("on_expiry", String(16), nullable=False),  # abstain | allow
        Column("status", String(16), nullable=False),  # pending|approved|edited|rejected|expired
        Column("check_name", String(128), nullable=False),
        Column("score", Float),
        Column("request", Text, nullable=False),  # JSON: model, messages, tools
        Column("draft", Text, nullable=False),  # JSON: message, finish_reason, usage
        Column("checks", Text, nullable=False),  # JSON: every check that ran
        Column("texts", Text, nullable=False),  # JSON: the route's abstain text, at the time
        Column("result", Text),  # JSON: the message the client gets once decided
        Column("reviewer", String(64)),  # the key id (or "admin") that decided
        Column("comment", Text),
        Column("decided_at", Float),
        Column("webhook_due", Boolean, nullable=False, server_default="0"),
        Column("webhook_attempts", Integer, nullable=False, server_default="0"),
        Column("webhook_next_at", Float),
        Column("webhook_error", Text),
        Index("ix_reviews_status_created", "status", "created_at"),
        Index("ix_reviews_pending_deadline", "status", "deadline_at"),
        Index("ix_reviews_webhook", "webhook_due", "webhook_next_at"),
    ).create(conn)


def migrate(engine: Engine) -> list[str]:
    """Applies missing migrations, each in its own transaction; returns the names applied."""
    _migrations_table.create(engine, checkfirst=True)
    with engine.connect() as conn:
        done = set(conn.scalars(select(_migrations_table.c.name)))
    applied_now = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        with engine.begin() as conn:
            fn(conn)
            conn.execute(_migrations_table.insert().values(name=name, applied_at=time.time()))
        applied_now.append(name)
    return applied_now
