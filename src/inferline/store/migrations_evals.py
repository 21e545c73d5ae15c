"""Migrations of the evaluation loop (issue 19): the request a client sent (so a trace can
become a dataset item or be replayed), versioned datasets, experiments with their per-item
results, and judge calibrations. Registered after ``migrations.py``'s own, in order."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

from inferline.store.migrations import migration


@migration
def m013_datasets(conn: Connection) -> None:
    """Datasets as numbered versions over one item table: an item belongs to every version
    from ``added_in`` until ``removed_in`` (so appending a reviewed case is one row, and an
    old version reads back exactly as it was). ``requests.request_body``: the request as
    the client sent it (JSON), kept when text is logged; reviews indexed by decision time
    (reviewed cases join their route's dataset from there)."""
    conn.execute(text("ALTER TABLE requests ADD COLUMN request_body TEXT"))
    # the review pass reads the cases decided since its last pass, every second
    conn.execute(text("CREATE INDEX ix_reviews_decided ON reviews (decided_at)"))
    metadata = MetaData()
    Table(
        "datasets",
        metadata,
        Column("name", String(128), primary_key=True),
        Column("created_at", Float, nullable=False),
        Column("description", Text),
        Column("latest_version", Integer, nullable=False),
    )
    Table(
        "dataset_versions",
        metadata,
        Column("dataset", String(128), primary_key=True),
        Column("version", Integer, primary_key=True),
        Column("created_at", Float, nullable=False),
        Column("source", String(64), nullable=False),  # file | traces | reviews | copy
        Column("note", Text),
        Column("added", Integer, nullable=False),
        Column("removed", Integer, nullable=False),
    )
    Table(
        "dataset_items",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("dataset", String(128), nullable=False),
        Column("item_key", String(128), nullable=False),
        Column("added_in", Integer, nullable=False),
        Column("removed_in", Integer),
        Column("input", Text, nullable=False),  # JSON: messages, variables, or a string
        Column("expected", Text),  # JSON
        Column("metadata", Text, nullable=False),  # JSON object
        Column("source", String(256)),  # trace:<request id> | review:<id> | <file>:<line>
        Index("ux_dataset_items", "dataset", "item_key", "added_in", unique=True),
        Index("ix_dataset_items_live", "dataset", "removed_in", "added_in"),
        Index("ix_dataset_items_source", "source"),
    )
    metadata.create_all(conn)


@migration
def m014_experiments(conn: Connection) -> None:
    """An experiment (a dataset version run on targets, scored) and one row per
    (target, item, repetition): written once, when the item is scored, so a resumed run
    skips exactly the rows that exist. Judge calibrations, with the judge's version."""
    metadata = MetaData()
    Table(
        "experiments",
        metadata,
        Column("id", String(64), primary_key=True),
        Column("name", String(256)),
        Column("dataset", String(128), nullable=False),
        Column("dataset_version", Integer, nullable=False),
        Column("created_at", Float, nullable=False),
        Column("finished_at", Float),
        Column("status", String(16), nullable=False),  # running | done | failed
        Column("config", Text, nullable=False),  # JSON: targets, scorers, repetitions, ...
    )
    Table(
        "experiment_results",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("experiment_id", String(64), nullable=False),
        Column("target", String(256), nullable=False),
        Column("item_key", String(128), nullable=False),
        Column("repetition", Integer, nullable=False),
        Column("created_at", Float, nullable=False),
        Column("request_id", String(128)),
        Column("status_code", Integer, nullable=False),
        Column("error", Text),
        Column("output", Text),
        Column("latency_s", Float),
        Column("cost_usd", Float, nullable=False),
        Column("prompt_tokens", Integer),
        Column("completion_tokens", Integer),
        Column("scores", Text, nullable=False),  # JSON: scorer -> value in [0, 1] (or null)
        Column("scoring_cost_usd", Float, nullable=False),  # judges' requests
        Column("passed", Boolean),  # every scorer passed (None: the request failed)
        Column("confidence", Float),  # mean token logprob, when the target returned them
        Index(
            "ux_experiment_results",
            "experiment_id",
            "target",
            "item_key",
            "repetition",
            unique=True,
        ),  # fmt: skip
    )
    Table(
        "judge_calibrations",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("judge", String(128), nullable=False),  # the rubric prompt's id
        Column("judge_version", Integer),
        Column("route", String(256)),
        Column("created_at", Float, nullable=False),
        Column("labels", String(256), nullable=False),  # dataset@version or a file
        Column("n", Integer, nullable=False),
        Column("agreement", Float, nullable=False),
        Column("kappa", Float),
        Column("baseline_agreement", Float, nullable=False),
        Column("tpr", Float),
        Column("tnr", Float),
        Column("details", Text, nullable=False),  # JSON: threshold, confusion matrix, swaps
        Index("ix_judge_calibrations", "judge", "created_at"),
    )
    metadata.create_all(conn)


@migration
def m015_rollouts(conn: Connection) -> None:
    """Rollouts of a prompt version or a route to a share of live traffic: their state,
    every scored answer of both arms (the evidence), and every decision as an event."""
    metadata = MetaData()
    Table(
        "rollouts",
        metadata,
        Column("name", String(128), primary_key=True),
        Column("kind", String(16), nullable=False),  # prompt | route
        Column("subject", String(256), nullable=False),  # the prompt id, or the route
        Column("label", String(64)),  # the prompt label rolled out
        Column("baseline", String(256), nullable=False),  # a version number, or a route
        Column("candidate", String(256), nullable=False),
        Column("share", Float, nullable=False),
        Column("state", String(16), nullable=False),  # running | promoted | rolled_back
        Column("config", Text, nullable=False),  # JSON: sticky, scorers, SLOs, policy
        Column("created_at", Float, nullable=False),
        Column("decided_at", Float),
    )
    Table(
        "rollout_samples",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("rollout", String(128), nullable=False),
        Column("arm", String(16), nullable=False),  # baseline | candidate
        Column("at", Float, nullable=False),
        Column("request_id", String(128)),
        Column("status_code", Integer, nullable=False),
        Column("latency_s", Float),
        Column("passed", Boolean),  # None: not scored (the request failed)
        Column("scores", Text, nullable=False),  # JSON: scorer -> value
        Index("ix_rollout_samples", "rollout", "arm", "id"),
    )
    Table(
        "rollout_events",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("rollout", String(128), nullable=False),
        Column("at", Float, nullable=False),
        Column("kind", String(32), nullable=False),  # started | promoted | rolled_back | ...
        Column("reason", Text, nullable=False),
        Column("evidence", Text, nullable=False),  # JSON
        Index("ix_rollout_events", "rollout", "at"),
    )
    metadata.create_all(conn)


@migration
def m016_request_rollups(conn: Connection) -> None:
    """Per minute and route: what the dashboard's charts read instead of the raw log
    (counts, sums, and latency / TTFT histograms over fixed edges, so percentiles come
    from a few hundred rows even over a million requests). Written with each batch of log
    rows, in its transaction, by atomic upserts (two servers may share one store)."""
    sums = ("requests", "errors", "successes", "fallbacks", "cache_hits", "prompt_tokens",
            "completion_tokens", "cost_usd", "latency_sum", "ttft_sum", "ttft_n", "tpot_sum",
            "tpot_n")  # fmt: skip
    floats = ("cost_usd", "latency_sum", "ttft_sum", "tpot_sum")
    columns = [Column(name, Float if name in floats else Integer, nullable=False,
                      server_default="0") for name in sums]  # fmt: skip
    # a column per histogram bucket: the 22 of rollups.EDGES
    columns += [Column(f"{h}_h{i}", Integer, nullable=False, server_default="0")
                for h in ("lat", "ttft") for i in range(22)]  # fmt: skip
    Table("request_rollups", MetaData(), Column("minute", Integer, primary_key=True),
          Column("route", String(256), primary_key=True), *columns).create(conn)  # fmt: skip
    _backfill_rollups(conn, sums)


def _backfill_rollups(conn: Connection, sums: tuple[str, ...]) -> None:
    """The log written before m016, rolled up in one SQL pass (frozen here, like the
    schema: the same sums and bucket edges as `rollups.fold` had when m016 was written)."""
    edges = (
        0.005,
        0.01,
        0.02,
        0.05,
        0.1,
        0.2,
        0.35,
        0.5,
        0.75,
        1.0,
        1.5,
        2.0,
        3.0,
        5.0,
        7.5,
        10.0,
        15.0,
        20.0,
        30.0,
        60.0,
        120.0,
    )  # the last bucket is everything above
    ok = "status_code < 400"

    def buckets(column: str, prefix: str) -> list[str]:
        out, low = [], None
        for i in range(22):
            range_ = [f"{column} > {low}"] if low is not None else []
            if i < len(edges):
                range_.append(f"{column} <= {edges[i]}")
                low = edges[i]
            where = " AND ".join([ok, f"{column} IS NOT NULL", *range_])
            out.append(f"SUM(CASE WHEN {where} THEN 1 ELSE 0 END) AS {prefix}_h{i}")
        return out

    values = {
        "requests": "COUNT(*)",
        "errors": "SUM(CASE WHEN status_code >= 400 THEN 1 ELSE 0 END)",
        "successes": f"SUM(CASE WHEN {ok} AND (decision IS NULL OR decision NOT IN "
                     "('abstain', 'block')) THEN 1 ELSE 0 END)",
        "fallbacks": "SUM(CASE WHEN num_attempts > 1 THEN 1 ELSE 0 END)",
        "cache_hits": "SUM(CASE WHEN cache IN ('exact', 'semantic', 'hit') THEN 1 ELSE 0 END)",
        "prompt_tokens": "SUM(prompt_tokens)", "completion_tokens": "SUM(completion_tokens)",
        "cost_usd": "SUM(COALESCE(cost_usd, 0))",
        "latency_sum": f"SUM(CASE WHEN {ok} THEN COALESCE(total_time_s, 0) ELSE 0 END)",
        "ttft_sum": f"SUM(CASE WHEN {ok} THEN COALESCE(ttft_s, 0) ELSE 0 END)",
        "ttft_n": f"SUM(CASE WHEN {ok} AND ttft_s IS NOT NULL THEN 1 ELSE 0 END)",
        "tpot_sum": f"SUM(CASE WHEN {ok} THEN COALESCE(tpot_s, 0) ELSE 0 END)",
        "tpot_n": f"SUM(CASE WHEN {ok} AND tpot_s IS NOT NULL THEN 1 ELSE 0 END)",
    }  # fmt: skip
    assert tuple(values) == sums
    minute = ("CAST(FLOOR(created_at / 60) AS INTEGER)" if conn.dialect.name == "postgresql"
              else "CAST(created_at / 60 AS INTEGER)")  # fmt: skip
    selected = [f"{minute} AS minute", "COALESCE(route, model) AS route",
                *(f"COALESCE({sql}, 0) AS {name}" for name, sql in values.items()),
                *buckets("total_time_s", "lat"), *buckets("ttft_s", "ttft")]  # fmt: skip
    names = ["minute", "route", *sums, *(f"{h}_h{i}" for h in ("lat", "ttft") for i in range(22))]
    conn.execute(text(
        f"INSERT INTO request_rollups ({', '.join(names)}) SELECT {', '.join(selected)} "
        f"FROM requests GROUP BY {minute}, COALESCE(route, model)"
    ))  # fmt: skip
