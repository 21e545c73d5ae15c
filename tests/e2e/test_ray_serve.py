"""``inferline serve --ray`` on a local Ray instance the server starts: SmolLM2 as two
deployments of two replicas (one routed by prefix locality, one by Ray's default
power-of-two choice) and an autoscaled one, the gateway as the ingress. The openai SDK
works unchanged; a replica killed under load loses no request; requests sharing a long
prefix hit the prefix cache more often than under random placement; the autoscaled
deployment grows on queued tokens and shrinks after its cool-down."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import ServerProcess, start_server, stop_server

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    # found, not imported: Ray's modules would weigh on every test collected with this one
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed"),
]
CONFIG = """models:
  - {name: local, kind: llm, source: smollm2-135m, weight_format: int8, replicas: 2,
     num_cpus: 0.1, threads: 1}
  - {name: plain, kind: llm, source: smollm2-135m, weight_format: int8, replicas: 2,
     num_cpus: 0.1, threads: 1, routing: random}
  - {name: scaled, kind: llm, source: smollm2-135m, weight_format: int8, num_cpus: 0.1,
     threads: 1, autoscaling: {min_replicas: 1, max_replicas: 2, target_queued_tokens: 64,
     upscale_delay_s: 1, downscale_delay_s: 8}}
routes:
  - {name: bot, targets: [local], retry: {attempts: 3}}
  - {name: random, targets: [plain]}
  - {name: elastic, targets: [scaled]}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("ray")
    (tmp / "gateway.yaml").write_text(CONFIG)
    # five engine replicas, the gateway, Serve's proxy and controller start on two cores:
    # ~35 s on a quiet machine, minutes on a busy one
    server = start_server(tmp, "--config", str(tmp / "gateway.yaml"), "--ray", ready_timeout_s=400)
    wait_for(lambda: len(replicas("local")) == 2 and len(replicas("plain")) == 2, 200)
    yield server
    assert stop_server(server, 120) == 0


def replicas(deployment: str) -> list[int]:
    """The pids of a deployment's live replica processes (Ray titles a busy one with the
    method it runs: ``ServeReplica:inferline:local.handle_request_with_rejection``)."""
    pattern = f"ServeReplica:inferline:{deployment}(\\.[A-Za-z_]+)?$"
    found = subprocess.run(["pgrep", "-f", pattern],
                           capture_output=True, text=True).stdout.split()  # fmt: skip
    return [int(pid) for pid in found]


def wait_for(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def client_of(server: ServerProcess) -> openai.OpenAI:
    # a request the cluster lost fails in a minute (the SDK's default waits ten), so a test
    # reports it as an error instead of hanging on it
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=60)


def test_the_openai_sdk_works_through_ray(cluster: ServerProcess) -> None:
    client = client_of(cluster)
    raw = client.chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": "Name a color."}], max_tokens=8
    )
    reply = raw.parse()
    assert reply.choices[0].message.content and raw.headers["x-inferline-target"] == "local"
    chunks = list(client.chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True,
        stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 8
    response = client.responses.create(model="bot", input="Hi", max_output_tokens=8)
    assert client.responses.retrieve(response.id).output_text == response.output_text
    trace = httpx.get(f"{cluster.base_url}/v1/traces/{reply.id}")
    assert wait_for(
        lambda: httpx.get(f"{cluster.base_url}/v1/traces/{reply.id}").status_code == 200, 10
    ), trace.text


def test_a_replica_killed_under_load_loses_no_request(cluster: ServerProcess) -> None:
    client = client_of(cluster)
    results: list[tuple[str, Any]] = []
    stop = threading.Event()

    def worker(streamed: bool) -> None:
        while not stop.is_set():
            try:
                if streamed:
                    text, finish = "", None
                    for chunk in client.chat.completions.create(
                        model="bot", messages=[{"role": "user", "content": "Count to twenty."}],
                        max_tokens=40, temperature=0, stream=True,
                    ):  # fmt: skip
                        if chunk.choices:
                            text += chunk.choices[0].delta.content or ""
                            finish = chunk.choices[0].finish_reason or finish
                    results.append(("stream", (finish, len(text))))
                else:
                    reply = client.chat.completions.create(
                        model="bot", messages=[{"role": "user", "content": "Name a color."}],
                        max_tokens=16, temperature=0,
                    )  # fmt: skip
                    results.append(("plain", (reply.choices[0].finish_reason, 1)))
            except openai.APIError as error:
                results.append(("error", str(error)[:200]))

    threads = [threading.Thread(target=worker, args=(i % 2 == 0,), daemon=True) for i in range(6)]
    for thread in threads:
        thread.start()
    try:  # the workers stop whatever fails here (left running, they would load the rest)
        time.sleep(4)
        live = replicas("local")
        assert len(live) == 2, f"replicas of local before the kill: {live}"
        victim = live[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = len(results)
        time.sleep(12)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    errors = [r for r in results if r[0] == "error"]
    assert not errors, errors
    assert len(results) > killed_at + 4  # traffic went on after the kill
    assert all(r[1][0] in ("stop", "length") and r[1][1] > 0 for r in results)
    assert wait_for(lambda: len(replicas("local")) == 2 and victim not in replicas("local"), 90)


def cached_share(server: ServerProcess, route: str, groups: int, per_group: int) -> float:
    """Prefix-cache hits over the prompt tokens of every request after a group's first."""
    hits = total = 0
    for group in range(groups):
        prefix = f"Document {group}-{route}-{time.time_ns()}: " + " ".join(
            f"w{group}x{i}" for i in range(300)
        )
        for question in range(per_group):
            reply = httpx.post(f"{server.base_url}/v1/completions", timeout=60, json={
                "model": route, "prompt": f"{prefix}\nQuestion {question}: why?",
                "max_tokens": 1})  # fmt: skip
            usage = reply.json()["usage"]
            if question > 0:
                hits += usage["prompt_tokens_details"]["cached_tokens"]
                total += usage["prompt_tokens"]
    return hits / total


def test_prefix_locality_beats_random_placement(cluster: ServerProcess) -> None:
    prefix_aware = cached_share(cluster, "bot", groups=8, per_group=4)
    random_choice = cached_share(cluster, "random", groups=8, per_group=4)
    assert prefix_aware >= 0.85, (prefix_aware, random_choice)
    assert prefix_aware > random_choice, (prefix_aware, random_choice)


def test_autoscaling_follows_queued_tokens(cluster: ServerProcess) -> None:
    assert wait_for(lambda: len(replicas("scaled")) == 1, 60)
    client = client_of(cluster)
    long_prompt = " ".join(f"item{i}" for i in range(700))
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            client.completions.create(model="elastic", prompt=f"{time.time_ns()} {long_prompt}",
                                      max_tokens=16)  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        for _ in range(8):
            pool.submit(load)
        grew = wait_for(lambda: len(replicas("scaled")) == 2, 60)
        stop.set()
    assert grew, "no second replica while 8 clients queued ~2k-token prompts"
    assert wait_for(lambda: len(replicas("scaled")) == 1, 90), "not scaled back after idling"


def test_a_batch_job_runs_on_the_cluster_replicas(cluster: ServerProcess) -> None:
    from tests.e2e.test_batches import chat_line, read_lines, sdk, submit
    from tests.e2e.test_batches import wait_for as wait_for_batch

    client = sdk(cluster)
    lines = [chat_line(f"line-{i}", f"Say {i}.") for i in range(6)]
    for line in lines:
        line["body"]["model"] = "bot"  # the route over the deployment's replicas
    done = wait_for_batch(client, submit(client, lines).id, ("completed", "failed"))
    assert done.status == "completed", done
    assert done.request_counts.completed == 6
    outputs = read_lines(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in outputs) == [f"line-{i}" for i in range(6)]
    assert all(o["response"]["status_code"] == 200 for o in outputs)
