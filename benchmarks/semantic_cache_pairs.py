"""How well does a cosine-similarity threshold tell paraphrases from near misses?

A semantic response cache serves a cached answer when the last user message of a request is
close enough (cosine similarity of sentence embeddings >= a threshold) to a cached one, all
else in the request being identical. This probe measures that decision on a labelled set of
message pairs (``benchmarks/data/semantic_cache_pairs.jsonl``): each pair is a
``paraphrase`` (``same: true``, one answer serves both), a ``near_miss`` (``same: false``,
close wording but a different answer) or ``unrelated`` (``same: false``).

Both sides of every pair are embedded with inferline's own ``SentenceEmbedder``
(all-MiniLM-L6-v2; unit vectors, so the cosine is a dot product). For each threshold of a
sweep it reports:

* hit rate: the share of ``same`` pairs whose similarity is >= the threshold (cache hits we
  want);
* wrong-hit rate: the share of all hits that are ``same: false`` pairs (a wrong answer served);
* wrong served: the share of ``same: false`` pairs that would get a wrong answer.

Then the lowest threshold of the sweep whose wrong-hit rate is under 1%, three informative
thresholds around it, the similarity distribution per kind, and the hardest pairs (near
misses with the highest similarity, paraphrases with the lowest). Prints the summary and
writes ``results.json`` and ``summary.md`` into ``--out``.

usage:
  flock /tmp/bench.lock .venv/bin/python benchmarks/semantic_cache_pairs.py \\
      [--pairs PATH] [--out DIR]

Caveat: the set is small (about 120 ``same: false`` pairs), so a wrong-hit rate under 1%
here means no wrong hit at all, or at most one once hits pass 100; it is an estimate for
this set, not a guarantee for real traffic.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from inferline.bench.host import cpu_description

ROOT = Path(__file__).resolve().parent
DEFAULT_PAIRS = ROOT / "data" / "semantic_cache_pairs.jsonl"
DEFAULT_OUT = ROOT / "results" / "semantic_cache_pairs"
MODEL = "all-minilm-l6-v2"
KINDS = ("paraphrase", "rewrite", "near_miss", "unrelated")
SWEEP = [round(t / 100, 2) for t in range(80, 100)]  # 0.80 .. 0.99
FINE_SWEEP = [round(t / 1000, 3) for t in range(800, 1000)]  # 0.800 .. 0.999
WRONG_HIT_TARGET = 0.01
FALLBACK_PICKS = (0.90, 0.95)  # shown when no threshold of the sweep is under the target
BATCH_SIZE = 32
WORST = 15  # how many of the hardest pairs to list per side


# --- the pairs -----------------------------------------------------------------------------


def check_pair(row: dict[str, Any], seen: set[str]) -> None:
    """Raises ValueError when a pair is malformed or its label disagrees with its kind."""
    missing = {"id", "a", "b", "same", "kind", "topic"} - row.keys()
    if missing:
        raise ValueError(f"pair {row.get('id')!r}: missing {sorted(missing)}")
    if row["id"] in seen:
        raise ValueError(f"pair {row['id']!r}: duplicate id")
    if row["kind"] not in KINDS:
        raise ValueError(f"pair {row['id']!r}: unknown kind {row['kind']!r}")
    if row["same"] != (row["kind"] in ("paraphrase", "rewrite")):
        raise ValueError(f"pair {row['id']!r}: same={row['same']} with kind {row['kind']!r}")
    if not row["a"].strip() or not row["b"].strip() or row["a"] == row["b"]:
        raise ValueError(f"pair {row['id']!r}: empty or identical sides")


def load_pairs(path: Path) -> list[dict[str, Any]]:
    """The checked pairs of a JSONL file."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    seen: set[str] = set()
    for row in rows:
        check_pair(row, seen)
        seen.add(row["id"])
    return rows


# --- embedding -----------------------------------------------------------------------------


def load_embedder() -> Any:
    """inferline's sentence embedder, weights loaded."""
    from inferline.predictors import SentenceEmbedder

    embedder = SentenceEmbedder(MODEL)
    embedder.setup()
    return embedder


def embed(embedder: Any, texts: list[str]) -> dict[str, np.ndarray]:
    """One unit vector per distinct text, computed in batches."""
    distinct = sorted(set(texts))
    vectors: dict[str, np.ndarray] = {}
    for start in range(0, len(distinct), BATCH_SIZE):
        chunk = distinct[start : start + BATCH_SIZE]
        rows = [embedder.decode(text, f"text[{start + i}]") for i, text in enumerate(chunk)]
        for text, vector in zip(chunk, embedder.predict(rows), strict=True):
            vectors[text] = np.asarray(vector, dtype=np.float32)
    return vectors


def similarities(pairs: list[dict[str, Any]], vectors: dict[str, np.ndarray]) -> list[float]:
    """The cosine similarity of each pair: a dot product (the vectors have unit length), in
    float64 and clamped to [-1, 1] as the gateway's cache store computes it."""
    sims = []
    for pair in pairs:
        a, b = (vectors[pair[side]].astype(np.float64) for side in ("a", "b"))
        sims.append(max(-1.0, min(1.0, float(np.dot(a, b)))))
    return sims


# --- the threshold sweep -------------------------------------------------------------------


def at_threshold(pairs: list[dict[str, Any]], sims: list[float], threshold: float) -> dict:
    """Hit rate, wrong-hit rate and wrong-served shares when ``sim >= threshold`` hits."""
    hit = [s >= threshold for s in sims]
    same = [p["same"] for p in pairs]
    hits = sum(hit)
    right_hits = sum(h and s for h, s in zip(hit, same, strict=True))
    wrong_hits = hits - right_hits
    near = [h for h, p in zip(hit, pairs, strict=True) if p["kind"] == "near_miss"]
    n_same, n_diff = sum(same), len(same) - sum(same)
    return {
        "threshold": threshold,
        "hits": hits,
        "right_hits": right_hits,
        "wrong_hits": wrong_hits,
        "hit_rate": right_hits / n_same if n_same else None,
        "wrong_hit_rate": wrong_hits / hits if hits else 0.0,
        "wrong_served": wrong_hits / n_diff if n_diff else None,
        "near_miss_served": sum(near) / len(near) if near else None,
    }


def sweep(pairs: list[dict[str, Any]], sims: list[float], thresholds: list[float]) -> list[dict]:
    """`at_threshold` for every threshold."""
    return [at_threshold(pairs, sims, t) for t in thresholds]


def lowest_safe(rows: list[dict], target: float = WRONG_HIT_TARGET) -> float | None:
    """The lowest threshold whose wrong-hit rate is under ``target`` (with at least one hit)."""
    for row in rows:
        if row["hits"] and row["wrong_hit_rate"] < target:
            return row["threshold"]
    return None


def lowest_safe_onward(rows: list[dict], target: float = WRONG_HIT_TARGET) -> float | None:
    """The lowest threshold from which every higher one stays under ``target`` too."""
    found = None
    for row in reversed(rows):
        if row["wrong_hit_rate"] >= target:
            break
        if row["hits"]:
            found = row["threshold"]
    return found


def gateway_default() -> float | None:
    """The gateway's default semantic-cache threshold, when this checkout has one."""
    try:
        from inferline.cache import DEFAULT_THRESHOLD
    except ImportError:
        return None
    return float(DEFAULT_THRESHOLD)


def picked_thresholds(rows: list[dict], safe: float | None, default: float | None) -> list[float]:
    """Informative thresholds, plus the gateway's default when known.

    With a safe threshold (wrong-hit rate under 1%): it, 0.05 below it and 0.02 above it.
    Without one: the threshold with the lowest wrong-hit rate, and ``FALLBACK_PICKS``.
    """
    if safe is not None:
        candidates = {round(safe - 0.05, 2), safe, round(safe + 0.02, 2)}
    else:
        best = min(rows, key=lambda r: (r["wrong_hit_rate"], r["threshold"]))
        candidates = {best["threshold"], *FALLBACK_PICKS}
    clamped = {min(max(t, SWEEP[0]), SWEEP[-1]) for t in candidates}
    return sorted(clamped | ({default} if default is not None else set()))


# --- distributions and hard cases ----------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def distribution(values: list[float]) -> dict[str, float]:
    """Count, min, p10, median, p90 and max."""
    return {
        "n": len(values),
        "min": min(values),
        "p10": quantile(values, 0.1),
        "median": statistics.median(values),
        "p90": quantile(values, 0.9),
        "max": max(values),
    }


def by_group(pairs: list[dict[str, Any]], sims: list[float], key: str) -> dict[str, dict]:
    """The similarity distribution of each value of ``key`` (``kind``, or kind and topic)."""
    groups: dict[str, list[float]] = {}
    for pair, sim in zip(pairs, sims, strict=True):
        label = pair["kind"] if key == "kind" else f"{pair['kind']}/{pair['topic']}"
        groups.setdefault(label, []).append(sim)
    return {name: distribution(values) for name, values in sorted(groups.items())}


def auroc(pairs: list[dict[str, Any]], sims: list[float], negative: str | None) -> float:
    """Chance that a paraphrase scores above a ``negative`` kind pair (any same: false if
    None); ties count half."""
    pos = [s for p, s in zip(pairs, sims, strict=True) if p["same"]]
    neg = [
        s
        for p, s in zip(pairs, sims, strict=True)
        if not p["same"] and (negative is None or p["kind"] == negative)
    ]
    wins = sum((x > y) + 0.5 * (x == y) for x in pos for y in neg)
    return wins / (len(pos) * len(neg))


def hardest(pairs: list[dict[str, Any]], sims: list[float], kind: str, high: bool) -> list:
    """The ``WORST`` pairs of ``kind`` with the highest (or lowest) similarity."""
    rows = [
        {"id": p["id"], "topic": p["topic"], "similarity": s, "a": p["a"], "b": p["b"]}
        for p, s in zip(pairs, sims, strict=True)
        if p["kind"] == kind
    ]
    rows.sort(key=lambda r: r["similarity"], reverse=high)
    return rows[:WORST]


def counts(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Pairs per kind, per topic, and per topic and kind."""
    return {
        "total": len(pairs),
        "kind": dict(Counter(p["kind"] for p in pairs)),
        "topic": dict(sorted(Counter(p["topic"] for p in pairs).items())),
        "topic_kind": dict(sorted(Counter(f"{p['topic']}/{p['kind']}" for p in pairs).items())),
    }


# --- reporting -----------------------------------------------------------------------------


def pct(value: float | None) -> str:
    """A share as a percentage with one decimal, ``-`` for None."""
    return "-" if value is None else f"{100 * value:.1f}%"


def sweep_table(rows: list[dict]) -> str:
    """A Markdown table of thresholds."""
    lines = [
        "| threshold | hit rate (same) | hits | wrong hits | wrong-hit rate "
        "| same:false served | near misses served |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['threshold']:.2f} | {pct(r['hit_rate'])} | {r['hits']} | {r['wrong_hits']} "
            f"| {pct(r['wrong_hit_rate'])} | {pct(r['wrong_served'])} "
            f"| {pct(r['near_miss_served'])} |"
        )
    return "\n".join(lines)


def distribution_table(groups: dict[str, dict]) -> str:
    """A Markdown table of similarity distributions."""
    lines = ["| group | n | min | p10 | median | p90 | max |", "|---|---|---|---|---|---|---|"]
    for name, d in groups.items():
        lines.append(
            f"| {name} | {d['n']} | {d['min']:.3f} | {d['p10']:.3f} | {d['median']:.3f} "
            f"| {d['p90']:.3f} | {d['max']:.3f} |"
        )
    return "\n".join(lines)


def pairs_table(rows: list[dict]) -> str:
    """A Markdown table of listed pairs."""
    lines = ["| id | topic | similarity | a | b |", "|---|---|---|---|---|"]
    for r in rows:
        a, b = (text.replace("|", "\\|") for text in (r["a"], r["b"]))
        lines.append(f"| {r['id']} | {r['topic']} | {r['similarity']:.3f} | {a} | {b} |")
    return "\n".join(lines)


def headline(report: dict[str, Any]) -> str:
    """The settings and the lowest safe threshold, in words."""
    s, c, res = report["settings"], report["counts"], report["results"]
    kinds = ", ".join(f"{c['kind'].get(k, 0)} {k}" for k in KINDS)
    exact = res["lowest_under_1pct_fine"]
    exact_text = f"{exact:.3f}" if exact is not None else "none"
    safe = res["lowest_under_1pct"]
    onward = res["lowest_under_1pct_onward"]
    sep = res["separation"]
    default = res["gateway_default_threshold"]
    return (
        f"{c['total']} pairs ({s['pairs_file']}): {kinds}; {len(c['topic'])} topics. "
        f"Model {s['model']} (inferline SentenceEmbedder), cosine similarity, a hit when "
        f"similarity >= threshold, on {s['machine']}. Wrong-hit rate = wrong hits / all hits; "
        f"'same:false served' = wrong hits / all same:false pairs.\n\n"
        f"**Lowest threshold (step 0.01) with a wrong-hit rate under 1%: "
        f"{safe if safe is not None else 'none'}** (every higher one of the sweep stays under "
        f"1% from: {onward if onward is not None else 'none'}; at step 0.001 up to 0.999: "
        f"{exact_text}). The most similar same:false pair scores {sep['max_same_false']:.4f}, "
        f"the most similar paraphrase {sep['max_paraphrase']:.4f} "
        f"({sep['paraphrases_above_max_same_false']} paraphrases above every same:false pair). "
        f"AUROC paraphrase vs near miss {res['auroc']['near_miss']:.3f}, vs unrelated "
        f"{res['auroc']['unrelated']:.3f}, vs all same:false {res['auroc']['all']:.3f}. "
        f"The gateway's default threshold (inferline.cache.DEFAULT_THRESHOLD): "
        f"{default if default is not None else 'not found'}."
    )


def summary_markdown(report: dict[str, Any]) -> str:
    """The ``summary.md`` text."""
    res = report["results"]
    return "\n\n".join(
        [
            "# Semantic cache: paraphrases vs near misses",
            headline(report),
            "## Picked thresholds",
            sweep_table(res["picked"]),
            "## Sweep 0.80 .. 0.99",
            sweep_table(res["sweep"]),
            "## Similarity per kind",
            distribution_table(res["distribution"]["kind"]),
            f"## Hardest near misses (highest similarity, top {WORST})",
            pairs_table(res["hardest_near_misses"]),
            f"## Hardest paraphrases (lowest similarity, bottom {WORST})",
            pairs_table(res["hardest_paraphrases"]),
            "## Similarity per kind and topic",
            distribution_table(res["distribution"]["kind_topic"]),
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


def separation(pairs: list[dict[str, Any]], sims: list[float]) -> dict[str, float]:
    """The highest similarity of a ``same: false`` pair and of a paraphrase: no threshold
    gives a right hit without a wrong one unless the second exceeds the first."""
    wrong = max(s for p, s in zip(pairs, sims, strict=True) if not p["same"])
    right = max(s for p, s in zip(pairs, sims, strict=True) if p["same"])
    above = sum(s > wrong for p, s in zip(pairs, sims, strict=True) if p["same"])
    return {
        "max_same_false": wrong,
        "max_paraphrase": right,
        "paraphrases_above_max_same_false": above,
    }


def analyse(pairs: list[dict[str, Any]], sims: list[float]) -> dict[str, Any]:
    """The sweep, the picked thresholds, the distributions and the hardest pairs."""
    rows = sweep(pairs, sims, SWEEP)
    safe = lowest_safe(rows)
    default = gateway_default()
    return {
        "sweep": rows,
        "lowest_under_1pct": safe,
        "lowest_under_1pct_onward": lowest_safe_onward(rows),
        "lowest_under_1pct_fine": lowest_safe(sweep(pairs, sims, FINE_SWEEP)),
        "gateway_default_threshold": default,
        "picked": sweep(pairs, sims, picked_thresholds(rows, safe, default)),
        "separation": separation(pairs, sims),
        "auroc": {
            "near_miss": auroc(pairs, sims, "near_miss"),
            "unrelated": auroc(pairs, sims, "unrelated"),
            "all": auroc(pairs, sims, None),
        },
        "distribution": {
            "kind": by_group(pairs, sims, "kind"),
            "kind_topic": by_group(pairs, sims, "kind_topic"),
        },
        "hardest_near_misses": hardest(pairs, sims, "near_miss", high=True),
        "hardest_paraphrases": hardest(pairs, sims, "paraphrase", high=False),
        "guards": guard_table(pairs, sims),
    }


GUARD_THRESHOLDS = (0.85, 0.90, 0.95)


def guard_table(pairs: list[dict[str, Any]], sims: list[float]) -> list[dict[str, Any]]:
    """Hit and wrong-hit rates with each of the cache's guards (the gateway's own code,
    `inferline.cache.guards.matches`) at three thresholds: a pair hits when its similarity
    reaches the threshold and the guard lets the second text have the first's answer."""
    from inferline.cache.guards import GUARDS, matches

    rows = []
    for guard in GUARDS:
        allowed = [matches(guard, p["a"], p["b"]) for p in pairs]
        for threshold in GUARD_THRESHOLDS:
            guarded = [s if ok else -1.0 for s, ok in zip(sims, allowed, strict=True)]
            row = {"guard": guard, **at_threshold(pairs, guarded, threshold)}
            for kind in ("paraphrase", "rewrite"):
                mine = [g >= threshold for g, p in zip(guarded, pairs, strict=True)
                        if p["kind"] == kind]  # fmt: skip
                row[f"{kind}_hit_rate"] = sum(mine) / len(mine) if mine else None
            rows.append(row)
    return rows


def guard_markdown(rows: list[dict[str, Any]]) -> str:
    """The guards' table."""
    lines = [
        "## With the cache's guards (inferline.cache.guards)",
        "",
        "| guard | threshold | paraphrases hit | rewrites hit | hits | wrong hits | "
        "wrong-hit rate |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['guard']} | {r['threshold']:.2f} | {pct(r['paraphrase_hit_rate'])} | "
            f"{pct(r['rewrite_hit_rate'])} | {r['hits']} | {r['wrong_hits']} | "
            f"{pct(r['wrong_hit_rate'])} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args()


def main() -> None:
    """Embeds every pair, sweeps the thresholds, prints the summary and writes the files."""
    args = parse_args()
    pairs = load_pairs(args.pairs)
    started = time.perf_counter()
    embedder = load_embedder()
    loaded = time.perf_counter()
    vectors = embed(embedder, [text for p in pairs for text in (p["a"], p["b"])])
    sims = similarities(pairs, vectors)
    embedded = time.perf_counter()
    report = {
        "settings": {
            "pairs_file": display_path(args.pairs),
            "model": MODEL,
            "wrong_hit_target": WRONG_HIT_TARGET,
            "machine": cpu_description(),
        },
        "counts": counts(pairs),
        "timings": {
            "load_s": loaded - started,
            "embed_s": embedded - loaded,
            "distinct_texts": len(vectors),
        },
        "results": analyse(pairs, sims),
        "pairs": [{**p, "similarity": s} for p, s in zip(pairs, sims, strict=True)],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    summary = summary_markdown(report) + "\n\n" + guard_markdown(report["results"]["guards"])
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)


if __name__ == "__main__":
    main()
