"""The prompt registry's tables (migration ``m009``): versions, labels and label moves.

A version is immutable once written: its body (messages, route or model, parameters) is
stored as canonical JSON with its hash, numbered 1, 2, ... per prompt. Writing a body equal
to the latest version's returns that version instead of a new one, so pushing the same file
twice changes nothing. A label names one version and moves; each move is kept.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from sqlalchemy import Engine, MetaData, Table, case, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from inferline.core.errors import NotFoundError


def canonical(body: dict[str, Any]) -> str:
    """The JSON a version is stored (and compared) as."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class PromptStore:
    """Reads and writes ``prompt_versions``, ``prompt_labels`` and ``prompt_label_moves``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata = MetaData()
        self.versions = Table("prompt_versions", metadata, autoload_with=engine)
        self.labels = Table("prompt_labels", metadata, autoload_with=engine)
        self.moves = Table("prompt_label_moves", metadata, autoload_with=engine)
        self.requests = Table("requests", metadata, autoload_with=engine)

    def add_version(
        self,
        prompt_id: str,
        body: dict[str, Any],
        *,
        prefix_tokens: int | None = None,
        warning: str | None = None,
        message: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Writes ``body`` as the next version; (the version, True), or (the latest, False)
        when ``body`` equals it."""
        text = canonical(body)
        digest = hashlib.sha256(text.encode()).hexdigest()
        for _ in range(3):  # two writers racing for one number: the loser tries the next
            latest = self.version(prompt_id)
            if latest is not None and latest["body_hash"] == digest:
                return latest, False
            row = {
                "prompt_id": prompt_id,
                "version": (latest["version"] if latest else 0) + 1,
                "created_at": time.time(),
                "body": text,
                "body_hash": digest,
                "prefix_tokens": prefix_tokens,
                "warning": warning,
                "message": message,
            }
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(self.versions).values(**row))
            except IntegrityError:
                continue
            return _decoded(row), True
        raise RuntimeError(f"could not number a new version of {prompt_id!r}")

    def version(self, prompt_id: str, version: int | None = None) -> dict[str, Any] | None:
        """One version (the latest when ``version`` is None), or None."""
        c = self.versions.c
        query = select(self.versions).where(c.prompt_id == prompt_id)
        if version is None:
            query = query.order_by(c.version.desc()).limit(1)
        else:
            query = query.where(c.version == version)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _decoded(dict(row._mapping))

    def history(self, prompt_id: str) -> list[dict[str, Any]]:
        """Every version of a prompt, oldest first."""
        c = self.versions.c
        query = select(self.versions).where(c.prompt_id == prompt_id).order_by(c.version)
        with self.engine.connect() as conn:
            return [_decoded(dict(row._mapping)) for row in conn.execute(query)]

    def label_map(self, prompt_id: str) -> dict[str, int]:
        """``{label: version}`` of a prompt."""
        c = self.labels.c
        query = select(c.label, c.version).where(c.prompt_id == prompt_id)
        with self.engine.connect() as conn:
            return {row.label: row.version for row in conn.execute(query)}

    def move_label(self, prompt_id: str, label: str, version: int) -> int | None:
        """Points ``label`` at ``version`` (which must exist); returns where it pointed."""
        if self.version(prompt_id, version) is None:
            raise NotFoundError(f"prompt {prompt_id!r} has no version {version}", "version")
        now = time.time()
        c = self.labels.c
        with self.engine.begin() as conn:
            where = (c.prompt_id == prompt_id) & (c.label == label)
            before = conn.execute(select(c.version).where(where)).scalar()
            values = {"version": version, "updated_at": now}
            if before is None:
                conn.execute(insert(self.labels).values(prompt_id=prompt_id, label=label, **values))
            else:
                conn.execute(update(self.labels).where(where).values(**values))
            move = {"prompt_id": prompt_id, "label": label, "from_version": before}
            conn.execute(insert(self.moves).values(**move, to_version=version, moved_at=now))
        return before

    def label_moves(self, prompt_id: str) -> list[dict[str, Any]]:
        """Every label move of a prompt, oldest first."""
        c = self.moves.c
        query = select(self.moves).where(c.prompt_id == prompt_id).order_by(c.id)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def usage(self, prompt_id: str) -> dict[int, dict[str, Any]]:
        """Per version, from the request log: requests, errors, mean latency, cost, and the
        prefix-cache hit rate (cached prompt tokens over prompt tokens) the engine measured."""
        c = self.requests.c
        query = (
            select(
                c.prompt_version, func.count().label("requests"),
                func.sum(case((c.status_code >= 400, 1), else_=0)).label("errors"),
                func.avg(c.total_time_s).label("mean_latency_s"),
                func.sum(c.cost_usd).label("cost_usd"),
                func.sum(c.prompt_tokens).label("prompt_tokens"),
                func.sum(c.cached_tokens).label("cached_tokens"),
            )
            .where(c.prompt_id == prompt_id)
            .group_by(c.prompt_version)
        )  # fmt: skip
        with self.engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
        return {
            row.pop("prompt_version"): {
                **row,
                "prefix_cache_hit_rate": (
                    row["cached_tokens"] / row["prompt_tokens"] if row["prompt_tokens"] else None
                ),
            }
            for row in rows
        }

    def prompts(self) -> list[dict[str, Any]]:
        """Each prompt: its id, latest version, when that was written, and its labels."""
        c = self.versions.c
        query = (
            select(c.prompt_id, func.max(c.version).label("latest"),
                   func.max(c.created_at).label("updated_at"))
            .group_by(c.prompt_id).order_by(c.prompt_id)
        )  # fmt: skip
        with self.engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
        return [{**row, "labels": self.label_map(row["prompt_id"])} for row in rows]


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "body": json.loads(row["body"])}
