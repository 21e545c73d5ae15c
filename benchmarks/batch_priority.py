"""Batch jobs in idle capacity: do live requests keep their latency while a job runs?

Same host, one run, in this order:
1. offline ceiling: scenario d (64 prompts of 256 tokens, 128 out) through `LLM.generate`
   (benchmarks/offline.py), output tokens/s;
2. a server alone: live traffic `inferline bench --scenario b4` (256/128 at concurrency 4)
   -> TTFT p50/p99;
3. the same server, a batch job alone: the d prompts x 2 as `/v1/completions` lines
   (ignore_eos, 128 out) -> job output tokens/s, from in_progress to completed;
4. a larger job running, and the same live traffic at the same time -> TTFT p50/p99.
Targets (issue 7): TTFT p99 with the job <= 1.5x without; job rate >= 0.9x offline.

usage: .venv/bin/python benchmarks/batch_priority.py [--out DIR]
Writes batch_priority.json and .md (default benchmarks/results/<date>-<cpu>/). Hold
``flock /tmp/bench.lock`` around it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "inferline"
PORT = 8220
MODEL = "smollm2-135m"


def offline_rate(work: Path) -> dict[str, Any]:
    """Scenario d through the Python API (a process of its own)."""
    prompts, result = work / "prompts.json", work / "offline.json"
    script = str(REPO / "benchmarks" / "offline.py")
    subprocess.run([sys.executable, script, "prompts", str(prompts)], check=True)
    subprocess.run(
        [sys.executable, script, "run", "--engine", "inferline", "--prompts", str(prompts),
         "--model", MODEL, "--json", str(result)],
        check=True,
    )  # fmt: skip
    return dict(json.loads(result.read_text()))


def live_traffic(work: Path, label: str) -> dict[str, Any]:
    """Scenario b4, 24 requests, against the running server -> its summary."""
    out = work / f"live-{label}.json"
    subprocess.run(
        [str(BIN), "bench", "--base-url", f"http://127.0.0.1:{PORT}", "--model", MODEL,
         "--scenario", "b4", "--num-requests", "24", "--json", str(out), "--no-progress"],
        check=True,
    )  # fmt: skip
    return dict(json.loads(out.read_text())["runs"][0]["summary"])


def submit_job(client: Any, prompts: list[str], copies: int) -> str:
    """A completions batch of ``prompts`` x ``copies`` (fixed 128-token outputs)."""
    lines = [
        {
            "custom_id": f"{copy}-{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": MODEL, "prompt": p, "max_tokens": 128, "temperature": 0,
                     "ignore_eos": True},
        }
        for copy in range(copies)
        for i, p in enumerate(prompts)
    ]  # fmt: skip
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    upload = client.files.create(file=("job.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h"
    )
    return str(batch.id)


def job_alone(client: Any, prompts: list[str]) -> dict[str, Any]:
    """Output tokens/s of a job with no live traffic (client-side clock, 0.2 s polls)."""
    batch_id = submit_job(client, prompts, copies=2)
    start = None
    while True:
        batch = client.batches.retrieve(batch_id)
        if start is None and batch.status == "in_progress":
            start = time.perf_counter()
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            break
        time.sleep(0.2)
    elapsed = time.perf_counter() - (start or time.perf_counter())
    return {
        "status": batch.status,
        "lines": batch.request_counts.total,
        "failed": batch.request_counts.failed,
        "output_tokens": batch.usage.output_tokens,
        "seconds": elapsed,
        "output_tokens_per_s": batch.usage.output_tokens / max(elapsed, 1e-9),
    }


def live_with_job(client: Any, prompts: list[str], work: Path) -> dict[str, Any]:
    """Live traffic while a large job runs (the job is cancelled afterwards)."""
    batch_id = submit_job(client, prompts, copies=8)
    while client.batches.retrieve(batch_id).request_counts.completed < 8:
        time.sleep(0.2)
    live = live_traffic(work, "with-job")
    batch = client.batches.retrieve(batch_id)
    client.batches.cancel(batch_id)
    return {"live": live, "job_lines_done_by_then": batch.request_counts.completed}


def main() -> None:
    """Runs the four measurements; prints and writes the comparison."""
    from openai import OpenAI

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        offline = offline_rate(work)
        prompts = json.loads((work / "prompts.json").read_text())
        env = {**os.environ, "OMP_NUM_THREADS": "2", "INFERLINE_API_KEY": ""}
        server = subprocess.Popen(
            [str(BIN), "serve", "--port", str(PORT), "--database-url",
             f"sqlite:///{work / 'db.sqlite'}"],
            stdout=(work / "server.log").open("wb"), stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            _wait_ready()
            client = OpenAI(base_url=f"http://127.0.0.1:{PORT}/v1", api_key="x", max_retries=0)
            alone = live_traffic(work, "alone")
            job = job_alone(client, prompts)
            mixed = live_with_job(client, prompts, work)
        finally:
            server.terminate()
            server.wait(120)
    result = _summary(offline, alone, job, mixed)
    print(json.dumps(result["targets"], indent=2))
    out = args.out or _default_out()
    out.mkdir(parents=True, exist_ok=True)
    (out / "batch_priority.json").write_text(json.dumps(result, indent=2))
    (out / "batch_priority.md").write_text(_markdown(result))
    print(f"wrote {out / 'batch_priority.json'} and .md")


def _wait_ready() -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{PORT}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError("server did not become ready")


def _summary(offline: dict[str, Any], alone: dict[str, Any], job: dict[str, Any],
             mixed: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    offline_rate_tps = float(offline["output_tokens_per_s"])
    ttft_ratio = mixed["live"]["ttft_s"]["p99"] / alone["ttft_s"]["p99"]
    job_ratio = job["output_tokens_per_s"] / offline_rate_tps
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "offline": offline,
        "live_alone": alone,
        "job_alone": job,
        "live_with_job": mixed,
        "targets": {
            "ttft_p99_with_job_over_alone": ttft_ratio,
            "job_rate_over_offline": job_ratio,
            "met": {"ttft <= 1.5x": ttft_ratio <= 1.5, "job >= 0.9x offline": job_ratio >= 0.9},
        },
    }


def _markdown(result: dict[str, Any]) -> str:
    alone, mixed = result["live_alone"], result["live_with_job"]["live"]

    def ms(summary: dict[str, Any], key: str, q: str) -> str:
        return f"{1000 * summary[key][q]:.0f}"

    return "\n".join(
        [
            f"# Batch jobs in idle capacity, {result['when']}",
            "",
            "| measurement | figure |",
            "|---|---|",
            "| offline d (LLM.generate) | "
            f"{result['offline']['output_tokens_per_s']:.1f} out tok/s |",
            f"| job alone (128 completions lines, 256/128) | "
            f"{result['job_alone']['output_tokens_per_s']:.1f} out tok/s |",
            f"| live b4 alone: TTFT p50 / p99 | {ms(alone, 'ttft_s', 'p50')} / "
            f"{ms(alone, 'ttft_s', 'p99')} ms |",
            f"| live b4 with a job running: TTFT p50 / p99 | {ms(mixed, 'ttft_s', 'p50')} / "
            f"{ms(mixed, 'ttft_s', 'p99')} ms |",
            f"| live b4 alone / with job: TPOT p50 | {ms(alone, 'tpot_s', 'p50')} / "
            f"{ms(mixed, 'tpot_s', 'p50')} ms |",
            "",
            "```json",
            json.dumps(result["targets"], indent=2),
            "```",
            "",
        ]
    )


def _default_out() -> Path:
    cpu = "amd-epyc" if "AMD" in Path("/proc/cpuinfo").read_text() else "intel-xeon"
    return REPO / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d')}-{cpu}"


if __name__ == "__main__":
    main()
