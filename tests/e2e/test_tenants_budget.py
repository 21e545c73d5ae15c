"""Budgets of virtual keys against a real server: 64 concurrent streams (some aborted
mid-way) on a local engine and on a remote upstream, and a kill -9 while requests are
being charged."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferline.bench.fake_upstream import FakeUpstreamHandle
from tests.e2e.conftest import ServerProcess, free_port, start_server, stop_server

pytestmark = pytest.mark.e2e
ADMIN = "e2e-admin-key"
TOKENS = 16  # per request; at 1 USD per output token a request costs 16 USD
BUDGET = 11 * TOKENS  # about ten requests


def config(upstream: FakeUpstreamHandle) -> str:
    price = "price: {input_per_mtok: 0, output_per_mtok: 1000000}"
    return f"""models:
  - {{name: local, kind: llm, source: smollm2-135m, weight_format: int8, {price}}}
  - {{name: remote, kind: openai, base_url: "{upstream.api_base}", model: fake, {price}}}
"""


@pytest.fixture(scope="module")
def setup(upstream: FakeUpstreamHandle, tmp_path_factory: Any) -> Iterator[dict[str, Any]]:
    directory = Path(tmp_path_factory.mktemp("budget"))
    path = directory / "gateway.yaml"
    path.write_text(config(upstream))
    port = free_port()
    args = ("--config", str(path), "--api-key", ADMIN)
    server = start_server(directory, *args, port=port, env={"INFERLINE_API_KEY": ""})
    state = {"server": server, "dir": directory, "args": args, "port": port}
    yield state
    running = state["server"]  # the kill -9 test replaces it with the restarted one
    if running.process.poll() is None:
        stop_server(running)


def create_key(server: ServerProcess, **fields: Any) -> tuple[str, str]:
    response = httpx.post(
        f"{server.base_url}/admin/keys",
        json={"name": "team", **fields},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert response.status_code == 200, response.text
    return response.json()["id"], response.json()["key"]


async def stream(
    base_url: str,
    key: str,
    model: str,
    i: int,
    abort_after: int | None,
    tokens: int = TOKENS,
    started: asyncio.Event | None = None,
) -> str:
    body = {"model": model, "max_tokens": tokens, "ignore_eos": True, "stream": True,
            "temperature": 0, "messages": [{"role": "user", "content": f"Story {i}:"}]}  # fmt: skip
    headers = {"authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=300) as http,
        http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        if response.status_code != 200:
            await response.aread()
            return str(response.status_code)
        chunks = 0
        async for line in response.aiter_lines():
            chunks += line.startswith("data: {")
            if started is not None and chunks:
                started.set()
            if abort_after is not None and chunks >= abort_after:
                return "aborted"
            if '"finish_reason":"length"' in line:
                return "complete"
    return "cut"


def spend(database: Path, key_id: str) -> tuple[float, float, int]:
    """(settled spend, the attempts' cost, interrupted rows) of a key, from the database."""
    with sqlite3.connect(database) as conn:
        settled, interrupted = conn.execute(
            "SELECT COALESCE(SUM(spend_usd), 0), SUM(status = 'interrupted') FROM key_spend "
            "WHERE key_id = ?",
            (key_id,),
        ).fetchone()
        (attempts,) = conn.execute(
            "SELECT COALESCE(SUM(a.cost_usd), 0) FROM request_attempts a JOIN requests r "
            "ON a.request_id = r.request_id WHERE r.key_id = ?",
            (key_id,),
        ).fetchone()
    return float(settled), float(attempts), int(interrupted or 0)


@pytest.mark.parametrize("model", ["local", "remote"])
def test_64_concurrent_streams_never_pass_the_budget(setup: dict[str, Any], model: str) -> None:
    server = setup["server"]
    key_id, key = create_key(server, budget={"amount_usd": BUDGET, "period": "total"})

    async def run() -> list[str]:
        calls = [
            stream(server.base_url, key, model, i, abort_after=3 if i % 10 == 0 else None)
            for i in range(64)
        ]
        return list(await asyncio.gather(*calls))

    outcomes = asyncio.run(run())
    assert outcomes.count("complete") >= 8, outcomes
    assert "cut" not in outcomes and set(outcomes) <= {"complete", "aborted", "429"}
    time.sleep(1.5)  # settlements and the request log are written in the background
    usage = httpx.get(
        f"{server.base_url}/admin/keys/{key_id}/usage",
        headers={"authorization": f"Bearer {ADMIN}"},
    ).json()
    assert usage["budget"]["spend_usd"] <= BUDGET and usage["budget"]["reserved_usd"] == 0
    settled, attempts, _ = spend(setup["dir"] / "requests.db", key_id)
    counts = {o: outcomes.count(o) for o in sorted(set(outcomes))}
    print(f"{model}: {counts}, settled {settled:.2f} of {BUDGET}, attempts {attempts:.2f}")
    assert settled <= BUDGET and round(settled, 2) == round(attempts, 2)
    # an aborted stream had sent a token or more: it is charged for them
    assert settled >= outcomes.count("complete") * TOKENS + outcomes.count("aborted")
    metrics = httpx.get(f"{server.base_url}/metrics", headers={"authorization": f"Bearer {ADMIN}"})
    assert f'inferline:target_in_flight{{target="{model}"}} 0.0' in metrics.text


def test_a_kill_9_loses_no_settled_spend_and_reports_what_was_in_flight(
    setup: dict[str, Any],
) -> None:
    server = setup["server"]
    key_id, key = create_key(server, budget={"amount_usd": 10_000.0, "period": "total"})

    async def some(n: int) -> list[str]:
        calls = (stream(server.base_url, key, "local", i, None) for i in range(n))
        return list(await asyncio.gather(*calls))

    assert asyncio.run(some(3)) == ["complete"] * 3
    time.sleep(1.0)  # settled
    database = setup["dir"] / "requests.db"
    before, _, _ = spend(database, key_id)
    assert before == 3 * TOKENS

    async def in_flight() -> None:
        # killed once every stream has sent its first chunk, not after a fixed time: a
        # greedy story that loops is drafted by n-gram speculation and can finish 400
        # tokens in 1.4 s
        started = [asyncio.Event() for _ in range(4)]
        tasks = [
            asyncio.ensure_future(
                stream(server.base_url, key, "local", i, None, tokens=400, started=started[i])
            )
            for i in range(4)
        ]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), 60)
        server.process.send_signal(signal.SIGKILL)
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(in_flight())
    server.process.wait(30)
    restarted = start_server(setup["dir"], *setup["args"], port=setup["port"],
                             env={"INFERLINE_API_KEY": ""})  # fmt: skip
    setup["server"] = restarted
    after, _, interrupted = spend(database, key_id)
    assert interrupted == 4  # each reported, and charged what it had reserved (400 tokens)
    assert after == pytest.approx(before + 4 * 400)
    assert restarted.log_path.read_text().count("was in flight at a crash") == 4
