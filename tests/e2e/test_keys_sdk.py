"""Virtual keys against a real server process with the real openai SDK: routes per key,
rate limits with their headers, revocation and expiry at once, keys kept out of the log,
and the response cache's header."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from inferline.bench.fake_upstream import FakeUpstreamHandle
from tests.e2e.conftest import ServerProcess, start_server, stop_server
from tests.waiting import eventually

pytestmark = pytest.mark.e2e
ADMIN = "e2e-keys-admin"


@pytest.fixture(scope="module")
def server(upstream: FakeUpstreamHandle, tmp_path_factory: Any) -> Iterator[ServerProcess]:
    directory = Path(tmp_path_factory.mktemp("keys"))
    path = directory / "gateway.yaml"
    path.write_text(f"""models:
  - {{name: up, kind: openai, base_url: "{upstream.api_base}", model: fake}}
routes:
  - {{name: support, targets: [up], cache: {{mode: exact}}}}
  - {{name: internal, targets: [up]}}
""")
    running = start_server(directory, "--config", str(path), "--api-key", ADMIN)
    yield running
    stop_server(running)


def new_key(server: ServerProcess, **fields: Any) -> tuple[str, str]:
    response = httpx.post(f"{server.base_url}/admin/keys", json={"name": "t", **fields},
                          headers={"authorization": f"Bearer {ADMIN}"})  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()["id"], response.json()["key"]


def sdk(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)


def ask(client: openai.OpenAI, model: str = "support", content: str = "hello") -> Any:
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=8, temperature=0
    )


def test_a_key_limited_to_one_route_is_refused_on_another(server: ServerProcess) -> None:
    _, key = new_key(server, routes=["support"])
    assert ask(sdk(server, key)).parse().model == "up"
    with pytest.raises(openai.PermissionDeniedError):
        ask(sdk(server, key), "internal")


def test_rpm_and_tpm_limits_give_429_with_retry_after_and_headers(server: ServerProcess) -> None:
    _, key = new_key(server, rpm=3)
    raw = ask(sdk(server, key), content="one")
    assert raw.headers["x-ratelimit-limit-requests"] == "3"
    ask(sdk(server, key), content="two")
    ask(sdk(server, key), content="three")
    with pytest.raises(openai.RateLimitError) as info:
        ask(sdk(server, key), content="four")
    assert int(info.value.response.headers["retry-after"]) >= 19  # 3/min: one in 20 s
    assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    _, tokens_key = new_key(server, tpm=1000)
    with pytest.raises(openai.RateLimitError, match="tokens per minute"):
        for _ in range(200):
            ask(sdk(server, tokens_key), content="x " * 100)


def test_revoked_and_expired_keys_are_refused_at_once(server: ServerProcess) -> None:
    key_id, key = new_key(server)
    ask(sdk(server, key))
    httpx.delete(f"{server.base_url}/admin/keys/{key_id}",
                 headers={"authorization": f"Bearer {ADMIN}"})  # fmt: skip
    with pytest.raises(openai.PermissionDeniedError, match="revoked"):
        ask(sdk(server, key))
    _, soon = new_key(server, expires_at=time.time() + 1.0)
    ask(sdk(server, soon))
    time.sleep(1.2)
    with pytest.raises(openai.PermissionDeniedError, match="expired"):
        ask(sdk(server, soon))


def test_a_leaked_key_never_reaches_the_log(server: ServerProcess) -> None:
    _, key = new_key(server)
    ask(sdk(server, key), content=f"here is my key {key} please keep it")
    database = server.database_url.removeprefix("sqlite:///")

    def logged() -> list[tuple[str, ...]]:
        with sqlite3.connect(database) as conn:
            return conn.execute("SELECT prompt, output, error FROM requests").fetchall()

    rows = eventually(logged, lambda found: "[redacted key]" in str(found))  # written later
    assert rows and key not in str(rows) and "[redacted key]" in str(rows)


def test_every_response_says_whether_the_cache_answered(server: ServerProcess) -> None:
    _, key = new_key(server)
    first = ask(sdk(server, key), content="cache me")
    second = ask(sdk(server, key), content="cache me")
    assert first.headers["x-inferline-cache"] == "miss"
    assert second.headers["x-inferline-cache"] == "hit"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert ask(sdk(server, key), "internal").headers["x-inferline-cache"] == "miss"
