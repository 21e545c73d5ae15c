"""Statistics (overhead = system percentile - direct-upstream percentile, same round) and the
printed table, JSON and Markdown of ``benchmarks/gateway_overhead.py``."""

from __future__ import annotations

import statistics
from typing import Any

from inferline.bench.metrics import distribution

SCENARIOS = {"chat": "non-streaming, whole answer", "stream": "streaming, time to first token"}
FOREIGN_CPU_LIMIT = 0.1  # cores used by other processes during a cell before it is marked
SETUP_NOTES = (
    "Both gateways run as one process and check the same bearer key (LiteLLM refuses to "
    "start without a master key; no database, so no spend logs).",
    "inferline: uvicorn defaults (asyncio loop, h11 parser, access log lines to its log "
    "file), request log on (SQLite, background thread). It always asks the upstream for a "
    "stream, also for a non-streaming client request.",
    "LiteLLM: uvicorn picks uvloop (installed with litellm[proxy]); LITELLM_LOG=ERROR, "
    "so no access log; num_retries 0, no cache, no callbacks.",
)


def stats_ms(values_s: list[float]) -> dict[str, float] | None:
    """mean, p50, p90, p99 (nearest rank, as `inferline bench`) and max, in ms."""
    dist = distribution(values_s)
    if dist is None:
        return None
    return {k: round(v * 1e3, 4) for k, v in {**dist, "max": max(values_s)}.items()}


def _spread(values: list[float]) -> dict[str, float]:
    """min and median of per-round values, rounded to µs."""
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3)}


def overheads(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario, concurrency and gateway: the added p50/p99 (ms) per round, and their
    min and median across rounds, next to the direct upstream's own latency."""
    by_key = {(c["round"], c["scenario"], c["concurrency"], c["system"]): c for c in cells}
    keys = sorted({(c["scenario"], c["concurrency"], c["system"]) for c in cells})
    rounds = sorted({c["round"] for c in cells})
    rows = []
    for scenario, concurrency, system in keys:
        if system == "direct":
            continue
        added: dict[str, list[float]] = {"p50": [], "p99": []}
        own: dict[str, list[float]] = {"p50": [], "p99": [], "direct_p50": [], "direct_p99": []}
        flagged = False
        for r in rounds:
            cell = by_key.get((r, scenario, concurrency, system))
            base = by_key.get((r, scenario, concurrency, "direct"))
            if not cell or not base or not cell["latency_ms"] or not base["latency_ms"]:
                continue
            for p in ("p50", "p99"):
                added[p].append(cell["latency_ms"][p] - base["latency_ms"][p])
                own[p].append(cell["latency_ms"][p])
                own[f"direct_{p}"].append(base["latency_ms"][p])
            flagged |= max(cell["other_cpu_cores"], base["other_cpu_cores"]) > FOREIGN_CPU_LIMIT
        if not added["p50"]:
            continue
        rows.append(
            {
                "scenario": scenario,
                "concurrency": concurrency,
                "system": system,
                "rounds": len(added["p50"]),
                "added_p50_ms": _spread(added["p50"]),
                "added_p99_ms": _spread(added["p99"]),
                "latency_ms": {k: _spread(v) for k, v in own.items()},
                "errors": sum(
                    sum(c["errors"].values())
                    for c in cells
                    if (c["scenario"], c["concurrency"], c["system"])
                    == (scenario, concurrency, system)
                ),
                "cpu_ms_per_request": _median_cpu(cells, scenario, concurrency, system),
                "foreign_cpu": flagged,
            }
        )
    return rows


def _median_cpu(cells: list[dict[str, Any]], scenario: str, concurrency: int, system: str) -> float:
    """The gateway's own CPU ms per request, median over rounds."""
    values = [
        c["cpu_ms_per_request"][system]
        for c in cells
        if (c["scenario"], c["concurrency"], c["system"]) == (scenario, concurrency, system)
    ]
    return round(statistics.median(values), 3) if values else float("nan")


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets: inferline adds <= 1 ms p50 and <= 5 ms p99 at concurrency 8
    (non-streaming, median over rounds), and less than LiteLLM at every concurrency."""
    mine = {(r["scenario"], r["concurrency"]): r for r in rows if r["system"] == "inferline"}
    peer = {(r["scenario"], r["concurrency"]): r for r in rows if r["system"] == "litellm"}
    c8 = mine.get(("chat", 8))
    result: dict[str, Any] = {
        "c8_p50_le_1ms": None if c8 is None else c8["added_p50_ms"]["median"] <= 1.0,
        "c8_p99_le_5ms": None if c8 is None else c8["added_p99_ms"]["median"] <= 5.0,
        "below_litellm": {},
    }
    for key, row in sorted(mine.items()):
        if key in peer:
            other = peer[key]
            result["below_litellm"][f"{key[0]} c={key[1]}"] = all(
                row[p]["median"] < other[p]["median"] for p in ("added_p50_ms", "added_p99_ms")
            )
    return result


def _cell(row: dict[str, Any] | None, p: str) -> str:
    """``median (min)`` of an added percentile, or a dash."""
    if row is None:
        return "-"
    spread = row[f"added_{p}_ms"]
    mark = "†" if row["foreign_cpu"] else ""
    return f"{spread['median']:+.2f} ({spread['min']:+.2f}){mark}"


def overhead_table(rows: list[dict[str, Any]], scenario: str) -> list[str]:
    """Markdown table of one scenario: direct latency, then each gateway's added p50/p99."""
    systems = sorted({r["system"] for r in rows}, key=lambda s: (s != "inferline", s))
    index = {(r["concurrency"], r["system"]): r for r in rows if r["scenario"] == scenario}
    header = ["c", "direct p50", "direct p99"]
    for s in systems:
        header += [f"{s} +p50", f"{s} +p99", f"{s} CPU ms/req"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in sorted({k[0] for k in index}):
        any_row = next(index[(c, s)] for s in systems if (c, s) in index)
        direct = any_row["latency_ms"]
        cols = [
            str(c),
            f"{direct['direct_p50']['median']:.2f}",
            f"{direct['direct_p99']['median']:.2f}",
        ]
        for s in systems:
            row = index.get((c, s))
            cpu = "-" if row is None else f"{row['cpu_ms_per_request']:.2f}"
            cols += [_cell(row, "p50"), _cell(row, "p99"), cpu]
        lines.append("| " + " | ".join(cols) + " |")
    return lines


def rate_table(rates: list[dict[str, Any]]) -> list[str]:
    """Markdown table of the maximum-throughput runs."""
    lines = [
        "| system | c | req/s | errors | p50 ms | p99 ms | system CPU ms/req | "
        "upstream CPU ms/req | other cores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rates:
        lat = r["latency_ms"] or {"p50": float("nan"), "p99": float("nan")}
        cpu = r["cpu_ms_per_request"]
        lines.append(
            f"| {r['system']} | {r['concurrency']} | {r['rps']:.0f} | {sum(r['errors'].values())} "
            f"| {lat['p50']:.2f} | {lat['p99']:.2f} | {cpu[r['system']]:.3f} "
            f"| {cpu['direct']:.3f} | {r['other_cpu_cores']:.2f} |"
        )
    return lines


def calibration_table(calibration: list[dict[str, Any]]) -> list[str]:
    """Markdown table: each client against the direct upstream."""
    lines = [
        "| client | c | p50 ms | p99 ms | req/s | client CPU µs/req | upstream CPU µs/req |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in calibration:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['client']} | {r['concurrency']} | {lat['p50']:.3f} | {lat['p99']:.3f} "
            f"| {r['rps']:.0f} | {r['client_cpu_us_per_request']:.0f} "
            f"| {r['upstream_cpu_us_per_request']:.0f} |"
        )
    return lines


def console_table(rows: list[dict[str, Any]], rates: list[dict[str, Any]]) -> str:
    """The plain-text summary printed at the end of a run."""
    lines = []
    for scenario, title in SCENARIOS.items():
        lines += [f"\nAdded latency, ms, median (min) over rounds: {title}"]
        lines += overhead_table(rows, scenario)
    lines += ["\nMaximum throughput (non-streaming, closed loop)"] + rate_table(rates)
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    """The Markdown report of a run (``result`` is what the JSON file holds)."""
    meta, rows = result["meta"], result["overhead"]
    lines = [
        "# Gateway overhead: inferline vs LiteLLM proxy",
        "",
        f"{meta['date']} · {meta['host']['cpu']} · {meta['host']['cores']} cores · "
        f"inferline {meta['inferline']['commit']} · LiteLLM {meta.get('litellm_version') or '-'}"
        f" · Python {meta['python']}",
        "",
        f"Command: `{meta['command']}` (holds `{meta['lock']}` for the whole run). "
        f"Run time: {meta['run_s']:.0f} s.",
        "",
        "Upstream: `inferline.bench.fake_upstream`, one process, answers at once with "
        f"{meta['words']} words (one SSE chunk per word when streaming). Every system gets the "
        "same requests from the same client process; all servers run at once on this host and "
        "the systems take turns cell by cell (order rotated each round).",
        "",
        "Added latency = the system's percentile - the direct upstream's percentile in the same "
        f"round; median (min) over {meta['rounds']} rounds, ms. Requests per cell: "
        f"{meta['requests']['c1']} at c=1, {meta['requests']['other']} at c≥8, after "
        "discarded warm-up. CPU ms/req: the gateway process group's CPU time per request. "
        f"† = other processes used > {FOREIGN_CPU_LIMIT} cores during a cell of that row.",
    ]
    for scenario, title in SCENARIOS.items():
        lines += ["", f"## Added latency: {title}", "", *overhead_table(rows, scenario)]
    lines += ["", "## Maximum throughput", "", *rate_table(result["max_rps"])]
    lines += ["", "## Targets", "", "```json", _json(result["targets"]), "```"]
    lines += ["", "## Client", "", meta["client_note"], "", *calibration_table(result["client"])]
    lines += ["", "## Setup", "", *(f"- {note}" for note in SETUP_NOTES), *_setup_lines(meta)]
    return "\n".join(lines) + "\n"


def _setup_lines(meta: dict[str, Any]) -> list[str]:
    """The servers' commands, settings and versions."""
    lines = []
    for name, info in meta["servers"].items():
        lines.append(f"- **{name}**: `{' '.join(map(str, info.get('command', [])))}`")
        for key in ("request_log", "env", "versions", "loaded", "ready_s"):
            if key in info:
                lines.append(f"  - {key}: {info[key]}")
    return lines


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2)
