"""The request log, traces, prompts, tasks and retention on a real PostgreSQL server
(started here from the machine's binaries; skipped where there are none)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from inferline.prompts import PromptRegistry, PromptSpec
from inferline.store import AttemptRecord, RequestLog, RequestRecord, connect, migrate
from inferline.store.prompts import PromptStore
from inferline.store.retention import prune_log
from inferline.store.tasks import TaskStore
from inferline.store.traces import TraceFilter, TraceStore
from tests.postgres_server import BINARIES, running_postgres

pytest.importorskip("psycopg")
pytestmark = pytest.mark.skipif(not BINARIES, reason="no PostgreSQL binaries on this machine")


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with running_postgres() as url:
        yield url


def test_the_stores_work_on_postgresql(database_url: str) -> None:
    engine = connect(database_url)
    assert migrate(engine) and migrate(engine) == []
    log = RequestLog(engine)
    now = time.time()
    records = [
        RequestRecord(f"r{i}", now - 100 + i, "m", "/v1/chat/completions",
                      500 if i == 3 else 200, route="bot", task_id="t1" if i < 3 else None,
                      prompt_id="p", prompt_version=1, prompt_tokens=10, cached_tokens=5,
                      total_time_s=0.5, cost_usd=0.01, output=f"answer {i}")
        for i in range(6)
    ]  # fmt: skip
    log.insert_many(records, [AttemptRecord(f"r{i}", 1, "t", "first", now, "ok")
                              for i in range(6)])  # fmt: skip
    traces = TraceStore(engine)
    page, more = traces.list(TraceFilter(route="bot", limit=4))
    assert [t["id"] for t in page] == ["r5", "r4", "r3", "r2"] and more
    assert [t["id"] for t in traces.list(TraceFilter(status="error"))[0]] == ["r3"]
    assert [t["id"] for t in traces.list(TraceFilter(since=now - 97.5))[0]] == ["r5", "r4", "r3"]
    assert traces.list(TraceFilter(text="answer 1"))[0][0]["id"] == "r1"
    assert traces.get("r2")["attempts"][0]["target"] == "t"  # type: ignore[index]
    registry = PromptRegistry(PromptStore(engine))
    spec = PromptSpec.model_validate(
        {"id": "p", "messages": [{"role": "user", "content": "{{ q }}"}], "labels": ["prod"]}
    )
    assert registry.push(spec)["version"] == 1 and registry.push(spec)["created"] is False
    assert registry.resolve("p", "prod", {"q": "hi"}).messages[0]["content"] == "hi"
    assert registry.store.usage("p")[1]["prefix_cache_hit_rate"] == 0.5
    tasks = TaskStore(engine)
    tasks.set_outcome("t1", True)
    assert tasks.task("t1")["num_requests"] == 3  # type: ignore[index]
    assert tasks.stats()["succeeded"] == 1
    assert prune_log(engine, max_rows=2).requests == 4
