"""Tables for the terminal and a latency-versus-throughput plot (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _ms(dist: dict[str, float] | None, key: str) -> str:
    return "-" if dist is None else f"{dist[key] * 1000:.0f}"


def table(runs: list[dict[str, Any]]) -> str:
    """One line per run: load, completions, TTFT/TPOT/E2E percentiles (ms), throughput."""
    header = (
        f"{'run':>10} {'ok':>4} {'fail':>4} {'TTFT p50':>9} {'p99':>7} {'TPOT p50':>9} "
        f"{'p99':>6} {'E2E p50':>8} {'out tok/s':>10} {'req/s':>6} {'goodput':>8}"
    )
    lines = [header, "-" * len(header)]
    for run in runs:
        s = run["summary"]
        lines.append(
            f"{run['label']:>10} {s['completed']:>4} {s['failed']:>4} "
            f"{_ms(s['ttft_s'], 'p50'):>9} {_ms(s['ttft_s'], 'p99'):>7} "
            f"{_ms(s['tpot_s'], 'p50'):>9} {_ms(s['tpot_s'], 'p99'):>6} "
            f"{_ms(s['e2e_s'], 'p50'):>8} {s['output_tokens_per_s']:>10.1f} "
            f"{s['requests_per_s']:>6.2f} {s['goodput_requests_per_s']:>8.2f}"
        )
    return "\n".join(lines) + "\n(latencies in ms; goodput = requests/s within the SLO)"


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> bool:
    """TTFT and TPOT (p50, p90) against output tokens/s; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    x = [r["summary"]["output_tokens_per_s"] for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, name in ((axes[0], "ttft_s", "TTFT"), (axes[1], "tpot_s", "TPOT")):
        for key, style in (("p50", "o-"), ("p90", "s--")):
            y = [(r["summary"][metric] or {}).get(key, float("nan")) * 1000 for r in runs]
            ax.plot(x, y, style, label=f"{name} {key}")
        for xi, run in zip(x, runs, strict=True):
            ax.annotate(run["label"], (xi, (run["summary"][metric] or {}).get("p50", 0) * 1000))
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(f"{name} (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
