"""The evaluation loop end to end: a real `serve --config` process (the local SmolLM2 and
our fake upstream, both priced), prompts pushed with `inferline prompts`, a dataset
imported with `inferline datasets`, an experiment on three targets with a judge run by
`inferline eval run`, killed with SIGKILL mid-way and resumed, its report checked against
the traces, and a dataset sampled back from the logged traffic."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from inferline.bench.fake_upstream import FakeUpstreamHandle
from tests.e2e.conftest import BIN, ServerProcess, start_server, stop_server

pytestmark = pytest.mark.e2e
# the fake upstream answers "Quietly, the amber fox crossed a frozen river before dawn..."
# cut at max_tokens = 8 words: it contains the first four words below, not the last two
WORDS = ["amber", "fox", "river", "frozen", "eagles", "cinnamon"]
PARTNER_PRICE = (1.0, 2.0)  # USD per million input / output tokens


def config(upstream: FakeUpstreamHandle) -> str:
    return f"""models:
  - {{name: local, kind: llm, source: smollm2-135m, weight_format: int8,
      price: {{input_per_mtok: 1.0, output_per_mtok: 4.0}}}}
  - name: partner
    kind: openai
    base_url: "{upstream.api_base}"
    model: partner
    price: {{input_per_mtok: {PARTNER_PRICE[0]}, output_per_mtok: {PARTNER_PRICE[1]}}}
routes:
  - name: bot
    targets: [local]
"""


PROMPTS = {
    "terse.yaml": "id: terse\nroute: bot\nmessages:\n  - role: system\n"
                  "    content: Answer with a single word.\n",
    "rubric.yaml": "id: rubric\nroute: bot\nmessages:\n  - role: system\n"
                   "    content: You grade answers. An answer that names the reference word "
                   "scores 1, otherwise 0.\n",
}  # fmt: skip


@pytest.fixture(scope="module")
def setup(upstream: FakeUpstreamHandle, tmp_path_factory: Any) -> Iterator[dict[str, Any]]:
    directory = Path(tmp_path_factory.mktemp("evals"))
    (directory / "gateway.yaml").write_text(config(upstream))
    server = start_server(directory, "--config", str(directory / "gateway.yaml"))
    for name, body in PROMPTS.items():
        (directory / name).write_text(body)
    lines = [json.dumps({"id": f"w{n}", "input": f"Which word comes to mind: {w}?",
                         "expected": w}) for n, w in enumerate(WORDS)]  # fmt: skip
    (directory / "words.jsonl").write_text("\n".join(lines) + "\n")
    yield {"server": server, "dir": directory}
    stop_server(server)


def cli(server: ServerProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(BIN), *args, "--database-url", server.database_url], capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def rows_of(server: ServerProcess, experiment: str) -> list[dict[str, Any]]:
    engine = create_engine(server.database_url)
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT target, item_key, repetition, request_id, cost_usd, scores "
                 "FROM experiment_results WHERE experiment_id = :e"), {"e": experiment},
        )  # fmt: skip
        rows = [dict(r._mapping) for r in found]
    engine.dispose()
    return rows


def test_an_experiment_killed_mid_run_resumes_and_reports(setup: dict[str, Any]) -> None:
    server, directory = setup["server"], setup["dir"]
    cli(server, "prompts", "push", str(directory / "terse.yaml"), str(directory / "rubric.yaml"))
    imported = cli(server, "datasets", "import", "words", str(directory / "words.jsonl"))
    assert "words v1 (new version): 6 items, 6 added" in imported.stdout
    run_args = [
        "eval", "run", "words", "--target", "partner", "--target", "bot",
        "--target", "prompt:terse@1", "--scorer", "contains", "--scorer", "judge:rubric@1/bot",
        "--param", "max_tokens=8", "--param", "temperature=0", "--param", "logprobs=true",
        "--concurrency", "1",
        "--base-url", server.base_url, "--name", "three targets",
        "--database-url", server.database_url,
    ]  # fmt: skip
    process = subprocess.Popen([str(BIN), *run_args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    experiment = _experiment_id(process)
    deadline = time.monotonic() + 120
    while len(rows_of(server, experiment)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    written = len(rows_of(server, experiment))
    assert 4 <= written < 18
    out = directory / "result.json"
    resumed = cli(server, "eval", "resume", experiment, "--base-url", server.base_url,
                  "--json", str(out), "--html", str(directory / "report.html"))  # fmt: skip
    assert f"{written} already there" in resumed.stderr
    rows = rows_of(server, experiment)
    keys = [(r["target"], r["item_key"], r["repetition"]) for r in rows]
    assert len(keys) == len(set(keys)) == 18  # nothing scored twice, nothing missing
    check_report(server, directory, experiment, json.loads(out.read_text()), rows)


def check_report(
    server: ServerProcess, directory: Path, experiment: str, summary: dict[str, Any],
    rows: list[dict[str, Any]],
) -> None:  # fmt: skip
    """The resumed experiment's report against the traces, the HTML page, --fail-under and
    the cascade's threshold fitted on it."""
    partner = summary["targets"]["partner"]
    assert partner["n"] == 6 and partner["errors"] == 0
    assert partner["scores"]["contains"]["mean"] == pytest.approx(4 / 6)
    # every row's cost is its trace's: the report reads what the gateway charged
    traced = 0.0
    for row in rows:
        trace = httpx.get(f"{server.base_url}/v1/traces/{row['request_id']}").json()
        assert trace["metadata"]["inferline_experiment"] == experiment
        assert trace["cost_usd"] == pytest.approx(row["cost_usd"], abs=1e-8)
        traced += trace["cost_usd"] if row["target"] == "partner" else 0.0
    assert partner["cost"]["total_usd"] == pytest.approx(traced) and traced > 0
    # partner: prompt = the words of the question, 8 words back, at 1 and 2 USD per M
    expected_cost = sum((len(f"Which word comes to mind: {w}?".split()) * PARTNER_PRICE[0]
                         + 8 * PARTNER_PRICE[1]) / 1e6 for w in WORDS)  # fmt: skip
    assert traced == pytest.approx(expected_cost)
    judge_names = {name for r in rows for name in json.loads(r["scores"])}
    assert judge_names == {"contains", "judge:rubric@1/bot"}
    assert summary["targets"]["bot"]["cost"]["scoring_usd"] > 0  # the judge ran on the local
    assert {(c["baseline"], c["target"]) for c in summary["comparisons"]} == {
        ("partner", "bot"), ("partner", "prompt:terse@1")}  # fmt: skip
    page = (directory / "report.html").read_text()
    assert "three targets" in page and page.count("<svg") == 2
    again = cli(server, "eval", "report", experiment, "--fail-under", "0.99", check=False)
    assert again.returncode == 1 and "below 0.99: partner" in again.stderr
    # the cascade bot -> partner, its threshold fitted on the local model's logprobs
    curve_file = directory / "curve.json"
    fitted = cli(server, "eval", "fit-threshold", experiment, "--small", "bot", "--large",
                 "partner", "--max-error", "1.0", "--json", str(curve_file),
                 "--html", str(directory / "curve.html"), check=False)  # fmt: skip
    assert fitted.returncode == 0, fitted.stderr
    points = json.loads(curve_file.read_text())["curve"]
    assert len(points) >= 3 and points[0]["escalated"] == 0 and points[-1]["escalated"] == 1
    assert "action: escalate" in fitted.stdout


def _experiment_id(process: subprocess.Popen[str]) -> str:
    assert process.stderr is not None
    line = process.stderr.readline()
    assert line.startswith("experiment exp_"), line
    return line.split()[1].rstrip(":")


def test_a_dataset_is_sampled_from_logged_traffic(setup: dict[str, Any]) -> None:
    server = setup["server"]
    asked = ["Name a fruit.", "Name a colour.", "Name a city."]
    for question in asked:
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json={
            "model": "bot", "max_tokens": 4, "metadata": {"source": "traffic"},
            "messages": [{"role": "user", "content": question}]}, timeout=60)  # fmt: skip
        assert response.status_code == 200
    time.sleep(1.0)  # the log writer's flush
    cli(server, "datasets", "from-traces", "traffic", "--route", "bot", "--since", "1h",
        "--text", "Name a", "--sample", "10")  # fmt: skip
    exported = cli(server, "datasets", "export", "traffic", "--format", "csv").stdout
    csv_lines = exported.splitlines()
    assert csv_lines[0] == "id,input,expected,metadata,source" and len(csv_lines) == 4
    items = [
        json.loads(line)
        for line in cli(server, "datasets", "export", "traffic").stdout.splitlines()
    ]
    assert sorted(i["input"][0]["content"] for i in items) == sorted(asked)
    assert all(i["source"] == f"trace:{i['id']}" and i["metadata"]["route"] == "bot" for i in items)


def test_logged_traffic_replays_on_a_candidate_config_with_its_timing(
    setup: dict[str, Any],
) -> None:
    server, directory = setup["server"], setup["dir"]
    offsets = [0.0, 0.5, 0.6, 1.4, 1.7]
    start = time.monotonic()
    for n, offset in enumerate(offsets):
        time.sleep(max(0.0, start + offset - time.monotonic()))
        stream = n == 2
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json={
            "model": "bot", "max_tokens": 4, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": f"Replay me {n}"}]}, timeout=60)  # fmt: skip
        assert response.status_code == 200
    time.sleep(1.0)  # the log writer's flush
    out = directory / "replay.json"
    cli(server, "replay", "--against", str(directory / "gateway.yaml"), "--route", "bot",
        "--text", "Replay me", "--since", "1h", "--json", str(out))  # fmt: skip
    report = json.loads(out.read_text())
    assert report["requests"] == 5 and report["errors"] == {"logged": 0, "replayed": 0}
    # the same model, greedy, one request at a time: the same answers, the same cost
    assert report["outputs"]["compared"] == 5 and report["outputs"]["exact"] == 5
    assert report["cost_usd"]["replayed"] == pytest.approx(report["cost_usd"]["logged"])
    assert report["cost_usd"]["logged"] > 0
    assert report["arrival"]["gap_error_p95"] < 0.10  # recorded inter-arrival times kept
    assert report["ttft_s"]["replayed"]["p50"] is not None  # the streamed one
