"""Cascade + abstain, served: `abstain_offline`'s pick and runner-up through a real
``inferline serve --config`` gateway, on the answerable and the unanswerable questions.

One server (`cascade.start_server`; int8, `cascade.PRICES`) serves ``small``, ``large``,
``cascade`` (escalate when the small answer's mean token logprob < t), ``large-abstain``
and ``cascade-abstain`` (plus ``{on: output, kind: logprob, min_mean: a, action:
abstain}``). Every question goes to every name, one request at a time, greedy,
``max_tokens`` 24, no ``stop`` (as offline: the mean is over the whole output; ``--stop``
sends ``["\\n"]`` like `cascade.py`). Abstentions come from the request log's ``decision``
(checked against each response's ``inferline.decision`` and ``x-inferline-decision``),
cost from its ``cost_usd`` (abstained requests included), latency from the client. As
offline, a first line that declines is abstained by the model, an answered unanswerable
question is wrong; the offline figures for the same t and a are recomputed from
``--offline``'s stored answers, and each served answer is compared with the offline one.
Prefix caching stays on (as served; offline had it off).

usage:
  flock /tmp/bench.lock .venv/bin/python benchmarks/abstain_served.py [--limit N]
      [--out DIR] [--t -0.362] [--a-cascade -0.664] [--a-large -0.747] [--stop]
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from abstain_offline import DEFAULT_UNANSWERABLE, commit, declined, evaluate, table  # noqa: E402
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
        fields = "request_id, cost_usd, target, decision, decision_check, decision_score, checks"
        rows = {
            r[0]: dict(r) | {"attempts": []} for r in conn.execute(f"SELECT {fields} FROM requests")
        }
        for a in conn.execute("SELECT * FROM request_attempts ORDER BY request_id, attempt"):
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
    text_only = Answer(answer["id"], answer["text"], False, 0, 0, 0, 0, 0, 0)
    answer["model_declined"] = not answer["server_abstained"] and declined(text_only)
    answer["final_text"] = withheld if withheld is not None else answer["text"]
    scores = [o["score"] for o in checks.get("outcomes", []) if o["kind"] == "logprob"]
    answer["mean_logprob"] = scores[0] if scores else None  # the abstain check's reading


def served_row(name: str, answers: list[dict[str, Any]], r: dict[str, Any]) -> dict[str, Any]:
    """The figures of one served name, with the keys of `abstain_offline.evaluate`."""
    mine = [x for x in answers if x["name"] == name]
    unans = [x for x in mine if x["unanswerable"]]
    ans = [x for x in mine if not x["unanswerable"]]
    n, n_unans, n_ans = len(mine), max(1, len(unans)), max(1, len(ans))

    def out(x: dict[str, Any]) -> bool:
        return x["server_abstained"] or x["model_declined"]

    answered = [x for x in mine if not out(x)]
    right = sum(x["correct"] and not x["unanswerable"] for x in answered)
    latencies = [x["latency_s"] for x in mine]
    cost = sum(x["cost_usd"] for x in mine)
    return {
        "policy": f"served: {name}",
        "route": name,
        "t": None if abs(r["t"]) == INF else r["t"],
        "a": r["a"],
        "answered": len(answered) / n,
        "accuracy_answered": right / len(answered) if answered else None,
        "right": right / n,
        "wrong": (len(answered) - right) / n,
        "abstained": 1 - len(answered) / n,
        "abstained_by_server": sum(x["server_abstained"] for x in mine) / n,
        "declined_by_model": sum(x["model_declined"] for x in mine) / n,
        "unanswerable_abstained": sum(map(out, unans)) / n_unans,
        "answerable_abstained": sum(map(out, ans)) / n_ans,
        "answerable_right_withheld": sum(x["withheld_correct"] for x in ans) / n_ans,
        "escalated": sum(len(x["attempts"]) > 1 for x in mine) / n,
        "usd_per_1m_answered": 1e6 * cost / len(answered) if answered else None,
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
    rows = [
        evaluate(f"offline: {name}", name, runs, unanswerable, r["t"], r["a"], prices)
        for name, r in names.items()
    ]
    return rows, by_model


def versus_offline(
    answers: list[dict[str, Any]], offline: dict[str, dict[str, Answer]], names: dict
) -> dict[str, dict[str, Any]]:
    """Per served name, against the offline answer of the model that gave each final
    answer (withheld ones included): which differ in text, how many of those flip right /
    wrong, which abstain decisions differ, and the largest gap in mean logprob."""
    model = {"small": SMALL, "large": LARGE}
    result: dict[str, dict[str, Any]] = {}
    for x in answers:
        off = offline[model[x["attempts"][-1]["target"]]][x["id"]]
        group = result.setdefault(
            x["name"],
            {"compared": 0, "text_differs": [], "flips": 0, "decision_differs": [], "gap": None},
        )
        group["compared"] += 1
        if x["final_text"].strip() != off.text.strip():
            group["text_differs"].append(x["id"])
            group["flips"] += (x["correct"] or x["withheld_correct"]) != off.correct
        a = names[x["name"]]["a"]
        if a is not None and x["server_abstained"] != (off.mean_logprob < a):
            group["decision_differs"].append(x["id"])
        if x["mean_logprob"] is not None:
            gap = abs(x["mean_logprob"] - off.mean_logprob)
            group["gap"] = max(group["gap"] or 0.0, gap)
    return result


def per_token(answers: list[dict[str, Any]], offline: dict[str, dict[str, Answer]]) -> dict:
    """Latency = intercept + slope x output tokens, least squares, for the single-model
    names, served and offline (where the serving path's time goes)."""
    fits = {}
    for name, model in (("small", SMALL), ("large", LARGE)):
        mine = [x for x in answers if x["name"] == name]
        tokens = [x["attempts"][0]["completion_tokens"] for x in mine]
        served = [x["latency_s"] for x in mine]
        for side, lat in (("served", served), ("offline", [offline[model][x["id"]].latency_s
                                                           for x in mine])):  # fmt: skip
            fit = statistics.linear_regression(tokens, lat)
            fits[f"{name} {side}"] = {"s_per_token": fit.slope, "s_fixed": fit.intercept}
    return fits


def cache_hits(answers: list[dict[str, Any]]) -> dict[str, float]:
    """Per served name: the share of prompt tokens served from the prefix cache."""
    hits: dict[str, list[int]] = {}
    for x in answers:
        h = hits.setdefault(x["name"], [0, 0])
        for a in x["attempts"]:
            h[0] += a["cached_tokens"] or 0
            h[1] += a["prompt_tokens"] or 0
    return {k: v[0] / v[1] if v[1] else 0.0 for k, v in hits.items()}


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
        "versus_offline": versus_offline(answers, stored, names),
        "prefix_cache_share": cache_hits(answers),
        "latency_fit": per_token(answers, stored),
        "answers": answers,
    }


def markdown(report: dict[str, Any]) -> str:
    """The summary: settings, served next to offline, and where they differ."""
    s = report["settings"]
    pairs = [row for pair in zip(report["served"], report["offline"], strict=True) for row in pair]
    diff = "\n".join(
        f"| {name} | {v['compared']} | {len(v['text_differs'])} | {v['flips']} "
        f"| {len(v['decision_differs'])} | {'-' if v['gap'] is None else round(v['gap'], 4)} "
        f"| {100 * report['prefix_cache_share'][name]:.0f}% |"
        for name, v in report["versus_offline"].items()
    )
    fits = "; ".join(
        f"{k} {1000 * v['s_per_token']:.1f} ms/token + {1000 * v['s_fixed']:.0f} ms"
        for k, v in report["latency_fit"].items()
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
            "| name | answers | text differs | right/wrong flipped | abstain decision differs "
            "| max abs. mean-logprob gap (abstain check) | prompt tokens from prefix cache |\n"
            "|---|---|---|---|---|---|---|\n" + diff,
            "Text differences: the served path may start from prefix-cached blocks (the "
            "offline run had caching off), another numeric path that can move an int8 greedy "
            "near-tie. Latency fit, latency = fixed + per output token (single-model "
            f"names): {fits}.",
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
