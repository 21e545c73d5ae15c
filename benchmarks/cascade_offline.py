"""Offline probe of a small -> large cascade on a labelled question set.

Runs every question of a JSONL set (``benchmarks/data/cascade_questions.jsonl``) greedily
through a small model and a large one with the offline API, one request at a time (so the
latency is that of a lone request), scores each answer, and records its token logprobs.
Then it simulates the ``cascade`` routing strategy offline: the small model's answer is
accepted when a logprob check passes (mean or minimum token logprob >= a threshold),
otherwise the large model's answer is used. Prints the figures of small-only, large-only
and the cascade at a sweep of thresholds (three picked to accept about 30/50/70% of the
small answers) and writes ``results.json`` and ``summary.md`` into ``--out``.

usage:
  flock /tmp/bench.lock .venv/bin/python benchmarks/cascade_offline.py \\
      [--questions PATH] [--out DIR] [--limit N]

Cost is illustrative: (prompt + output tokens) x a price per million tokens per model
(``--price-small``, ``--price-large``); the cascade pays the small model on every question
and the large one on escalated ones, and its latency is the small latency plus the large
latency when escalated.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inferline.bench.host import cpu_description

ROOT = Path(__file__).resolve().parent
DEFAULT_QUESTIONS = ROOT / "data" / "cascade_questions.jsonl"
DEFAULT_OUT = ROOT / "results" / "cascade_offline"
SMALL, LARGE = "smollm2-135m", "qwen2.5-coder-0.5b"
MAX_TOKENS = 24
WEIGHT_FORMAT = "int8"  # deterministic kernels: reruns give the same tokens
TARGET_ACCEPT = (0.3, 0.5, 0.7)  # shares of small answers accepted by the three thresholds
SIGNALS = ("mean_logprob", "min_logprob")  # what a route's check may compare to a threshold

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


# --- scoring -------------------------------------------------------------------------------


def answer_line(text: str) -> str:
    """The first non-empty line of an answer: small models ramble on after it."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def normalize(text: str) -> str:
    """Lower case, accents folded, punctuation turned into spaces, spaces collapsed."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", folded.lower()).split())


def first_number(text: str) -> float | None:
    """The first number of ``text``, after the last ``=`` when there is one.

    ``7 + 5 = 12`` gives 12 (the model echoed the sum); ``1,000`` gives 1000.
    """
    tail = text.rsplit("=", 1)[-1]
    found = _NUMBER.search(tail)
    return float(found.group().replace(",", "")) if found else None


def is_correct(text: str, answers: list[str], match: str) -> bool:
    """Whether the first line of ``text`` gives one of ``answers``.

    ``match``: ``exact`` (the whole normalized line is an answer), ``contains`` (an answer
    occurs as whole words in the line) or ``number`` (the line's first number, see
    `first_number`, equals the answer numerically). Case and punctuation never matter.
    """
    line = answer_line(text)
    if match == "number":
        value = first_number(line)
        return value is not None and any(math.isclose(value, float(a)) for a in answers)
    said = normalize(line)
    wanted = [normalize(a) for a in answers]
    if match == "exact":
        return said in wanted
    if match == "contains":
        padded = f" {said} "
        return any(f" {a} " in padded for a in wanted)
    raise ValueError(f"unknown match kind {match!r}")


# --- running the models --------------------------------------------------------------------


@dataclass
class Answer:
    """One model's answer to one question, with what a cascade check can look at."""

    id: str
    text: str
    correct: bool
    mean_logprob: float
    min_logprob: float
    line_mean_logprob: float  # over the tokens of the first line only (observation)
    prompt_tokens: int
    output_tokens: int
    latency_s: float


def load_questions(path: Path, limit: int | None) -> list[dict[str, Any]]:
    """The questions of a JSONL file, the first ``limit`` of them when given."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def line_token_count(logprobs: list[Any]) -> int:
    """How many leading tokens make up the first non-empty line of the output."""
    seen = ""
    for count, item in enumerate(logprobs, 1):
        seen += item.token
        if "\n" in seen.lstrip("\n"):
            return count
    return len(logprobs)


def to_answer(question: dict[str, Any], output: Any, latency_s: float) -> Answer:
    """An `Answer` from a finished `RequestOutput`."""
    completion = output.outputs[0]
    values = [lp.logprob for lp in completion.logprobs or []] or [0.0]
    line_values = values[: max(1, line_token_count(completion.logprobs or []))]
    return Answer(
        id=question["id"],
        text=completion.text,
        correct=is_correct(completion.text, question["answers"], question["match"]),
        mean_logprob=statistics.fmean(values),
        min_logprob=min(values),
        line_mean_logprob=statistics.fmean(line_values),
        prompt_tokens=len(output.prompt_token_ids),
        output_tokens=completion.num_tokens,
        latency_s=latency_s,
    )


def timed_chat(
    llm: Any, question: dict[str, Any], params: Any, repeats: int
) -> tuple[Any, float, bool]:
    """The output for one question, its lowest latency over ``repeats`` runs, and whether
    every run gave the same text (greedy int8 should)."""
    latencies, texts, output = [], set(), None
    for _ in range(repeats):
        begin = time.perf_counter()
        output = llm.chat(question["messages"], params)[0]
        latencies.append(time.perf_counter() - begin)
        texts.add(output.outputs[0].text)
    return output, min(latencies), len(texts) == 1


def run_model(
    model: str, questions: list[dict[str, Any]], repeats: int
) -> tuple[list[Answer], dict]:
    """Answers of one model to every question, one request at a time, and its timings.

    Each question runs ``repeats`` times and keeps its lowest latency: on a shared machine
    the other runs' noise only ever adds time. Prefix caching is off, so every request is
    computed from scratch (prompt included) and the answers do not depend on the order.
    """
    from inferline import LLM, SamplingParams
    from inferline.cli.main import default_cache_dir
    from inferline.engine import CacheConfig, EngineConfig

    start = time.perf_counter()
    config = EngineConfig(
        model=model,
        weight_format=WEIGHT_FORMAT,
        cache_dir=default_cache_dir(),
        # no prefix caching: a prompt served from the cache is computed along another path
        # and may flip a near-tie greedy token, so answers would depend on question order
        cache=CacheConfig(enable_prefix_caching=False),
    )
    llm = LLM(config=config)
    loaded = time.perf_counter()
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, logprobs=0)
    llm.chat([{"role": "user", "content": "Say hello."}], params)  # warm-up: kernels, caches
    warmed = time.perf_counter()
    answers, unstable = [], []
    for question in questions:
        output, latency, stable = timed_chat(llm, question, params, repeats)
        answers.append(to_answer(question, output, latency))
        if not stable:
            unstable.append(question["id"])
    timings = {
        "load_s": loaded - start,
        "warmup_s": warmed - loaded,
        "questions_s": time.perf_counter() - warmed,
        "repeats": repeats,
        "nondeterministic_ids": unstable,
    }
    return answers, timings


# --- the cascade simulation ----------------------------------------------------------------


def cost_usd(answer: Answer, price_per_mtok: float) -> float:
    """The illustrative price of one answer: input plus output tokens."""
    return (answer.prompt_tokens + answer.output_tokens) * price_per_mtok / 1e6


def summarize(
    label: str,
    small: list[Answer],
    large: list[Answer],
    accepted: list[bool],
    prices: tuple[float, float],
    *,
    small_runs: bool = True,
) -> dict[str, Any]:
    """Accuracy, escalation, cost and latency when the small answers in ``accepted`` stand.

    The small model is paid and waited for on every question when ``small_runs`` (a
    cascade, small-only), never otherwise (large-only); the large one when not accepted.
    """
    n = len(small)
    correct = [
        s.correct if a else g.correct for s, g, a in zip(small, large, accepted, strict=True)
    ]
    costs, latencies = [], []
    for s, g, a in zip(small, large, accepted, strict=True):
        cost = cost_usd(s, prices[0]) if small_runs else 0.0
        latency = s.latency_s if small_runs else 0.0
        if not a:
            cost += cost_usd(g, prices[1])
            latency += g.latency_s
        costs.append(cost)
        latencies.append(latency)
    return {
        "strategy": label,
        "accuracy": sum(correct) / n,
        "escalated": 1 - sum(accepted) / n,
        "cost_usd_per_1m_questions": 1e6 * statistics.fmean(costs),
        "latency_mean_s": statistics.fmean(latencies),
        "latency_p90_s": quantile(latencies, 0.9),
    }


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def cascade(
    small: list[Answer],
    large: list[Answer],
    signal: str,
    threshold: float,
    prices: tuple[float, float],
) -> dict[str, Any]:
    """The cascade that accepts a small answer when ``signal >= threshold``."""
    accepted = [getattr(s, signal) >= threshold for s in small]
    row = summarize(f"cascade {signal}>={threshold:.3f}", small, large, accepted, prices)
    accepted_correct = sum(s.correct for s, a in zip(small, accepted, strict=True) if a)
    row.update(
        signal=signal,
        threshold=threshold,
        accepted_precision=accepted_correct / sum(accepted) if any(accepted) else None,
    )
    return row


def threshold_for_share(values: list[float], share: float) -> float:
    """A round threshold that accepts about ``share`` of ``values`` (``>=`` accepts).

    It lies halfway between the value ranked at the share and the next one down.
    """
    ordered = sorted(values, reverse=True)
    k = min(len(ordered) - 1, max(1, round(share * len(ordered))))
    return round((ordered[k - 1] + ordered[k]) / 2, 3)


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """The chance that a right answer scores higher than a wrong one (ties count half)."""
    right = [s for s, ok in zip(scores, labels, strict=True) if ok]
    wrong = [s for s, ok in zip(scores, labels, strict=True) if not ok]
    if not right or not wrong:
        return None
    wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
    return wins / (len(right) * len(wrong))


def simulate(
    small: list[Answer], large: list[Answer], prices: tuple[float, float]
) -> dict[str, Any]:
    """Baselines, a sweep of thresholds per signal, and the three picked thresholds."""
    everyone = [True] * len(small)
    baselines = [
        summarize("small-only", small, large, everyone, prices),
        summarize("large-only", small, large, [False] * len(small), prices, small_runs=False),
        summarize("oracle", small, large, [s.correct for s in small], prices),
    ]
    sweep, picked = {}, {}
    for signal in SIGNALS:
        values = [getattr(s, signal) for s in small]
        shares = [i / 10 for i in range(1, 10)]
        thresholds = sorted({threshold_for_share(values, share) for share in shares})
        sweep[signal] = [
            cascade(small, large, signal, threshold, prices) for threshold in thresholds
        ]
        picked[signal] = [
            cascade(small, large, signal, threshold_for_share(values, share), prices)
            for share in TARGET_ACCEPT
        ]
    labels = [s.correct for s in small]
    separation = {
        name: auroc([getattr(s, name) for s in small], labels)
        for name in (*SIGNALS, "line_mean_logprob")
    }
    return {"baselines": baselines, "picked": picked, "sweep": sweep, "auroc": separation}


# --- reporting -----------------------------------------------------------------------------


def breakdown(
    questions: list[dict[str, Any]], small: list[Answer], large: list[Answer]
) -> dict[str, dict[str, dict[str, float]]]:
    """Accuracy of each model per category and per difficulty, with counts."""
    result: dict[str, dict[str, dict[str, float]]] = {}
    for key in ("category", "difficulty"):
        groups: dict[str, list[int]] = {}
        for i, question in enumerate(questions):
            groups.setdefault(question[key], []).append(i)
        result[key] = {
            name: {
                "n": len(idx),
                "small": sum(small[i].correct for i in idx) / len(idx),
                "large": sum(large[i].correct for i in idx) / len(idx),
            }
            for name, idx in sorted(groups.items())
        }
    return result


def format_row(row: dict[str, Any]) -> str:
    """One line of the results table."""
    precision = row.get("accepted_precision")
    return (
        f"| {row['strategy']:<32} | {100 * row['accuracy']:5.1f}% | {100 * row['escalated']:5.1f}% "
        f"| {row['cost_usd_per_1m_questions']:8.2f} | {row['latency_mean_s']:.3f} "
        f"| {row['latency_p90_s']:.3f} | "
        + (f"{100 * precision:5.1f}% |" if precision is not None else "    - |")
    )


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of strategies."""
    head = (
        "| strategy                         | accuracy | large calls | $ / 1M questions "
        "| latency mean s | latency p90 s | accepted small right |\n"
        "|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *(format_row(r) for r in rows)])


def breakdown_table(groups: dict[str, dict[str, float]], title: str) -> str:
    """A Markdown table of per-group accuracies."""
    lines = [f"| {title} | n | small | large |", "|---|---|---|---|"]
    for name, g in groups.items():
        lines.append(f"| {name} | {g['n']} | {100 * g['small']:.0f}% | {100 * g['large']:.0f}% |")
    return "\n".join(lines)


def summary_markdown(report: dict[str, Any]) -> str:
    """The ``summary.md`` text: settings, the main table, the sweep and the breakdowns."""
    sim, settings = report["simulation"], report["settings"]
    picked = [row for signal in SIGNALS for row in sim["picked"][signal]]
    sweep = [row for signal in SIGNALS for row in sim["sweep"][signal]]
    auroc_line = ", ".join(
        f"{k} {v:.3f}" if v is not None else f"{k} -" for k, v in sim["auroc"].items()
    )
    return "\n\n".join(
        [
            "# Cascade small -> large, offline probe",
            f"{settings['questions']} questions ({settings['questions_file']}), "
            f"{settings['small']} -> {settings['large']}, {settings['weight_format']}, greedy, "
            f"max_tokens {settings['max_tokens']}, one request at a time on {settings['machine']}, "
            f"latency = lowest of {settings['repeats']} runs, prefix caching off. "
            f"Illustrative prices per million tokens (input and output alike): small "
            f"${settings['price_small_per_mtok']}, large ${settings['price_large_per_mtok']}. "
            f"Answers are scored on their first line. Oracle = accept exactly the right small "
            f"answers (an upper bound for any check).",
            "## Baselines and three thresholds per signal (accept about 30/50/70% of small "
            "answers)",
            table(sim["baselines"] + picked),
            f"Separation of right from wrong small answers (AUROC): {auroc_line}.",
            "## Sweep (accepting 10%..90% of small answers)",
            table(sweep),
            "## Accuracy by category and difficulty",
            breakdown_table(report["breakdown"]["category"], "category"),
            breakdown_table(report["breakdown"]["difficulty"], "difficulty"),
            "## Timings (s)",
            json.dumps(report["timings"], indent=2),
        ]
    )


def display_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    try:
        return str(path.resolve().relative_to(ROOT.parent))
    except ValueError:
        return str(path)


def build_report(
    args: argparse.Namespace,
    questions: list[dict[str, Any]],
    runs: dict[str, tuple[list[Answer], dict]],
) -> dict[str, Any]:
    """Everything the run measured, as one JSON-ready dict."""
    small, large = runs[SMALL][0], runs[LARGE][0]
    prices = (args.price_small, args.price_large)
    return {
        "settings": {
            "questions_file": display_path(args.questions),
            "questions": len(questions),
            "small": SMALL,
            "large": LARGE,
            "weight_format": WEIGHT_FORMAT,
            "max_tokens": MAX_TOKENS,
            "repeats": args.repeats,
            "price_small_per_mtok": args.price_small,
            "price_large_per_mtok": args.price_large,
            "machine": cpu_description(),
        },
        "timings": {model: run[1] for model, run in runs.items()},
        "simulation": simulate(small, large, prices),
        "breakdown": breakdown(questions, small, large),
        "answers": {model: [asdict(a) for a in run[0]] for model, run in runs.items()},
    }


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs per question; the lowest latency counts"
    )
    parser.add_argument("--price-small", type=float, default=0.05, help="$ per million tokens")
    parser.add_argument("--price-large", type=float, default=0.20, help="$ per million tokens")
    return parser.parse_args()


def main() -> None:
    """Runs both models, simulates the cascade, prints the tables and writes the files."""
    args = parse_args()
    questions = load_questions(args.questions, args.limit)
    started = time.perf_counter()
    runs = {model: run_model(model, questions, args.repeats) for model in (SMALL, LARGE)}
    report = build_report(args, questions, runs)
    report["timings"]["total_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    summary = summary_markdown(report)
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
