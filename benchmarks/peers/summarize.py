#!/usr/bin/env python3
"""Turns a benchmarks/compare results directory into summary.json, summary.md and a plot.

usage: summarize.py RESULTS_DIR

Reads (every file optional, missing cells show as "-"):

* ``raw/<server>-<scenario>.json``: ``inferline bench --json`` output, or for scenario e the
  start-up probe's output (``first_token_s``);
* ``raw/<server>-<scenario>.cpu.json``: CPU and peak memory around the run (cpu_account.py);
* ``raw/<server>-d.json``: scenario d, offline through the engine's Python API (offline.py);
* ``raw/<server>-g-a.json``, ``raw/<server>-g-b16.json``: the guidellm cross-check of a and
  b16 (guidellm_check.sh -> guidellm_summary.py, the same summary keys as our client's);
* ``raw/<server>.meta.json`` and ``meta.json``: versions, command lines, build, host;
* ``<model>/raw/`` and ``<model>/meta.json``: the same for a model other than the default
  (``benchmarks/compare --model M`` writes into the sub-folder M); each gets its own table.

Writes ``summary.json`` (every figure plus the inferline/peer ratios; other models under
"models"), ``summary.md`` (the same as tables) and ``b_sweep.png`` (latency against output
throughput over b4/b16/b32, default model).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVERS = {"inferline": "inferline", "llamacpp": "llama.cpp", "vllm": "vLLM"}
PEERS = ("llamacpp", "vllm")
B_SWEEP = ("b4", "b16", "b32")
CONTENDED_CORES = 0.10  # foreign CPU load above which a run is flagged (anchors' threshold)


def _p(metric: str, pct: str, scale: float = 1.0) -> Callable[[dict[str, Any]], float | None]:
    """Extracts percentile ``pct`` of ``metric`` from a bench summary, times ``scale``."""

    def get(summary: dict[str, Any]) -> float | None:
        dist = summary.get(metric)
        return None if not dist else dist[pct] * scale

    return get


def _decode_rate(summary: dict[str, Any]) -> float | None:
    """Single-stream decode rate: 1 / TPOT p50."""
    tpot = _p("tpot_s", "p50")(summary)
    return 1 / tpot if tpot else None


def _output_rate(summary: dict[str, Any]) -> float | None:
    return summary.get("output_tokens_per_s")


def _startup(summary: dict[str, Any]) -> float | None:
    return summary.get("first_token_s")


def _rss(summary: dict[str, Any]) -> float | None:
    return summary.get("server_rss_mib")  # merged in from the .cpu.json (sampled every 0.5 s)


def _peak_rss(summary: dict[str, Any]) -> float | None:
    return summary.get("server_peak_rss_mib")


@dataclass(frozen=True)
class Figure:
    """One row of the table: a key figure of a scenario."""

    scenario: str
    name: str
    unit: str
    higher_is_better: bool
    get: Callable[[dict[str, Any]], float | None]


FIGURES = (
    Figure("a", "decode rate = 1/TPOT p50", "tok/s", True, _decode_rate),
    Figure("a", "TTFT p50", "ms", False, _p("ttft_s", "p50", 1000)),
    # the same shapes measured by a third-party client (guidellm), beside our own client's
    Figure("g-a", "guidellm: decode rate = 1/ITL p50", "tok/s", True, _decode_rate),
    Figure("g-a", "guidellm: TTFT p50", "ms", False, _p("ttft_s", "p50", 1000)),
    *(Figure(b, "output throughput", "tok/s", True, _output_rate) for b in B_SWEEP[:2]),
    Figure("b16", "TTFT p50", "ms", False, _p("ttft_s", "p50", 1000)),
    Figure("g-b16", "guidellm: output throughput", "tok/s", True, _output_rate),
    Figure("g-b16", "guidellm: TTFT p50", "ms", False, _p("ttft_s", "p50", 1000)),
    Figure(B_SWEEP[2], "output throughput", "tok/s", True, _output_rate),
    Figure("c", "TTFT p99", "ms", False, _p("ttft_s", "p99", 1000)),
    Figure("c", "output throughput", "tok/s", True, _output_rate),
    Figure("b32", "server resident memory, highest during the run", "MiB", False, _rss),
    Figure("b32", "server peak resident memory (loading included)", "MiB", False, _peak_rss),
    Figure("c0", "output throughput", "tok/s", True, _output_rate),
    Figure("d", "offline output throughput (Python API)", "tok/s", True, _output_rate),
    Figure("e", "start-up to first token", "s", False, _startup),
)
SCENARIOS = tuple(dict.fromkeys(f.scenario for f in FIGURES))  # a, b4, ..., e


def _read(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Cell:
    """What one server measured in one scenario."""

    summary: dict[str, Any]  # bench summary (first run), or the start-up probe's object
    failed: int = 0
    other_cpu_cores: float | None = None

    @property
    def contended(self) -> bool:
        return self.other_cpu_cores is not None and self.other_cpu_cores > CONTENDED_CORES


def load_cells(raw: Path) -> dict[tuple[str, str], Cell]:
    """Every (server, scenario) with a result file under ``raw``, in table order."""
    cells = {}
    for server in SERVERS:
        for scenario in SCENARIOS:
            doc = _read(raw / f"{server}-{scenario}.json")
            if doc is None:
                continue
            summary = dict(doc["runs"][0]["summary"] if "runs" in doc else doc)
            cpu = _read(raw / f"{server}-{scenario}.cpu.json") or {}
            for key in ("server_rss_mib", "server_peak_rss_mib"):
                if key in cpu:
                    summary[key] = cpu[key]
            cells[server, scenario] = Cell(
                summary, summary.get("failed", 0), cpu.get("other_cpu_cores")
            )
    return cells


def build_rows(cells: dict[tuple[str, str], Cell]) -> list[dict[str, Any]]:
    """One dict per figure: each server's value and inferline's ratio to each peer."""
    rows = []
    for fig in FIGURES:
        row: dict[str, Any] = {
            "scenario": fig.scenario,
            "figure": fig.name,
            "unit": fig.unit,
            "higher_is_better": fig.higher_is_better,
        }
        for server in SERVERS:
            cell = cells.get((server, fig.scenario))
            row[server] = None if cell is None else fig.get(cell.summary)
        for peer in PEERS:
            ours, theirs = row["inferline"], row[peer]
            row[f"inferline/{peer}"] = ours / theirs if ours is not None and theirs else None
        rows.append(row)
    return rows


def _num(value: float | None) -> str:
    """A value with about three significant digits, "-" when missing."""
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _flags(cell: Cell | None) -> str:
    """Footnote marks: * failed requests, † other processes used the CPUs."""
    if cell is None:
        return ""
    return ("*" if cell.failed else "") + ("†" if cell.contended else "")


def markdown(
    meta: dict[str, Any],
    servers: dict[str, Any],
    rows: list[dict[str, Any]],
    cells: dict[tuple[str, str], Cell],
    plotted: bool,
    title: str | None = None,
) -> str:
    """summary.md: the key-figure table, per-run checks and the set-up of each server.

    ``title`` replaces the top heading (a further model's section); its headings then start
    one level down.
    """
    host = meta.get("host", {})
    lines = [
        title or f"# inferline vs llama.cpp vs vLLM ({meta.get('date', '?')})",
        "",
        f"Model: {meta.get('model', '?')}.",
        "",
        f"Host: {host.get('cpu', '?')}, {host.get('cores', '?')} cores, {host.get('memory', '?')}; "
        f"{meta.get('threads', '?')} threads per server; all servers on this host, one at a time, "
        "measured by `inferline bench` under `flock /tmp/bench.lock`.",
        "",
        "Ratios are inferline / peer: above 1 is better for inferline where the column says "
        "↑, below 1 where it says ↓.",
        "",
        "| scenario | figure | "
        + " | ".join([*SERVERS.values(), *(f"inferline/{SERVERS[p]}" for p in PEERS)])
        + " |",
        "|---" * (2 + len(SERVERS) + len(PEERS)) + "|",
    ]
    for row in rows:
        arrow = "↑" if row["higher_is_better"] else "↓"
        values = [_num(row[s]) + _flags(cells.get((s, row["scenario"]))) for s in SERVERS]
        ratios = [_num(row[f"inferline/{p}"]) for p in PEERS]
        lines.append(
            f"| {row['scenario']} | {row['figure']} ({row['unit']}) {arrow} | "
            + " | ".join(values + ratios)
            + " |"
        )
    lines += [
        "",
        "\\* some requests failed (see below); † other processes used more than "
        f"{CONTENDED_CORES} cores during the run, so the figure is suspect.",
        "",
        "Rows g-a and g-b16: the shapes of a and b16 (prompt/output tokens, requests, streams) "
        "sent by a third-party client, guidellm (benchmarks/peers/guidellm_check.sh), against "
        "the same servers in the same run, from guidellm's per-request timings; its ITL is our "
        "TPOT's definition, (latency - TTFT) / (output tokens - 1). guidellm first sends warm-up "
        "requests (1 for g-a, 16 for g-b16) that these rows leave out, since its own start-up "
        "competes with the server on a small host; it also uses more CPU than our client.",
        "",
        "## Runs",
        "",
        "| server | scenario | completed | failed | wall s (e: to first token) | other-CPU cores |",
        "|---|---|---|---|---|---|",
    ]
    for (server, scenario), cell in cells.items():
        s = cell.summary
        wall = s.get("wall_s", s.get("first_token_s"))
        lines.append(
            f"| {SERVERS[server]} | {scenario} | {s.get('completed', '-')} | {cell.failed} | "
            f"{_num(wall)} | {_num(cell.other_cpu_cores)} |"
        )
    lines += ["", "## Servers", ""]
    for server, info in servers.items():
        lines.append(
            f"* **{SERVERS[server]}** {info.get('version', '')}: `{info.get('command', '')}`"
            + (f" ({info['notes']})" if info.get("notes") else "")
        )
    if plotted:
        lines += ["", "![latency vs throughput over the b sweep](b_sweep.png)"]
    if title:  # a section of the default model's page: one heading level down
        lines = ["#" + line if line.startswith("## ") else line for line in lines]
    return "\n".join(lines) + "\n"


def plot(cells: dict[tuple[str, str], Cell], path: Path) -> bool:
    """TTFT p50 and TPOT p50 against output tok/s over b4/b16/b32, one line per server."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, title in ((axes[0], "ttft_s", "TTFT p50"), (axes[1], "tpot_s", "TPOT p50")):
        for server, label in SERVERS.items():
            points = [
                (b, cells[server, b].summary)
                for b in B_SWEEP
                if (server, b) in cells and cells[server, b].summary.get(metric)
            ]
            if not points:
                continue
            x = [s["output_tokens_per_s"] for _, s in points]
            y = [s[metric]["p50"] * 1000 for _, s in points]
            ax.plot(x, y, "o-", label=label)
            for (b, _), xi, yi in zip(points, x, y, strict=True):
                ax.annotate(
                    f"c={b[1:]}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8
                )
        ax.set_title(title)
        ax.set_xlabel("output tokens/s (higher is better)")
        ax.set_ylabel(f"{title} (ms, lower is better)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("Closed-loop concurrency sweep: 256-token prompts, 128 output tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def summarize(out: Path, raw: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The summary.json object of one results folder (``raw``), None if it holds no result."""
    cells = load_cells(raw)
    if not cells:
        return None
    servers = {s: info for s in SERVERS if (info := _read(raw / f"{s}.meta.json"))}
    return {
        "meta": meta,
        "servers": servers,
        "figures": build_rows(cells),
        "runs": {
            f"{server}-{scenario}": {
                "failed": cell.failed,
                "other_cpu_cores": cell.other_cpu_cores,
                "contended": cell.contended,
            }
            for (server, scenario), cell in cells.items()
        },
        "_cells": cells,
    }


def main() -> int:
    """Command-line entry point."""
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    raw = out / "raw"
    top_meta = _read(out / "meta.json") or {}
    main_summary = summarize(out, raw, top_meta)
    # further models (compare --model M): sub-folders M/ with their own raw/ and meta.json
    models = {}
    for sub in sorted(p for p in out.iterdir() if (p / "raw").is_dir()):
        meta = {**top_meta, **(_read(sub / "meta.json") or {})}
        if (summary := summarize(sub, sub / "raw", meta)) is not None:
            models[sub.name] = summary
    if main_summary is None and not models:
        sys.exit(f"summarize: no results under {raw}")
    if main_summary is None:  # only further models measured: the first one heads the page
        name = next(iter(models))
        main_summary = models.pop(name)
    cells = main_summary.pop("_cells")
    summary = {**main_summary, "models": {}}
    for name, sub in models.items():
        sub_cells = sub.pop("_cells")
        summary["models"][name] = sub
        sub["_md"] = markdown(
            sub["meta"], sub["servers"], sub["figures"], sub_cells, False, f"## Model {name}"
        )
    plotted = plot(cells, out / "b_sweep.png")
    if not plotted:
        print("summarize: matplotlib missing, no plot", file=sys.stderr)
    text = markdown(summary["meta"], summary["servers"], summary["figures"], cells, plotted)
    for sub in summary["models"].values():
        text += "\n" + sub.pop("_md")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
