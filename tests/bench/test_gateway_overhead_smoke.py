"""Smoke test of benchmarks/gateway_overhead.py's client and statistics (no LiteLLM, no
gateway: the fake upstream in a thread)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest

from inferline.bench.fake_upstream import fake_upstream

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from gateway_overhead import client, report  # noqa: E402


def _main_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "gateway_overhead_main", BENCH / "gateway_overhead.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_head_and_sse_scan() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked"
    assert client.parse_head(head) == (200, None, True, False)
    assert client.parse_head(b"HTTP/1.1 503 x\r\nContent-Length: 12\r\nConnection: close") == (
        503,
        12,
        False,
        True,
    )
    scan = client.SseScan()
    role = b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    assert not scan.feed(role)
    assert not scan.feed(b'data: {"choices":[{"delta":{"content":"Hi"}}]')  # half an event
    assert scan.feed(b"}\r\n\r\n")
    assert scan.found and not scan.done
    scan.feed(b"data: [DONE]\n\n")
    assert scan.found and scan.done


def test_overheads_subtract_the_same_round() -> None:
    def cell(r: int, system: str, p50: float, p99: float) -> dict:  # type: ignore[type-arg]
        return {
            "round": r,
            "scenario": "chat",
            "concurrency": 8,
            "system": system,
            "latency_ms": {"p50": p50, "p99": p99},
            "errors": {},
            "cpu_ms_per_request": {system: 1.0},
            "other_cpu_cores": 0.0,
        }

    cells = [cell(1, "direct", 1.0, 2.0), cell(1, "inferline", 1.5, 4.0)]
    cells += [cell(2, "direct", 2.0, 3.0), cell(2, "inferline", 2.9, 9.0)]
    cells += [cell(1, "litellm", 9.0, 20.0), cell(2, "litellm", 9.0, 20.0)]
    rows = {r["system"]: r for r in report.overheads(cells)}
    assert rows["inferline"]["added_p50_ms"] == {"min": 0.5, "median": 0.7}
    assert rows["inferline"]["added_p99_ms"] == {"min": 2.0, "median": 4.0}
    verdict = report.targets(list(rows.values()))
    assert verdict["c8_p50_le_1ms"] and verdict["c8_p99_le_5ms"]
    assert verdict["below_litellm"] == {"chat c=8": True}
    assert "+0.70 (+0.50)" in "\n".join(report.overhead_table(list(rows.values()), "chat"))


def test_cli_helpers() -> None:
    main = _main_module()
    assert main.cpu_tag("Intel(R) Xeon(R) Processor") == "intel-xeon"
    assert main.cpu_tag("AMD EPYC 7B13 64-Core Processor") == "amd-epyc-7b13-64-core"
    assert main.requests_for(1, 2000) == (500, 50)
    assert main.requests_for(64, 2000) == (2000, 200)
    assert main.parse_args(["--quick"]).rounds == 1


@pytest.mark.parametrize("stream", [False, True])
def test_closed_loop_against_the_fake_upstream(stream: bool) -> None:
    with fake_upstream(words=4) as up:
        target = client.Target("direct", up.host, up.port, "fake-model")
        cell = asyncio.run(
            client.closed_loop(target, stream=stream, concurrency=3, requests=20, warmup=5)
        )
        assert len(cell.latencies_s) == 20 and not cell.errors and cell.issued == 28
        assert len(cell.totals_s) == (20 if stream else 0)
        assert all(0 < x < 5 for x in cell.latencies_s)
        assert len(up.log()) == 28
        timed = asyncio.run(
            client.closed_loop_for(target, concurrency=2, seconds=0.2, warmup_s=0.05)
        )
        assert timed.latencies_s and not timed.errors
