"""Cascade + abstain, served: the policies `abstain_offline` recommends, through a real
``inferline serve --config`` gateway, on the answerable and the unanswerable question sets.

One server (`cascade.start_server`) runs SmolLM2-135M and Qwen2.5-Coder-0.5B (int8, the
prices of `cascade.py`) under five names: ``small``, ``large``, ``cascade`` (t: escalate
when the small answer's mean token logprob < t), ``large-abstain`` and ``cascade-abstain``
(route checks ``{on: output, kind: logprob, min_mean: a, action: abstain}``; defaults
are the offline probe's pick and runner-up). Every question of both sets goes to every
name, one request at a time, greedy, ``max_tokens`` 24 and no ``stop`` (as the offline
run: its mean logprob is over the whole 24-token output, not the first line; ``--stop``
sends ``["\\n"]`` like `cascade.py`). Abstentions are counted from the request log's
``decision`` column and checked against each response's ``inferline.decision`` object and
``x-inferline-decision`` header; cost is the request log's ``cost_usd`` (every attempt,
abstained requests included), latency the client's. An answer whose first line declines
counts as abstained by the model, an answered unanswerable question as wrong (as offline).

The figures are printed next to `abstain_offline`'s for the same thresholds, recomputed
from its stored answers (``--offline``), and every served answer is compared with the
offline answer of the model that gave it.

usage:
  flock /tmp/bench.lock .venv/bin/python benchmarks/abstain_served.py [--limit N]
      [--out DIR] [--t -0.362] [--a-cascade -0.664] [--a-large -0.747] [--stop]

Prefix caching stays on (as served; the offline run had it off): the routes run one after
another, so a prompt's later runs start from cached blocks.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from abstain_offline import DEFAULT_UNANSWERABLE, declined, evaluate, table  # noqa: E402
from cascade import PRICES, start_server  # noqa: E402
from cascade_offline import (  # noqa: E402
    DEFAULT_QUESTIONS,
    LARGE,
    MAX_TOKENS,
    SMALL,
    Answer,
    is_correct,
    load_questions,
    quantile,
)

from inferline.bench.host import cpu_description  # noqa: E402

OFFLINE = ROOT / "results" / "abstain_offline" / "results.json"
ABSTAIN_TEXT = "I don't know."
INF = float("inf")


def routes(t: float, a_cascade: float, a_large: float) -> dict[str, dict[str, Any]]:
    """Each served name: its targets, escalation threshold t and abstain threshold a."""
    return {
        "small": {"targets": ["small"], "t": -INF, "a": None},
        "large": {"targets": ["large"], "t": INF, "a": None},
        "cascade": {"targets": ["small", "large"], "t": t, "a": None},
        "large-abstain": {"targets": ["large"], "t": INF, "a": a_large},
        "cascade-abstain": {"targets": ["small", "large"], "t": t, "a": a_cascade},
    }


def config_text(names: dict[str, dict[str, Any]]) -> str:
    """The gateway config: the two models and a route per name that is not a model."""
    text = "models:\n"
    for model, source in (("small", "smollm2-135m"), ("large", "qwen2.5-coder-0.5b")):
        price = PRICES[model]
        text += (
            f"  - name: {model}\n    kind: llm\n    source: {source}\n    weight_format: int8\n"
            f"    price: {{input_per_mtok: {price}, output_per_mtok: {price}}}\n"
        )
    text += "routes:\n"
    for name, r in names.items():
        if name in ("small", "large"):
            continue
        checks = []
        if len(r["targets"]) > 1:
            checks.append(f"{{on: output, kind: logprob, min_mean: {r['t']}, action: escalate}}")
        if r["a"] is not None:
            checks.append(f"{{on: output, kind: logprob, min_mean: {r['a']}, action: abstain}}")
        strategy = "cascade" if len(r["targets"]) > 1 else "fallback"
        targets = ", ".join(r["targets"])
        text += f"  - name: {name}\n    strategy: {strategy}\n    targets: [{targets}]\n"
        text += "    checks:\n" + "".join(f"      - {c}\n" for c in checks)
        if r["a"] is not None:
            text += f'    abstain_text: "{ABSTAIN_TEXT}"\n'
    return text


def ask(client: httpx.Client, name: str, question: dict[str, Any], stop: bool) -> dict:
    """One greedy answer: text, what the response says was decided, request id, latency."""
    body = {"model": name, "messages": question["messages"], "max_tokens": MAX_TOKENS}
    body |= {"temperature": 0} | ({"stop": ["\n"]} if stop else {})
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body)
    latency_s = time.perf_counter() - started
    response.raise_for_status()
    reply = response.json()
    return {
        "id": question["id"],
        "name": name,
        "unanswerable": question["difficulty"] == "unanswerable",
        "text": reply["choices"][0]["message"]["content"] or "",
        "answered_by": reply["model"],
        "response_decision": (reply.get("inferline") or {}).get("decision"),
        "header_decision": response.headers.get("x-inferline-decision"),
        "request_id": response.headers["x-request-id"],
        "latency_s": latency_s,
    }


def log_rows(database: Path) -> dict[str, dict[str, Any]]:
    """Per request id: the request log's cost, attempts, decision and checks, with its
    attempts' targets, tokens and prompt tokens served from the prefix cache."""
    with sqlite3.connect(database) as conn:
        conn.row_factory = sqlite3.Row
        rows = {
            r["request_id"]: dict(r)
            for r in conn.execute(
                "SELECT request_id, cost_usd, num_attempts, target, decision, decision_check,"
                " decision_score, checks FROM requests"
            )
        }
        for r in rows.values():
            r["attempts"] = []
        query = (
            "SELECT request_id, target, status, prompt_tokens, completion_tokens, cached_tokens,"
            " cost_usd FROM request_attempts ORDER BY request_id, attempt"
        )
        for a in conn.execute(query):
            if a["request_id"] in rows:
                rows[a["request_id"]]["attempts"].append(dict(a))
    return rows


def score(answer: dict[str, Any], question: dict[str, Any], log: dict[str, Any]) -> None:
    """Adds the log's figures and the scores to one served answer."""
    checks = json.loads(log["checks"]) if log.get("checks") else {}
    withheld = (checks.get("withheld") or "") if log["decision"] == "abstain" else None
    answer |= {
        "decision": log["decision"],
        "decision_score": log["decision_score"],
        "cost_usd": log["cost_usd"],
        "attempts": log["attempts"],
        "target": log["target"],
        "withheld": withheld,
        "server_abstained": log["decision"] == "abstain",
        "correct": is_correct(answer["text"], question["answers"], question["match"]),
        "withheld_correct": withheld is not None
        and is_correct(withheld, question["answers"], question["match"]),
    }
    answer["model_declined"] = not answer["server_abstained"] and declined(
        Answer(answer["id"], answer["text"], False, 0, 0, 0, 0, 0, 0)
    )
    answer["final_text"] = withheld if withheld is not None else answer["text"]


def served_row(name: str, answers: list[dict[str, Any]], r: dict[str, Any]) -> dict[str, Any]:
    """The figures of one served name, with the keys of `abstain_offline.evaluate`."""
    mine = [x for x in answers if x["name"] == name]
    n, n_unans = len(mine), max(1, sum(x["unanswerable"] for x in mine))
    n_ans = max(1, n - sum(x["unanswerable"] for x in mine))
    out = [x["server_abstained"] or x["model_declined"] for x in mine]
    answered = [x for x, o in zip(mine, out, strict=True) if not o]
    right = sum(x["correct"] and not x["unanswerable"] for x in answered)
    latencies = [x["latency_s"] for x in mine]
    return {
        "policy": f"served: {name}",
        "route": name,
        "t": None if abs(r["t"]) == INF else r["t"],
        "a": r["a"],
        "answered": len(answered) / n,
        "accuracy_answered": right / len(answered) if answered else None,
        "right": right / n,
        "wrong": (len(answered) - right) / n,
        "abstained": sum(out) / n,
        "abstained_by_server": sum(x["server_abstained"] for x in mine) / n,
        "declined_by_model": sum(x["model_declined"] for x in mine) / n,
        "unanswerable_abstained": sum(
            o for x, o in zip(mine, out, strict=True) if x["unanswerable"]
        )
        / n_unans,
        "answerable_abstained": sum(
            o for x, o in zip(mine, out, strict=True) if not x["unanswerable"]
        )
        / n_ans,
        "answerable_right_withheld": sum(
            x["withheld_correct"] for x in mine if not x["unanswerable"]
        )
        / n_ans,
        "escalated": sum(len(x["attempts"]) > 1 for x in mine) / n
        if len(r["targets"]) > 1
        else 0.0,
        "usd_per_1m_answered": 1e6 * sum(x["cost_usd"] for x in mine) / len(answered)
        if answered
        else None,
        "latency_mean_s": sum(latencies) / n,
        "latency_p95_s": quantile(latencies, 0.95),
        "decisions_agree": all(
            x["response_decision"] == x["header_decision"] == x["decision"] for x in mine
        ),
    }


def offline_rows(
    names: dict[str, dict[str, Any]], ids: list[str], unanswerable: list[bool], path: Path
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Answer]]]:
    """`abstain_offline`'s figures for the same t and a, from its stored answers (the
    served questions only), and those answers by model and question id."""
    stored = json.loads(path.read_text())
    keep = Answer.__dataclass_fields__
    by_model = {
        m: {a["id"]: Answer(**{k: a[k] for k in keep}) for a in v}
        for m, v in stored["answers"].items()
    }
    runs = tuple([by_model[m][i] for i in ids] for m in (SMALL, LARGE))
    prices = (PRICES["small"], PRICES["large"])
    rows = []
    for name, r in names.items():
        row = evaluate(f"offline: {name}", name, runs, unanswerable, r["t"], r["a"], prices)
        rows.append(row)
    return rows, by_model


def versus_offline(answers: list[dict[str, Any]], offline: dict[str, dict[str, Answer]]) -> dict:
    """Per served name: how many final answers (withheld ones included) differ in text from
    the offline answer of the model that gave them, and which."""
    model = {"small": SMALL, "large": LARGE}
    result: dict[str, dict[str, Any]] = {}
    for x in answers:
        who = x["attempts"][-1]["target"] if x["attempts"] else x["answered_by"]
        off = offline[model[who]][x["id"]]
        group = result.setdefault(x["name"], {"compared": 0, "text_differs": [], "flips": 0})
        group["compared"] += 1
        if x["final_text"].strip() != off.text.strip():
            group["text_differs"].append(x["id"])
            served_right = x["correct"] or x["withheld_correct"]
            group["flips"] += served_right != off.correct
    return result


def cache_hits(answers: list[dict[str, Any]]) -> dict[str, float]:
    """Per served name: the share of prompt tokens served from the prefix cache."""
    hits: dict[str, list[int]] = {}
    for x in answers:
        h = hits.setdefault(x["name"], [0, 0])
        for a in x["attempts"]:
            h[0] += a["cached_tokens"] or 0
            h[1] += a["prompt_tokens"] or 0
    return {k: v[0] / v[1] if v[1] else 0.0 for k, v in hits.items()}


def commit() -> str:
    """The short commit, marked when the working tree differs from it."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)

    head = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    return head + (" (+ uncommitted changes)" if git("diff", "--quiet", "HEAD").returncode else "")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Starts the gateway, asks every question under every name, stops it, reads the log."""
    questions = load_questions(args.questions, args.limit) + load_questions(
        args.unanswerable, args.limit
    )
    names = routes(args.t, args.a_cascade, args.a_large)
    answers: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="inferline-abstain-") as tmp:
        directory = Path(tmp)
        config = directory / "gateway.yaml"
        config.write_text(config_text(names))
        process, url = start_server(directory, config)
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                for name in names:
                    for question in questions:
                        answers.append(ask(client, name, question, args.stop))
                    print(f"{name}: done", file=sys.stderr)
        finally:
            process.send_signal(signal.SIGTERM)  # flushes the request log
            process.wait(120)
        logged = log_rows(directory / "requests.db")
        config_used = config.read_text()
    by_id = {q["id"]: q for q in questions}
    for answer in answers:
        score(answer, by_id[answer["id"]], logged[answer["request_id"]])
    unanswerable = [q["difficulty"] == "unanswerable" for q in questions]
    offline, stored = offline_rows(names, [q["id"] for q in questions], unanswerable, args.offline)
    return {
        "settings": {
            "date": date.today().isoformat(),
            "commit": commit(),
            "machine": cpu_description(),
            "answerable": len(unanswerable) - sum(unanswerable),
            "unanswerable": sum(unanswerable),
            "max_tokens": MAX_TOKENS,
            "stop": ["\n"] if args.stop else None,
            "prices_per_mtok": PRICES,
            "config": config_used,
            "command": " ".join(["python", *sys.argv]),
        },
        "served": [served_row(name, answers, r) for name, r in names.items()],
        "offline": offline,
        "versus_offline": versus_offline(answers, stored),
        "prefix_cache_share": cache_hits(answers),
        "answers": answers,
    }


def markdown(report: dict[str, Any]) -> str:
    """The summary: settings, served next to offline, and where they differ."""
    s = report["settings"]
    pairs = [row for pair in zip(report["served"], report["offline"], strict=True) for row in pair]
    diff = "\n".join(
        f"| {name} | {v['compared']} | {len(v['text_differs'])} | {v['flips']} "
        f"| {100 * report['prefix_cache_share'][name]:.0f}% |"
        for name, v in report["versus_offline"].items()
    )
    agree = all(r["decisions_agree"] for r in report["served"])
    return "\n\n".join(
        [
            "# Cascade + abstain, served",
            f"{s['date']}, commit {s['commit']}, on {s['machine']}. {s['answerable']} answerable "
            f"+ {s['unanswerable']} unanswerable questions, each asked once per name through one "
            f"`inferline serve --config` process, one request at a time; greedy, int8, "
            f"max_tokens {s['max_tokens']}, stop {s['stop']}, prefix caching on. Prices per "
            f"million tokens: small ${PRICES['small']}, large ${PRICES['large']}. Served cost: "
            f"the request log's cost_usd (abstained requests included) / answered questions; "
            f"latency: client-side, one run. Offline rows: `abstain_offline`'s stored answers "
            f"(prefix caching off, no stop, latency = lowest of 2 in-process runs) scored with "
            f"its code at the same t and a. Abstained = withheld by the server (decision "
            f"'abstain') or declined by the model (first line). Command: `{s['command']}`.",
            table(pairs, {"policy": None}),
            "Abstained by the server (request log `decision`): "
            + ", ".join(
                f"{r['route']} {100 * r['abstained_by_server']:.1f}%" for r in report["served"]
            )
            + f". Log decisions agree with every response's `inferline.decision` and "
            f"`x-inferline-decision`: {'yes' if agree else 'NO'}.",
            "## Served answers against the offline answer of the same model",
            "| name | answers | text differs | right/wrong flipped | prompt tokens from prefix "
            "cache |\n|---|---|---|---|---|\n" + diff,
            "## Config\n\n```yaml\n" + s["config"] + "```",
        ]
    )


def default_out() -> Path:
    """``results/<date>-<cpu>`` like the other served benchmarks."""
    cpu = cpu_description()
    name = "intel-xeon" if "Xeon" in cpu else "amd-epyc" if "EPYC" in cpu else "cpu"
    return ROOT / "results" / f"{date.today()}-{name}"


def main() -> None:
    """Runs the benchmark, prints the summary, writes JSON and Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--unanswerable", type=Path, default=DEFAULT_UNANSWERABLE)
    parser.add_argument("--offline", type=Path, default=OFFLINE)
    parser.add_argument("--limit", type=int, default=None, help="first N of each set only")
    parser.add_argument("--t", type=float, default=-0.362, help="cascade escalation threshold")
    parser.add_argument("--a-cascade", type=float, default=-0.664)
    parser.add_argument("--a-large", type=float, default=-0.747)
    parser.add_argument("--stop", action="store_true", help='send stop ["\\n"]')
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = run(args)
    out = args.out or default_out()
    out.mkdir(parents=True, exist_ok=True)
    (out / "abstain_served.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "abstain_served.md").write_text(markdown(report) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
