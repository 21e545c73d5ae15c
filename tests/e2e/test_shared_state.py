"""Two gateway replicas: two real `inferline serve` processes on one database (a real
PostgreSQL server, then one SQLite file) and one real Redis (servers started here), our
fake upstream as the only model. The same key hammers both at once: its budget, rpm and
max_parallel hold across them, an answer cached by one is a hit in the other, a review
held by one is decided through the other, and the holds of a replica killed with -9 are
charged by the survivor."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text

from inferline.bench.fake_upstream import FakeUpstreamHandle
from tests.e2e.conftest import ServerProcess, start_server, stop_server
from tests.postgres_server import running_postgres
from tests.redis_server import running_redis

pytestmark = pytest.mark.e2e
ADMIN = "e2e-admin-key"
TOKENS = 16  # per request; at 1 USD per output token a request costs 16 USD
LEASE_S = 3.0
REFUND = {"kind": "tool_call", "name": "refund", "arguments": '{"order": 7}'}
TOOLS: Any = [{"type": "function", "function": {"name": "refund", "parameters": {}}}]


def config(upstream: FakeUpstreamHandle, redis_url: str, database_url: str) -> str:
    price = "price: {input_per_mtok: 0, output_per_mtok: 1000000}"
    base = f'kind: openai, base_url: "{upstream.api_base}"'
    return f"""models:
  - {{name: remote, {base}, model: fake, {price}}}
  - {{name: tooly, {base}, model: tooly}}
routes:
  - {{name: cached, targets: [remote], cache: {{mode: exact}}}}
  - name: agent
    targets: [tooly]
    checks: [{{on: tool_call, tools: [refund], action: review, deadline_s: 600}}]
    abstain_text: "The refund was not approved."
state:
  database_url: "{database_url}"
  redis_url: "{redis_url}"
  lease_s: {LEASE_S}
"""


@contextmanager
def database(kind: str, directory: Path) -> Iterator[str]:
    """One database for both replicas: a PostgreSQL server, or one SQLite file (WAL)."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'shared.db'}"
        return
    with running_postgres() as url:
        yield url


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def replicas(
    request: Any, upstream: FakeUpstreamHandle, tmp_path_factory: Any
) -> Iterator[dict[str, Any]]:
    upstream.control("POST", "/_control/config", {"token_delay_ms": 25})  # requests overlap
    directory = Path(tmp_path_factory.mktemp("replicas"))
    with database(request.param, directory) as database_url, running_redis() as redis_url:
        path = directory / "gateway.yaml"
        path.write_text(config(upstream, redis_url, database_url))
        args = ("--config", str(path), "--api-key", ADMIN, "--database-url", database_url)
        servers = [start_server(directory / name, *args) for name in ("a", "b")]
        state = {"servers": servers, "database_url": database_url, "redis_url": redis_url,
                 "args": args, "dir": directory}  # fmt: skip
        yield state
        for server in state["servers"]:
            if server.process.poll() is None:
                stop_server(server)


def create_key(server: ServerProcess, **fields: Any) -> tuple[str, str]:
    headers = {"authorization": f"Bearer {ADMIN}"}
    response = httpx.post(f"{server.base_url}/admin/keys", json={"name": "team", **fields},
                          headers=headers)  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()["id"], response.json()["key"]


def known_everywhere(servers: list[ServerProcess], key: str) -> None:
    """Waits until every replica has read the new key from the database (within 1 s)."""
    for server in servers:
        for _ in range(50):
            found = httpx.get(f"{server.base_url}/v1/models",
                              headers={"authorization": f"Bearer {key}"})  # fmt: skip
            if found.status_code == 200:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"{server.base_url} never learnt the key")


async def stream(base_url: str, key: str, i: int, abort_after: int | None = None,
                 tokens: int = TOKENS, model: str = "remote") -> str:  # fmt: skip
    body = {"model": model, "max_tokens": tokens, "stream": True,
            "messages": [{"role": "user", "content": f"Story {i}:"}]}  # fmt: skip
    headers = {"authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=120) as http,
        http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        if response.status_code != 200:
            await response.aread()
            return str(response.status_code)
        chunks = 0
        async for line in response.aiter_lines():
            chunks += line.startswith("data: {")
            if abort_after is not None and chunks >= abort_after:
                return "aborted"
            if '"finish_reason":"length"' in line:
                return "complete"
    return "cut"


def ledger(database_url: str, key_id: str) -> dict[str, float]:
    """The key's ledger rows, by status: count and spend."""
    engine = create_engine(database_url)
    query = text("SELECT status, COUNT(*), COALESCE(SUM(spend_usd), 0) FROM key_spend "
                 "WHERE key_id = :k GROUP BY status")  # fmt: skip
    with engine.connect() as conn:
        rows = conn.execute(query, {"k": key_id}).all()
    engine.dispose()
    out = {f"{status}_rows": float(count) for status, count, _ in rows}
    out["spend_usd"] = sum(float(spend) for _, _, spend in rows)
    return out


def test_one_budget_holds_across_two_replicas_under_concurrency(replicas: dict) -> None:
    servers = replicas["servers"]
    budget = 10.5 * TOKENS  # ten whole requests and half of one
    key_id, key = create_key(servers[0], budget={"amount_usd": budget, "period": "total"})
    known_everywhere(servers, key)

    async def run() -> list[str]:
        calls = [stream(servers[i % 2].base_url, key, i, abort_after=3 if i % 8 == 0 else None)
                 for i in range(48)]  # fmt: skip
        return list(await asyncio.gather(*calls))

    outcomes = asyncio.run(run())
    assert "cut" not in outcomes and set(outcomes) <= {"complete", "aborted", "429"}, outcomes
    time.sleep(1.5)  # settlements are written in the background
    rows = ledger(replicas["database_url"], key_id)
    print(f"outcomes {sorted(outcomes)}; ledger {rows}")
    # each request reserves its max_tokens (16 USD) before it runs, and no hold is taken
    # unless settled spend + every replica's holds + it fit: the spend never passes the budget
    assert rows["spend_usd"] <= budget + 1e-6
    admitted_at_once = outcomes.count("complete") + outcomes.count("aborted")
    assert outcomes.count("complete") <= 10 and admitted_at_once >= 10  # 11 would be 176 USD
    assert rows["spend_usd"] >= outcomes.count("complete") * TOKENS
    assert rows.get("reserved_rows", 0) == 0
    usage = httpx.get(f"{servers[1].base_url}/admin/keys/{key_id}/usage",
                      headers={"authorization": f"Bearer {ADMIN}"}).json()  # fmt: skip
    assert usage["budget"]["reserved_usd"] == 0


def test_rpm_and_max_parallel_hold_across_both_replicas(replicas: dict) -> None:
    servers = replicas["servers"]
    _, key = create_key(servers[0], rpm=6)
    known_everywhere(servers, key)  # (takes no request: /v1/models is not rate limited)
    started = time.monotonic()

    async def burst(n: int, the_key: str) -> list[str]:
        return list(await asyncio.gather(*(stream(servers[i % 2].base_url, the_key, i)
                                           for i in range(n))))  # fmt: skip

    outcomes = asyncio.run(burst(16, key))
    refills = int((time.monotonic() - started) / 10)  # rpm 6: one request back every 10 s
    assert outcomes.count("complete") == 6 + refills, outcomes
    assert outcomes.count("429") == 16 - 6 - refills
    headers = {"authorization": f"Bearer {key}"}
    refused = httpx.post(f"{servers[1].base_url}/v1/chat/completions", headers=headers,
                         json={"model": "remote", "max_tokens": 1,
                               "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-limit-requests"] == "6"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    _, narrow = create_key(servers[0], max_parallel=2)
    known_everywhere(servers, narrow)
    outcomes = asyncio.run(burst(8, narrow))  # 16 tokens at 25 ms: all overlap
    assert outcomes.count("complete") == 2 and outcomes.count("429") == 6, outcomes


def test_an_answer_cached_by_one_replica_is_a_hit_in_the_other(replicas: dict) -> None:
    servers = replicas["servers"]
    _, key = create_key(servers[0])
    known_everywhere(servers, key)
    body = {"model": "cached", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "What is shared?"}]}  # fmt: skip
    headers = {"authorization": f"Bearer {key}"}
    first = httpx.post(f"{servers[0].base_url}/v1/chat/completions", json=body, headers=headers)
    assert first.status_code == 200 and first.headers["x-inferline-cache"] == "miss"
    client = redis.Redis.from_url(replicas["redis_url"])
    for _ in range(50):  # written to Redis in the background
        if client.keys("inferline:cache:cached:*"):
            break
        time.sleep(0.1)
    again = httpx.post(f"{servers[1].base_url}/v1/chat/completions", json=body, headers=headers)
    assert again.headers["x-inferline-cache"] == "hit"  # the first time replica b sees it
    answer = again.json()["choices"][0]["message"]["content"]
    assert answer == first.json()["choices"][0]["message"]["content"]


def test_a_review_held_by_one_replica_is_decided_through_the_other(
    replicas: dict, upstream: FakeUpstreamHandle
) -> None:
    servers = replicas["servers"]
    _, user = create_key(servers[0])
    _, reviewer = create_key(servers[0], role="reviewer")
    known_everywhere(servers, user)
    known_everywhere(servers, reviewer)
    upstream.script("tooly", REFUND)
    ask = {"model": "agent", "tools": TOOLS,
           "messages": [{"role": "user", "content": "Refund order 7."}]}  # fmt: skip
    held = httpx.post(f"{servers[0].base_url}/v1/chat/completions", timeout=60, json=ask,
                      headers={"authorization": f"Bearer {user}"})  # fmt: skip
    decision = held.json()["inferline"]
    assert decision["decision"] == "pending_review", decision
    review_id = decision["review_id"]
    by_reviewer = {"authorization": f"Bearer {reviewer}"}
    decided = httpx.post(f"{servers[1].base_url}/v1/reviews/{review_id}",
                         json={"action": "approve"}, headers=by_reviewer)  # fmt: skip
    assert decided.status_code == 200, decided.text
    again = httpx.post(f"{servers[0].base_url}/v1/reviews/{review_id}",
                       json={"action": "reject"}, headers=by_reviewer)  # fmt: skip
    assert again.status_code == 409, again.text  # decided once, whichever replica asks
    seen = httpx.get(f"{servers[0].base_url}/v1/reviews/{review_id}", headers=by_reviewer)
    assert seen.json()["status"] == "approved"


def test_the_holds_of_a_replica_killed_with_9_are_charged_by_the_survivor(
    replicas: dict,
) -> None:
    servers = replicas["servers"]
    key_id, key = create_key(servers[0], budget={"amount_usd": 100 * TOKENS, "period": "total"})
    known_everywhere(servers, key)
    doomed, survivor = servers[1], servers[0]

    async def in_flight() -> list[Any]:
        tasks = [asyncio.ensure_future(stream(doomed.base_url, key, i, tokens=400))
                 for i in range(3)]  # fmt: skip
        live = asyncio.ensure_future(stream(survivor.base_url, key, 9, tokens=3 * TOKENS))
        await asyncio.sleep(1.0)
        doomed.process.send_signal(signal.SIGKILL)
        return list(await asyncio.gather(*tasks, live, return_exceptions=True))

    outcomes = asyncio.run(in_flight())
    assert outcomes[-1] == "complete"  # the survivor's own request was never touched
    doomed.process.wait(30)
    headers = {"authorization": f"Bearer {ADMIN}"}
    deadline = time.monotonic() + 4 * LEASE_S + 5
    while time.monotonic() < deadline:  # the leases run out; the survivor reconciles
        rows = ledger(replicas["database_url"], key_id)
        if rows.get("interrupted_rows") == 3:
            break
        time.sleep(0.5)
    assert rows.get("interrupted_rows") == 3 and rows.get("reserved_rows", 0) == 0, rows
    assert rows["spend_usd"] == pytest.approx(3 * 400 + 3 * TOKENS)  # as reserved
    usage = httpx.get(f"{survivor.base_url}/admin/keys/{key_id}/usage", headers=headers).json()
    assert usage["budget"]["reserved_usd"] == 0
    assert survivor.log_path.read_text().count("was in flight at a crash") == 3
    # the replica comes back on the same state and finds nothing left to recover
    restarted = start_server(replicas["dir"] / "b", *replicas["args"])
    replicas["servers"][1] = restarted
    assert "was in flight at a crash" not in restarted.log_path.read_text()
