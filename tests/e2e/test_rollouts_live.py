"""Rollouts end to end on a real server with the local SmolLM2 and structured output: a
candidate prompt version that drops a required JSON field, rolled out to 20% of a live
load, is rolled back by itself within the sample size the policy computed (the label moved
back, the event saying why); a candidate as good as its baseline is promoted."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import BIN, ServerProcess, free_port, start_server, stop_server

pytestmark = pytest.mark.e2e
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}  # fmt: skip
NAME_ONLY = {"type": "object", "additionalProperties": False, "required": ["name"],
             "properties": {"name": {"type": "string"}}}  # fmt: skip
TEXTS = ["Ann is 31 and lives in Oslo.", "Bob, aged 45, is a baker.", "Cleo turned 27 today.",
         "Dan (52) fixes bikes.", "Eve is a 38 year old pilot."]  # fmt: skip


def prompt_file(directory: Path, prompt_id: str, schema: dict[str, Any], wording: str) -> Path:
    body = {"id": prompt_id, "route": "bot",
            "messages": [{"role": "system", "content": wording},
                         {"role": "user", "content": "{{ text }}"}],
            "params": {"max_tokens": 48, "temperature": 0},
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "person", "schema": schema}}}  # fmt: skip
    path = directory / f"{prompt_id}-{len(list(directory.glob(prompt_id + '-*')))}.json.yaml"
    path.write_text(json.dumps(body))  # JSON is YAML
    return path


CONFIG = """models:
  - {name: local, kind: llm, source: smollm2-135m, weight_format: int8}
routes:
  - name: bot
    targets: [local]
rollouts:
  - name: person-v2
    prompt: person
    baseline: 1
    candidate: 2
    share: 0.2
    scorers: [json_schema:person.json]
    policy: {min_samples: 8}
  - name: friend-v2
    prompt: friend
    baseline: 1
    candidate: 2
    share: 0.5
    scorers: [json_schema:person.json]
    policy: {min_samples: 8}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: Any) -> Iterator[ServerProcess]:
    directory = Path(tmp_path_factory.mktemp("rollouts"))
    (directory / "person.json").write_text(json.dumps(PERSON))
    (directory / "gateway.yaml").write_text(CONFIG)
    database_url = f"sqlite:///{directory / 'requests.db'}"
    good = "Extract the person as JSON with their name and age."
    reworded = "Give the person's name and age as JSON."
    files = [prompt_file(directory, "person", PERSON, good),
             prompt_file(directory, "person", NAME_ONLY, good + " Only the name."),
             prompt_file(directory, "friend", PERSON, good),
             prompt_file(directory, "friend", PERSON, reworded)]  # fmt: skip
    for path in files:  # the versions exist before the server starts their rollouts
        command = [str(BIN), "prompts", "push", str(path), "--database-url", database_url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    config = str(directory / "gateway.yaml")
    process = start_server(directory, "--config", config, port=free_port())
    yield process
    stop_server(process)


def version_used(server: ServerProcess, prompt_id: str) -> int:
    """The prompt version a request naming no version gets (read from its trace)."""
    body = {"prompt": {"id": prompt_id, "variables": {"text": TEXTS[0]}}, "messages": []}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    url = f"{server.base_url}/v1/traces/{response.headers['x-request-id']}"
    deadline = time.monotonic() + 5  # the log writer's flush
    while (trace := httpx.get(url)).status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert json.loads(response.json()["choices"][0]["message"]["content"]).keys() >= {"name"}
    return int(trace.json()["prompt"]["version"])


def rollout(server: ServerProcess, name: str) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}/v1/rollouts/{name}")
    assert response.status_code == 200, response.text
    return response.json()


def live_load(server: ServerProcess, prompt_id: str, name: str, limit: int) -> int:
    """Users ask until the rollout is decided (or ``limit`` requests); requests sent."""
    sent = 0

    def ask(n: int) -> None:
        body = {"prompt": {"id": prompt_id, "variables": {"text": TEXTS[n % len(TEXTS)]}},
                "user": f"user-{n}", "messages": []}  # fmt: skip
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text

    with ThreadPoolExecutor(4) as pool:
        while sent < limit and rollout(server, name)["state"] == "running":
            list(pool.map(ask, range(sent, sent + 8)))
            sent += 8
    deadline = time.monotonic() + 10  # the last answers' scoring
    while rollout(server, name)["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    return sent


def test_a_worse_candidate_is_rolled_back_by_itself(server: ServerProcess) -> None:
    started = rollout(server, "person-v2")["events"][0]
    assert started["kind"] == "started"
    limit = started["evidence"]["expected_samples"]["worse"]
    live_load(server, "person", "person-v2", 400)
    view = rollout(server, "person-v2")
    assert view["state"] == "rolled_back"
    decided = view["events"][-1]
    assert decided["kind"] == "rolled_back" and "worse" in decided["reason"]
    candidate = decided["evidence"]["arms"]["candidate"]
    assert candidate["fails"] >= 8 and candidate["passes"] == 0
    assert candidate["n"] <= limit  # within the sample size the policy computed
    assert decided["evidence"]["arms"]["baseline"]["passes"] >= 8
    # the label is back on version 1: the next request without a version gets it
    assert version_used(server, "person") == 1
    command = [str(BIN), "rollouts", "status", "person-v2", "--database-url", server.database_url]
    status = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert "rolled_back" in status.stdout and "worse" in status.stdout


def test_a_candidate_as_good_is_promoted(server: ServerProcess) -> None:
    live_load(server, "friend", "friend-v2", 400)
    view = rollout(server, "friend-v2")
    assert view["state"] == "promoted", view["events"]
    assert view["events"][-1]["evidence"]["arms"]["candidate"]["fails"] == 0
    assert version_used(server, "friend") == 2
