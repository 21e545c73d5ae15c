"""Offline probe of a cascade that may also abstain, on answerable and unanswerable questions.

Runs the answerable set (``data/cascade_questions.jsonl``) and the unanswerable one
(``data/unanswerable_questions.jsonl``: fictitious things, private facts, future numbers,
false premises; the right behaviour is not to answer) through the small and the large model
with `cascade_offline`'s runner (greedy, int8, one request at a time, token logprobs), then
simulates these policies offline:

- small-only, large-only: always answer;
- cascade t: the small answer stands when its mean token logprob >= t, else the large one
  (t picked as in `cascade_offline`: accepting about 30/50/70% of small answers);
- X + abstain a: as X, but the final answer is withheld when its mean token logprob < a
  (a picked so that about 5/10/20/30% of the answerable questions are withheld).

An answer whose first line declines ("I'm sorry", ...) is an abstention by the model under
every policy; an answered unanswerable question is wrong. Cost: `cascade_offline`'s price
model; a withheld answer is still paid for (cost per answered = all spent / answered).

usage:
  flock /tmp/bench.lock .venv/bin/python benchmarks/abstain_offline.py \\
      [--out DIR] [--limit N] [--reuse results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cascade_offline import (  # noqa: E402
    DEFAULT_QUESTIONS,
    LARGE,
    MAX_TOKENS,
    ROOT,
    SMALL,
    TARGET_ACCEPT,
    WEIGHT_FORMAT,
    Answer,
    answer_line,
    auroc,
    cost_usd,
    display_path,
    load_questions,
    quantile,
    run_model,
    threshold_for_share,
)

from inferline.bench.host import cpu_description  # noqa: E402

DEFAULT_UNANSWERABLE = ROOT / "data" / "unanswerable_questions.jsonl"
DEFAULT_OUT = ROOT / "results" / "abstain_offline"
TARGET_ABSTAIN = (0.05, 0.1, 0.2, 0.3)  # shares of answerable questions withheld by `a`
KEEP_RIGHT = 0.95  # ship rule: withhold at most 5% of the right answers a route gives
WRONG_TOLERANCE = 0.02  # ship rule: routes this close in wrong answers tie; cheapest wins
_DECLINE = re.compile(
    r"\b(i'?m sorry|i am sorry|i (?:don'?t|do not) (?:know|have)|i'?m not sure|i am not sure"
    r"|i can'?not|i can'?t|as an ai|as a chatbot|unable to|no such|there (?:is|are|was) no"
    r"|(?:does not|doesn'?t) exist|not possible|cannot be (?:known|predicted|determined))\b",
    re.IGNORECASE,
)
INF = math.inf


def declined(answer: Answer) -> bool:
    """Whether the answer's first line refuses or says it does not know."""
    return bool(_DECLINE.search(answer_line(answer.text)))


# --- the policies --------------------------------------------------------------------------


def served(s: Answer, g: Answer, t: float) -> Answer:
    """The answer a cascade at ``t`` serves: ``-inf`` always the small one (the large model
    never runs), ``inf`` always the large one (the small model never runs)."""
    return s if t == -INF or (t != INF and s.mean_logprob >= t) else g


def evaluate(
    label: str,
    route: str,
    runs: tuple[list[Answer], list[Answer]],
    unanswerable: list[bool],
    t: float,
    a: float | None,
    prices: tuple[float, float],
) -> dict[str, Any]:
    """One policy: the cascade at ``t`` (see `served`), its answer withheld when it declines
    or its mean logprob < ``a`` (``None``: never)."""
    n, rows = len(unanswerable), []
    for s, g, unans in zip(*runs, unanswerable, strict=True):
        final = served(s, g, t)
        escalated = final is g and t != INF
        cost = (cost_usd(s, prices[0]) if t != INF else 0.0) + (
            cost_usd(g, prices[1]) if final is g else 0.0
        )
        latency = (s.latency_s if t != INF else 0.0) + (g.latency_s if final is g else 0.0)
        by_model = declined(final)
        by_a = a is not None and final.mean_logprob < a and not by_model
        rows.append((unans, by_model, by_a, final.correct, escalated, cost, latency))
    answered = [r for r in rows if not (r[1] or r[2])]
    right = sum(r[3] for r in answered)
    n_unans, n_ans = max(1, sum(unanswerable)), max(1, n - sum(unanswerable))
    return {
        "policy": label,
        "route": route,
        "t": None if abs(t) == INF else t,
        "a": a,
        "answered": len(answered) / n,
        "accuracy_answered": right / len(answered) if answered else None,
        "right": right / n,
        "wrong": (len(answered) - right) / n,
        "abstained": 1 - len(answered) / n,
        "declined_by_model": sum(r[1] for r in rows) / n,
        "unanswerable_abstained": sum(r[0] and (r[1] or r[2]) for r in rows) / n_unans,
        "answerable_abstained": sum(not r[0] and (r[1] or r[2]) for r in rows) / n_ans,
        "answerable_right_withheld": sum(not r[0] and r[2] and r[3] for r in rows) / n_ans,
        "escalated": sum(r[4] for r in rows) / n,
        "usd_per_1m_answered": 1e6 * sum(r[5] for r in rows) / len(answered) if answered else None,
        "latency_mean_s": statistics.fmean(r[6] for r in rows),
        "latency_p95_s": quantile([r[6] for r in rows], 0.95),
    }


def choose(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The policy to ship, and the best abstain threshold of each route.

    Per route: the fewest wrong answers among the thresholds that keep at least
    ``KEEP_RIGHT`` of the route's right answers. Across routes: the fewest wrong answers,
    and among routes within ``WRONG_TOLERANCE`` of it, the cheapest per answered question.
    """
    best = []
    for route in dict.fromkeys(r["route"] for r in rows):
        mine = [r for r in rows if r["route"] == route]
        plain = next(r for r in mine if r["a"] is None)
        kept = [r for r in mine if r["right"] >= KEEP_RIGHT * plain["right"] - 1e-9]
        best.append(min(kept, key=lambda r: (r["wrong"], -r["right"])))
    fewest = min(r["wrong"] for r in best)
    near = [r for r in best if r["wrong"] <= fewest + WRONG_TOLERANCE + 1e-9]
    return min(near, key=lambda r: r["usd_per_1m_answered"]), best


def simulate(
    small: list[Answer], large: list[Answer], unanswerable: list[bool], prices: tuple
) -> dict[str, Any]:
    """The baselines and cascades, each without and with abstain thresholds (the picked
    ones for the table, a fine grid for `choose`), and how well logprobs separate."""
    answerable = [not u for u in unanswerable]
    small_values = [s.mean_logprob for s, k in zip(small, answerable, strict=True) if k]
    ts = sorted({threshold_for_share(small_values, x) for x in TARGET_ACCEPT}, reverse=True)
    routes = [("small", -INF), ("large", INF)] + [(f"cascade t={t:.3f}", t) for t in ts]
    main, grid = [], []
    for route, t in routes:

        def run(a: float | None, route: str = route, t: float = t) -> dict[str, Any]:
            label = route + ("-only" if a is None and abs(t) == INF else "")
            label += f" + abstain a={a:.3f}" if a is not None else ""
            return evaluate(label, route, (small, large), unanswerable, t, a, prices)

        values = [
            served(s, g, t).mean_logprob
            for s, g, k in zip(small, large, answerable, strict=True)
            if k
        ]
        main += [run(None)] + [run(threshold_for_share(values, 1 - x)) for x in TARGET_ABSTAIN]
        # a fine grid: withhold 1 .. 60% of the answerable questions
        grid += [run(threshold_for_share(values, 1 - i / 100)) for i in range(1, 61)]
    main = list({r["policy"]: r for r in main}.values())
    ship, per_route = choose(main + grid)
    separation = {}
    for model, answers in (("small", small), ("large", large)):
        scores = [x.mean_logprob for x in answers]
        separation[model] = {
            "answerable_vs_unanswerable": auroc(scores, answerable),
            "right_vs_wrong_or_unanswerable": auroc(scores, [x.correct for x in answers]),
        }
    return {
        "thresholds_t": ts,
        "policies": main,
        "per_route_best": per_route,
        "ship": ship,
        "grid": grid,
        "auroc": separation,
    }


# --- reporting -----------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def table(rows: list[dict[str, Any]], ship: dict[str, Any]) -> str:
    """A Markdown table of policies; the shipped one in bold."""
    lines = [
        "| policy | answered | accuracy of answered | abstained (by the model) "
        "| unanswerable abstained | answerable abstained | answerable right withheld "
        "| wrong answers | large calls | $ / 1M answered | latency mean s | latency p95 s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = f"**{r['policy']}** (ship)" if r["policy"] == ship["policy"] else r["policy"]
        lines.append(
            f"| {name} | {_pct(r['answered'])} | {_pct(r['accuracy_answered'])} "
            f"| {_pct(r['abstained'])} ({_pct(r['declined_by_model'])}) "
            f"| {_pct(r['unanswerable_abstained'])} | {_pct(r['answerable_abstained'])} "
            f"| {_pct(r['answerable_right_withheld'])} | {_pct(r['wrong'])} "
            f"| {_pct(r['escalated'])} | {r['usd_per_1m_answered']:.2f} "
            f"| {r['latency_mean_s']:.3f} | {r['latency_p95_s']:.3f} |"
        )
    return "\n".join(lines)


def commit() -> str:
    """The short commit of the checkout, marked when the working tree differs from it."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)

    head = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    return head + (" (+ uncommitted changes)" if git("diff", "--quiet", "HEAD").returncode else "")


def ship_text(sim: dict[str, Any]) -> str:
    """Which (t, a) to ship and why, in figures."""
    ship = sim["ship"]
    plain = next(r for r in sim["policies"] if r["route"] == ship["route"] and r["a"] is None)
    others = [r for r in sim["per_route_best"] if r["policy"] != ship["policy"]]
    other = min(others, key=lambda r: r["wrong"])
    t = {"small": "t = -inf: no large call", "large": "t = +inf: no small call"}.get(
        ship["route"], f"t = {ship['t']}"
    )
    return (
        f"Ship **{ship['policy']}** ({t}; a = {ship['a']}). Rule: for each route, the abstain "
        f"threshold (of a grid withholding 1..60% of the answerable questions) with the fewest "
        f"wrong answers that still keeps {100 * KEEP_RIGHT:.0f}% of the route's right answers; "
        f"then the route with the fewest wrong answers, or the cheapest per answered question "
        f"of those within {100 * WRONG_TOLERANCE:.0f} points of it. Against the same route "
        f"without abstaining, it answers {_pct(ship['answered'])} of the questions instead "
        f"of {_pct(plain['answered'])}, {_pct(ship['accuracy_answered'])} of them right "
        f"instead of {_pct(plain['accuracy_answered'])}; wrong answers fall from "
        f"{_pct(plain['wrong'])} to {_pct(ship['wrong'])} of all questions while right ones "
        f"go from {_pct(plain['right'])} to {_pct(ship['right'])}; it withholds "
        f"{_pct(ship['unanswerable_abstained'])} of the unanswerable questions and "
        f"{_pct(ship['answerable_abstained'])} of the answerable ones (of which "
        f"{_pct(ship['answerable_right_withheld'])} would have been right); "
        f"${ship['usd_per_1m_answered']:.2f} per million answered questions instead of "
        f"${plain['usd_per_1m_answered']:.2f}, latency {ship['latency_mean_s']:.3f} s mean / "
        f"{ship['latency_p95_s']:.3f} s p95. Runner-up: {other['policy']}, "
        f"{_pct(other['wrong'])} wrong and {_pct(other['right'])} right answers, "
        f"${other['usd_per_1m_answered']:.2f} per million answered, latency "
        f"{other['latency_mean_s']:.3f} s mean / {other['latency_p95_s']:.3f} s p95. Both "
        f"thresholds are fitted on these same questions, so the figures are optimistic."
    )


def summary_markdown(report: dict[str, Any]) -> str:
    """The ``summary.md`` text."""
    s, sim = report["settings"], report["simulation"]
    auc = "; ".join(
        f"{m}: answerable vs unanswerable {v['answerable_vs_unanswerable']:.3f}, right vs "
        f"wrong-or-unanswerable {v['right_vs_wrong_or_unanswerable']:.3f}"
        for m, v in sim["auroc"].items()
        if None not in v.values()
    )
    per_category = [
        "| unanswerable category | n | abstained under the shipped policy |",
        "|---|---|---|",
        *(f"| {k} | {v['n']} | {_pct(v['abstained'])} |" for k, v in report["ship_by"].items()),
    ]
    return "\n\n".join(
        [
            "# Cascade + abstain, offline probe",
            f"{s['date']}, commit {s['commit']}, on {s['machine']}. "
            f"{s['answerable']} answerable questions ({s['questions_file']}) + "
            f"{s['unanswerable']} unanswerable ones ({s['unanswerable_file']}); "
            f"{s['small']} -> {s['large']}, {s['weight_format']}, greedy, max_tokens "
            f"{s['max_tokens']}, one request at a time, latency = lowest of {s['repeats']} runs. "
            f"Illustrative prices per million tokens: small ${s['price_small_per_mtok']}, large "
            f"${s['price_large_per_mtok']}; a withheld answer is still paid for. t: the small "
            f"answer stands when its mean token logprob >= t (t picked to accept about 30/50/70% "
            f"of the small answers to the answerable questions, as cascade_offline does); a: the "
            f"served answer is withheld when its mean token logprob < a (picked to withhold "
            f"about 5/10/20/30% of the answerable questions). An answer whose first line "
            f"declines counts as an abstention (by the model); an answered unanswerable question "
            f"counts as wrong. Shares are of all {s['answerable'] + s['unanswerable']} questions "
            f"unless named: unanswerable/answerable abstained are of that subset, 'answerable "
            f"right withheld' counts answerable questions whose withheld answer was right.",
            "## Recommendation",
            ship_text(sim),
            "## Policies",
            table(sim["policies"], sim["ship"]),
            "## The best abstain threshold of each route (the ship rule's candidates)",
            table(sim["per_route_best"], sim["ship"]),
            f"Separation by mean token logprob (AUROC) — {auc}.",
            "\n".join(per_category),
            "## Timings (s)",
            json.dumps(report["timings"], indent=2),
        ]
    )


def ship_by_category(
    questions: list[dict[str, Any]], small: list[Answer], large: list[Answer], ship: dict
) -> dict[str, dict[str, float]]:
    """Share of each unanswerable category the shipped policy withholds."""
    t = {"small": -INF, "large": INF}.get(ship["route"], ship["t"])
    result: dict[str, dict[str, float]] = {}
    for q, s, g in zip(questions, small, large, strict=True):
        if q["difficulty"] == "unanswerable":
            final = served(s, g, t)
            group = result.setdefault(q["category"], {"n": 0, "abstained": 0})
            group["n"] += 1
            group["abstained"] += declined(final) or final.mean_logprob < ship["a"]
    return {k: {"n": v["n"], "abstained": v["abstained"] / v["n"]} for k, v in result.items()}


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--unanswerable", type=Path, default=DEFAULT_UNANSWERABLE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--limit", type=int, default=None, help="first N of each set only")
    parser.add_argument("--repeats", type=int, default=2, help="runs per question")
    parser.add_argument("--price-small", type=float, default=0.05, help="$ per million tokens")
    parser.add_argument("--price-large", type=float, default=0.20, help="$ per million tokens")
    parser.add_argument(
        "--reuse", type=Path, default=None, help="answers of an earlier results.json"
    )
    return parser.parse_args()


def main() -> None:
    """Runs (or reuses) both models on both sets, simulates the policies, writes the files."""
    args = parse_args()
    answerable = load_questions(args.questions, args.limit)
    unanswerable = load_questions(args.unanswerable, args.limit)
    questions = answerable + unanswerable
    started = time.perf_counter()
    if args.reuse:
        old = json.loads(args.reuse.read_text())
        keep = Answer.__dataclass_fields__
        answers = {
            m: [Answer(**{k: a[k] for k in keep}) for a in v] for m, v in old["answers"].items()
        }
        runs = {m: (v, old["timings"][m]) for m, v in answers.items()}
        assert [a.id for a in runs[SMALL][0]] == [q["id"] for q in questions], "other questions"
    else:
        runs = {model: run_model(model, questions, args.repeats) for model in (SMALL, LARGE)}
    small, large = runs[SMALL][0], runs[LARGE][0]
    mask = [q["difficulty"] == "unanswerable" for q in questions]
    sim = simulate(small, large, mask, (args.price_small, args.price_large))
    report = {
        "settings": {
            "date": datetime.date.today().isoformat(),
            "commit": commit(),
            "machine": cpu_description(),
            "questions_file": display_path(args.questions),
            "unanswerable_file": display_path(args.unanswerable),
            "answerable": len(answerable),
            "unanswerable": len(unanswerable),
            "small": SMALL,
            "large": LARGE,
            "weight_format": WEIGHT_FORMAT,
            "max_tokens": MAX_TOKENS,
            "repeats": args.repeats,
            "price_small_per_mtok": args.price_small,
            "price_large_per_mtok": args.price_large,
            "reused_answers": display_path(args.reuse) if args.reuse else None,
        },
        "timings": {model: run[1] for model, run in runs.items()},
        "simulation": sim,
        "ship_by": ship_by_category(questions, small, large, sim["ship"]),
        "answers": {
            model: [{**asdict(a), "declined": declined(a)} for a in run[0]]
            for model, run in runs.items()
        },
    }
    report["timings"]["total_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    summary = summary_markdown(report)
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
