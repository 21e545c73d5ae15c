"""`inferline batch run`: a batch file in process, resumable, with clear validation errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent / "inferline"
pytestmark = pytest.mark.e2e


def line(custom_id: str, content: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 8,
            "temperature": 0,
        },
    }


def run(*args: str, threads: int | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run(
        [str(BIN), "batch", "run", "--no-progress", "--weight-format", "int8", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def write(path: Path, lines: list[Any]) -> None:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


def answers(path: Path) -> dict[str, str]:
    records = [json.loads(x) for x in path.read_text().splitlines()]
    return {
        r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"] for r in records
    }


def test_run_then_resume_gives_each_custom_id_once(tmp_path: Path) -> None:
    questions = ["Say hi.", "Name a colour.", "Count to three.", "What is 2+2?", "Name a fruit."]
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write(source, [line(f"r-{i}", q) for i, q in enumerate(questions[:2])])
    first = run(str(source), "-o", str(output), "--price-input", "0.1", "--price-output", "0.4")
    assert first.returncode == 0, first.stderr
    assert "2 ok, 0 failed" in first.stderr and "per line" in first.stderr
    before = answers(output)
    write(source, [line(f"r-{i}", q) for i, q in enumerate(questions)])
    with output.open("a") as file:
        file.write('{"custom_id": "r-9", "respo')  # a line cut by a crash
    again = run(str(source), "-o", str(output))
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = run(str(source), "-o", str(output), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "2 already in" in resumed.stderr and "3 ok" in resumed.stderr
    after = answers(output)
    assert sorted(after) == [f"r-{i}" for i in range(5)]
    assert len(output.read_text().splitlines()) == 5
    assert {k: after[k] for k in before} == before


def test_invalid_lines_are_reported_by_number_before_anything_runs(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write(source, [line("a", "x"), "{oops", line("a", "y")])
    result = run(str(source), "-o", str(tmp_path / "out.jsonl"))
    assert result.returncode == 2
    assert "line 2: invalid_json_line" in result.stderr
    assert "line 3: duplicate_custom_id" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.slow
def test_the_ray_runner_gives_the_local_runners_outputs(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    # "Name a colour." is left out: its greedy answer sits on a near-tie that flipped
    # between runs in the full suite (open question, see the issue 7 note).
    questions = ["Say hi.", "Name a city.", "Count to three.", "What is 2+2?", "Name a fruit."]
    source = tmp_path / "in.jsonl"
    write(source, [line(f"r-{i}", questions[i % 5]) for i in range(8)])
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    # Same numerics on both sides: one thread (as each 1-CPU replica has; float sums depend
    # on the thread count) and one line at a time per engine (prefill attention runs over a
    # padded tile whose shape depends on which lines share a step, which can flip a
    # near-tie: "Name a colour." is one).
    sequential = ("--max-in-flight", "1")
    assert run(str(source), "-o", str(local), *sequential, threads=1).returncode == 0
    first = run(str(source), "-o", str(on_ray), "--runner", "ray", "--replicas", "2",
                "--ray-batch-size", "2", *sequential)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    assert answers(on_ray) == answers(local)
    assert len(on_ray.read_text().splitlines()) == 8
    again = run(str(source), "-o", str(on_ray), "--runner", "ray", "--resume")
    assert again.returncode == 0 and "8 already in" in again.stderr
    assert len(on_ray.read_text().splitlines()) == 8
