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

An answer whose first line declines ("I'm sorry", "I don't know", ...) counts as an
abstention by the model under every policy. An answered unanswerable question is wrong.
Cost is `cascade_offline`'s illustrative price model; a withheld answer was still paid
for, so cost per answered question = all the money spent / the questions answered.

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
WRONG_PENALTY = 1.0  # ship rule: a wrong answer costs as much as a right one earns
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


def evaluate(
    label: str,
    small: list[Answer],
    large: list[Answer],
    unanswerable: list[bool],
    t: float,
    a: float | None,
    prices: tuple[float, float],
) -> dict[str, Any]:
    """One policy: the small answer stands when its mean logprob >= ``t`` (``-inf``: always,
    the large model never runs; ``inf``: never, the small model never runs), and the final
    answer is withheld when its mean logprob < ``a`` (``None``: never) or it declines."""
    n = len(small)
    answered, right, withheld_by_model, costs, latencies, escalated = [], [], [], [], [], []
    for s, g in zip(small, large, strict=True):
        accepted = t == -INF or (t != INF and s.mean_logprob >= t)
        final = s if accepted else g
        cost, latency = 0.0, 0.0
        if t != INF:
            cost, latency = cost_usd(s, prices[0]), s.latency_s
        if not accepted:
            cost, latency = cost + cost_usd(g, prices[1]), latency + g.latency_s
        by_model = declined(final)
        withheld = by_model or (a is not None and final.mean_logprob < a)
        answered.append(not withheld)
        right.append(not withheld and final.correct)
        withheld_by_model.append(by_model)
        costs.append(cost)
        latencies.append(latency)
        escalated.append(not accepted and t != INF)
    n_unans = sum(unanswerable) or 1
    n_ans = (n - sum(unanswerable)) or 1
    n_answered = sum(answered)
    return {
        "policy": label,
        "t": None if abs(t) == INF else t,
        "a": a,
        "uses_small": t != INF,
        "uses_large": t != -INF,
        "answered": n_answered / n,
        "accuracy_answered": sum(right) / n_answered if n_answered else None,
        "right": sum(right) / n,
        "wrong": (n_answered - sum(right)) / n,
        "abstained": 1 - n_answered / n,
        "declined_by_model": sum(withheld_by_model) / n,
        "unanswerable_abstained": sum(
            not ok for ok, u in zip(answered, unanswerable, strict=True) if u
        )
        / n_unans,
        "answerable_abstained": sum(
            not ok for ok, u in zip(answered, unanswerable, strict=True) if not u
        )
        / n_ans,
        "answerable_accuracy_answered": _share(
            [r for r, ok, u in zip(right, answered, unanswerable, strict=True) if ok and not u]
        ),
        "escalated": sum(escalated) / n,
        "usd_per_1m_answered": 1e6 * sum(costs) / n_answered if n_answered else None,
        "latency_mean_s": statistics.fmean(latencies),
        "latency_p95_s": quantile(latencies, 0.95),
        "net": (sum(right) - WRONG_PENALTY * (n_answered - sum(right))) / n,
    }


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def final_logprobs(
    small: list[Answer], large: list[Answer], mask: list[bool], t: float
) -> list[float]:
    """Mean logprobs of the answers a cascade at ``t`` serves, on the questions in ``mask``."""
    values = []
    for s, g, keep in zip(small, large, mask, strict=True):
        if keep:
            accepted = t == -INF or (t != INF and s.mean_logprob >= t)
            values.append((s if accepted else g).mean_logprob)
    return values


def simulate(
    small: list[Answer], large: list[Answer], unanswerable: list[bool], prices: tuple
) -> dict[str, Any]:
    """The baselines, the cascades, each with abstain thresholds, and a fine grid for the
    ship rule (the highest net right - wrong per question; ties: the cheapest)."""
    answerable = [not u for u in unanswerable]
    ts = sorted(
        {
            threshold_for_share(
                [s.mean_logprob for s, k in zip(small, answerable, strict=True) if k], share
            )
            for share in TARGET_ACCEPT
        },
        reverse=True,
    )
    routes = [("small", -INF), ("large", INF)] + [(f"cascade t={t:.3f}", t) for t in ts]

    def run(label: str, t: float, a: float | None) -> dict[str, Any]:
        return evaluate(label, small, large, unanswerable, t, a, prices)

    main, grid = [], []
    for name, t in routes:
        main.append(run(name + ("-only" if abs(t) == INF else ""), t, None))
        values = final_logprobs(small, large, answerable, t)
        for share in TARGET_ABSTAIN:
            a = threshold_for_share(values, 1 - share)
            main.append(run(f"{name} + abstain a={a:.3f}", t, a))
        for share in [i / 40 for i in range(1, 25)]:  # withhold 2.5% .. 60% of answerable
            a = threshold_for_share(values, 1 - share)
            grid.append(run(f"{name} + abstain a={a:.3f}", t, a))
    best = max(r["net"] for r in grid + main)
    ship = min(
        (r for r in grid + main if r["net"] >= best - 1e-9),
        key=lambda r: r["usd_per_1m_answered"] or INF,
    )
    separation = {}
    for model, answers in (("small", small), ("large", large)):
        scores = [x.mean_logprob for x in answers]
        separation[model] = {
            "answerable_vs_unanswerable": auroc(scores, answerable),
            "right_vs_wrong_or_unanswerable": auroc(scores, [x.correct for x in answers]),
        }
    return {"thresholds_t": ts, "policies": main, "grid": grid, "ship": ship, "auroc": separation}


# --- reporting -----------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of policies."""
    head = (
        "| policy | answered | accuracy of answered | abstained | unanswerable abstained "
        "| answerable abstained | wrong answers | large calls | $ / 1M answered "
        "| latency mean s | latency p95 s |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        cost = r["usd_per_1m_answered"]
        lines.append(
            f"| {r['policy']} | {_pct(r['answered'])} | {_pct(r['accuracy_answered'])} "
            f"| {_pct(r['abstained'])} | {_pct(r['unanswerable_abstained'])} "
            f"| {_pct(r['answerable_abstained'])} | {_pct(r['wrong'])} | {_pct(r['escalated'])} "
            f"| {'-' if cost is None else f'{cost:.2f}'} | {r['latency_mean_s']:.3f} "
            f"| {r['latency_p95_s']:.3f} |"
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
    by_label = {r["policy"]: r for r in sim["policies"]}
    route = ship["policy"].split(" + ")[0]
    plain = by_label.get(route) or by_label.get(route + "-only")
    t = "small always accepted" if ship["t"] is None and not ship["uses_large"] else None
    t = t or ("large always (no small call)" if ship["t"] is None else f"t = {ship['t']:.3f}")
    return (
        f"Ship **{ship['policy']}** ({t}, a = {ship['a']:.3f}). Rule: the highest "
        f"right - {WRONG_PENALTY:g} x wrong answers per question over every policy above and a "
        f"grid of a (2.5%..60% of answerable withheld), the cheapest per answered question on "
        f"ties. It answers {_pct(ship['answered'])} of all questions with "
        f"{_pct(ship['accuracy_answered'])} of them right (the same route without abstaining: "
        f"{_pct(plain['answered'])}, {_pct(plain['accuracy_answered'])}); it withholds "
        f"{_pct(ship['unanswerable_abstained'])} of the unanswerable questions and "
        f"{_pct(ship['answerable_abstained'])} of the answerable ones; wrong answers fall from "
        f"{_pct(plain['wrong'])} to {_pct(ship['wrong'])} of questions, for "
        f"${ship['usd_per_1m_answered']:.2f} per million answered questions (without "
        f"abstaining ${plain['usd_per_1m_answered']:.2f}) and {ship['latency_mean_s']:.3f} s "
        f"mean / {ship['latency_p95_s']:.3f} s p95 latency. Both thresholds are fitted on "
        f"these same questions, so the figures are optimistic."
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
            f"answer stands when its mean token logprob >= t; a: the final answer is withheld "
            f"when its mean token logprob < a (picked to withhold about 5/10/20/30% of the "
            f"answerable questions). An answer whose first line declines counts as an "
            f"abstention; an answered unanswerable question counts as wrong. Shares are of all "
            f"{s['answerable'] + s['unanswerable']} questions unless named.",
            "## Recommendation",
            ship_text(sim),
            "## Policies",
            table(sim["policies"] + [sim["ship"]]),
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
    t = ship["t"] if ship["t"] is not None else (INF if ship["uses_large"] else -INF)
    result: dict[str, dict[str, float]] = {}
    for q, s, g in zip(questions, small, large, strict=True):
        if q["difficulty"] != "unanswerable":
            continue
        accepted = t == -INF or (t != INF and s.mean_logprob >= t)
        final = s if accepted else g
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
        fields = set(Answer.__dataclass_fields__)
        runs = {
            m: (
                [Answer(**{k: v for k, v in a.items() if k in fields}) for a in rows],
                old["timings"][m],
            )
            for m, rows in old["answers"].items()
        }
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
