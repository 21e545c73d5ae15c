"""An experiment's report as one self-contained HTML page: the summary table, the pass
rate with its interval and the latency distribution per target as inline SVG (no script,
nothing fetched), the paired comparisons, and the items the targets disagree on. Every
text from a dataset or a model is escaped: answers are untrusted."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_STYLE = """body{font:14px system-ui,sans-serif;margin:2em;max-width:1100px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right;vertical-align:top}th{background:#f3f3f3}td.text{text-align:left;
white-space:pre-wrap;max-width:420px;font-family:monospace;font-size:12px}"""


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _money(value: float | None) -> str:
    return "–" if value is None else f"${value:.6f}"


def render(
    summary: dict[str, Any], rows: Sequence[dict[str, Any]], disagreements: Sequence[dict[str, Any]]
) -> str:
    """The page."""
    title = f"Experiment {summary['experiment']}" + (
        f" — {summary['name']}" if summary["name"] else ""
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>",
        f"<p>dataset <b>{escape(summary['dataset'])}</b> v{summary['dataset_version']}; "
        f"scorers {escape(', '.join(summary['scorers']))}; repetitions "
        f"{summary['repetitions']}; status {escape(summary['status'])}</p>",
        _summary_table(summary), "<h2>Pass rate (95% bootstrap interval)</h2>",
        _pass_chart(summary), "<h2>Latency (cumulative share of requests)</h2>",
        _latency_chart(summary, rows), _comparison_table(summary), _pairwise_table(summary),
        _disagreement_table(summary, disagreements), "</body></html>",
    ]  # fmt: skip
    return "\n".join(parts)


def _summary_table(summary: dict[str, Any]) -> str:
    scorers = summary["scorers"]
    head = "".join(f"<th>{escape(s)}</th>" for s in scorers)
    lines = [
        f"<table><tr><th>target</th><th>n</th><th>errors</th><th>pass</th><th>95% CI</th>"
        f"{head}<th>p50 s</th><th>p95 s</th><th>cost/item</th><th>cost/success</th></tr>"
    ]
    for target, s in summary["targets"].items():
        cells = "".join(f"<td>{_num(s['scores'][name]['mean'])}</td>" for name in scorers)
        lines.append(
            f"<tr><th>{escape(target)}</th><td>{s['rows']}</td><td>{s['errors']}</td>"
            f"<td>{_num(s['mean'])}</td><td>[{_num(s['ci95'][0])}, {_num(s['ci95'][1])}]</td>"
            f"{cells}<td>{_num(s['latency']['p50_s'])}</td><td>{_num(s['latency']['p95_s'])}</td>"
            f"<td>{_money(s['cost']['per_item_usd'])}</td>"
            f"<td>{_money(s['cost']['per_success_usd'])}</td></tr>"
        )  # fmt: skip
    return "".join(lines) + "</table>"


def _pass_chart(summary: dict[str, Any]) -> str:
    width, row, left = 640, 28, 220
    targets = list(summary["targets"].items())
    height = row * len(targets) + 30
    scale = (width - left - 20) / 1.0
    out = [f"<svg width='{width}' height='{height}' role='img'>"]
    for i, (target, s) in enumerate(targets):
        y, colour = 10 + i * row, _COLOURS[i % len(_COLOURS)]
        mean = 0.0 if s["mean"] != s["mean"] else s["mean"]  # nan: no rows
        low, high = (0.0 if v != v else v for v in s["ci95"])
        out.append(
            f"<text x='{left - 6}' y='{y + 14}' text-anchor='end'>{escape(target[:32])}</text>"
        )
        out.append(
            f"<rect x='{left}' y='{y}' width='{mean * scale:.1f}' height='18' fill='{colour}'/>"
        )
        x1, x2 = left + low * scale, left + high * scale
        out.append(f"<line x1='{x1:.1f}' x2='{x2:.1f}' y1='{y + 9}' y2='{y + 9}' "
                   "stroke='black' stroke-width='2'/>")  # fmt: skip
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x = left + tick * scale
        out.append(f"<text x='{x:.1f}' y='{height - 4}' text-anchor='middle'>{tick:g}</text>")
    return "".join(out) + "</svg>"


def _latency_chart(summary: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    width, height, left, bottom = 640, 240, 50, 30
    series = {t: sorted(r["latency_s"] for r in rows if r["target"] == t
                        and r["status_code"] == 200 and r["latency_s"] is not None)
              for t in summary["targets"]}  # fmt: skip
    top = max((v[-1] for v in series.values() if v), default=1.0) or 1.0
    out = [f"<svg width='{width}' height='{height}' role='img'>"]
    for i, (target, values) in enumerate(series.items()):
        if not values:
            continue
        span_x, span_y = width - left - 10, height - bottom
        points = " ".join(
            f"{left + v / top * span_x:.1f},{span_y * (1 - (k + 1) / len(values)) + 5:.1f}"
            for k, v in enumerate(values)
        )
        colour = _COLOURS[i % len(_COLOURS)]
        out.append(f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{points}'/>")
        out.append(f"<text x='{width - 10}' y='{20 + 16 * i}' text-anchor='end' fill='{colour}'>"
                   f"{escape(target[:40])}</text>")  # fmt: skip
    out.append(f"<text x='{left}' y='{height - 8}'>0 s</text><text x='{width - 10}' "
               f"y='{height - 8}' text-anchor='end'>{top:.2f} s</text>")  # fmt: skip
    return "".join(out) + "</svg>"


def _comparison_table(summary: dict[str, Any]) -> str:
    if not summary["comparisons"]:
        return ""
    lines = ["<h2>Paired differences (target − baseline)</h2><table><tr><th>baseline</th>"
             "<th>target</th><th>metric</th><th>n</th><th>difference</th><th>95% CI</th>"
             "<th>p (sign-flip)</th></tr>"]  # fmt: skip
    for c in summary["comparisons"]:
        lines.append(
            f"<tr><td>{escape(c['baseline'])}</td><td>{escape(c['target'])}</td>"
            f"<td>{escape(c['metric'])}</td><td>{c['n']}</td><td>{_num(c['mean'])}</td>"
            f"<td>[{_num(c['ci95'][0])}, {_num(c['ci95'][1])}]</td>"
            f"<td>{_num(c['p_value'], 4)}</td></tr>"
        )  # fmt: skip
    return "".join(lines) + "</table>"


def _pairwise_table(summary: dict[str, Any]) -> str:
    if not summary.get("pairwise"):
        return ""
    lines = ["<h2>Pairwise judge (challenger against the first target)</h2><table><tr>"
             "<th>baseline</th><th>target</th><th>n</th><th>won</th><th>lost</th><th>tied</th>"
             "<th>win rate</th><th>95% CI</th><th>kept under swap</th></tr>"]  # fmt: skip
    for w in summary["pairwise"]:
        lines.append(
            f"<tr><td>{escape(w['baseline'])}</td><td>{escape(w['target'])}</td><td>{w['n']}</td>"
            f"<td>{w['wins']}</td><td>{w['losses']}</td><td>{w['ties']}</td>"
            f"<td>{_num(w['win_rate'])}</td><td>[{_num(w['ci95'][0])}, {_num(w['ci95'][1])}]"
            f"</td><td>{_num(w['consistent'])}</td></tr>"
        )  # fmt: skip
    return "".join(lines) + "</table>"


def _disagreement_table(summary: dict[str, Any], items: Sequence[dict[str, Any]]) -> str:
    targets = list(summary["targets"])
    if len(targets) < 2 or not items:
        return ""
    head = "".join(f"<th>{escape(t)}</th>" for t in targets)
    lines = [f"<h2>Items the targets disagree on</h2><table><tr><th>item</th>{head}</tr>"]
    for entry in items:
        cells = []
        for target in targets:
            row = entry["answers"].get(target)
            text = "" if row is None else (row["output"] or row["error"] or "")
            mark = "✓" if row is not None and row["passed"] else "✗"
            cells.append(f"<td class='text'>{mark} {escape(text[:600])}</td>")
        lines.append(f"<tr><th>{escape(entry['item'])}</th>{''.join(cells)}</tr>")
    return "".join(lines) + "</table>"


def curve_page(
    title: str, points: Sequence[dict[str, float]], chosen: dict[str, float] | None
) -> str:
    """The cascade's quality/cost curve: error rate against cost per item, one point per
    threshold, the chosen one circled."""
    width, height, left, bottom = 640, 360, 70, 40
    costs = [p["cost_per_item"] for p in points]
    low, high = min(costs), max(costs)
    span = (high - low) or 1.0
    top = max(p["error"] for p in points) or 1.0

    def xy(p: dict[str, float]) -> tuple[float, float]:
        x = left + (p["cost_per_item"] - low) / span * (width - left - 20)
        y = (height - bottom) - p["error"] / top * (height - bottom - 20)
        return x, y

    dots = "".join(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='#1f77b4'/>"
                   for x, y in map(xy, points))  # fmt: skip
    mark = ""
    if chosen is not None:
        x, y = xy(chosen)
        mark = f"<circle cx='{x:.1f}' cy='{y:.1f}' r='8' fill='none' stroke='#d62728'/>"
    rows = "".join(
        f"<tr><td>{p['threshold']:.4f}</td><td>{p['escalated']:.3f}</td><td>{p['error']:.3f}</td>"
        f"<td>{_money(p['cost_per_item'])}</td></tr>"
        for p in points
    )
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>"
            f"<svg width='{width}' height='{height}' role='img'>{dots}{mark}"
            f"<text x='{left}' y='{height - 8}'>{_money(low)}</text><text x='{width - 20}' "
            f"y='{height - 8}' text-anchor='end'>{_money(high)} per item</text>"
            f"<text x='4' y='20'>error {top:.2f}</text>"
            f"<text x='4' y='{height - bottom}'>0</text></svg>"
            "<table><tr><th>threshold</th><th>escalated</th><th>error</th><th>cost/item</th></tr>"
            f"{rows}</table></body></html>")  # fmt: skip
