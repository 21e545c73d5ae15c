"""Replay against a fake candidate (httpx's mock transport): recorded inter-arrival
times reproduced within 10% at speed 1 and 2, streamed originals replayed streamed, the
candidate's overrides, and the comparison's counts."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from inferline.evals.replay import Logged, ReplayOptions, compare, logged_of, replay, similarity

pytestmark = pytest.mark.anyio
OFFSETS = [0.0, 0.6, 0.7, 1.6, 2.0, 2.9]


def _logged(n: int, offset: float, *, stream: bool = False) -> Logged:
    body = {"model": "bot", "messages": [{"role": "user", "content": f"q{n}"}], "stream": stream,
            "prompt": {"id": "p", "version": 1, "variables": {}}}  # fmt: skip
    return Logged(f"r{n}", 1000.0 + offset, body, f"answer {n}", 200, 0.2, 0.05, 0.001)


class Candidate:
    """Answers after 0.1 s (so answers overlap later sends), records arrival times."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # a streamed answer's cost, from its trace
            return httpx.Response(200, json={"cost_usd": 0.002})
        self.arrivals.append(time.perf_counter())
        body = json.loads(request.content)
        self.bodies.append(body)
        n = int(body["messages"][0]["content"][1:])
        text = f"answer {n}" if n % 2 == 0 else f"another answer {n}"
        headers = {"x-request-id": f"new{n}", "x-inferline-cost-usd": "0.002"}
        if body.get("stream"):
            chunks = [{"choices": [{"index": 0, "delta": {"content": word + " "}}]}
                      for word in text.split()]  # fmt: skip
            sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, content=sse.encode(), headers=headers)
        content = {"choices": [{"index": 0, "message": {"content": text}}]}
        return httpx.Response(200, json=content, headers=headers)


@pytest.mark.parametrize("speed", [1.0, 2.0])
async def test_a_replay_keeps_the_recorded_inter_arrival_times(speed: float) -> None:
    candidate = Candidate()
    transport = httpx.MockTransport(candidate.handle)
    requests = [_logged(n, offset, stream=n == 3) for n, offset in enumerate(OFFSETS)]
    options = ReplayOptions(speed=speed, model="candidate-route", prompt_version=4)
    async with httpx.AsyncClient(transport=transport, base_url="http://candidate") as client:
        results = await replay(client, list(reversed(requests)), options)
    arrivals = [t - candidate.arrivals[0] for t in candidate.arrivals]
    assert len(arrivals) == len(OFFSETS)
    for n in range(1, len(OFFSETS)):
        recorded = (OFFSETS[n] - OFFSETS[n - 1]) / speed
        # within 10%, or 15 ms of scheduling jitter on a busy 2-core machine
        assert arrivals[n] - arrivals[n - 1] == pytest.approx(recorded, rel=0.10, abs=0.015)
    body = candidate.bodies[0]
    assert body["model"] == "candidate-route" and body["prompt"]["version"] == 4
    assert body["metadata"] == {"inferline_replay_of": "r0"}
    assert candidate.bodies[3]["stream_options"] == {"include_usage": True}
    assert results[3].ttft_s is not None and results[3].output == "another answer 3 "
    report = compare(results)
    assert report["requests"] == 6 and report["outputs"]["compared"] == 6
    assert report["outputs"]["exact"] == 3  # the even ones
    assert report["arrival"]["gap_error_p50"] < 0.05
    assert report["cost_usd"] == {"logged": pytest.approx(0.006), "replayed": pytest.approx(0.012)}


def test_similarity_and_what_can_be_replayed() -> None:
    assert similarity("a b c d", "a b c d") == 1.0
    assert similarity("a b c d", "a b x d") == pytest.approx(0.75)
    assert similarity(None, "x") is None
    trace = {"id": "r", "endpoint": "/v1/chat/completions", "created_at": 1.0, "output": "o",
             "status_code": 200, "timings": {"total_s": 0.1, "ttft_s": 0.05}, "cost_usd": None,
             "request": {"model": "m", "messages": []}}  # fmt: skip
    logged = logged_of(trace)
    assert logged is not None and logged.cost_usd == 0.0
    assert logged_of({**trace, "request": None}) is None  # logged without its text
    assert logged_of({**trace, "endpoint": "/v1/embeddings"}) is None
