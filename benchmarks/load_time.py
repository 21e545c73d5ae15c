"""Model load time and peak memory, each load in a fresh process.

Usage: flock /tmp/bench.lock .venv/bin/python benchmarks/load_time.py \
    [--models smollm2-135m,qwen2.5-coder-0.5b] [--formats mixed] [--repeats 3] [--json OUT]

Each repeat runs ``load_model`` in a new Python process (so nothing is cached in memory but
the file's pages in the OS page cache, which a first read after boot would not have) and
reports ``load_time_s`` (what ``LoadedModel`` measures: file to model ready, imports
excluded), the RSS once loaded, and the process's peak RSS (``VmHWM``, imports included).
Prints a table (min / median of the repeats, and the CPU other processes took meanwhile)
and writes JSON under ``benchmarks/results/load_time/``.
``--profile`` prints a cProfile of one load per model instead.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inferline.bench.host import cpu_description, host_busy_s

RESULTS_DIR = Path(__file__).parent / "results" / "load_time"


def _status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def _child(model: str, weight_format: str, profile: bool) -> None:
    """Loads one model in this process and prints one JSON line of measurements."""
    import torch

    from inferline.cli.main import default_cache_dir
    from inferline.models import load_model

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rss_before_kib = _status_kib("VmRSS")
    wall_start = time.perf_counter()
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
    loaded = load_model(model, cache_dir=default_cache_dir(), weight_format=weight_format)
    wall_s = time.perf_counter() - wall_start
    if profile:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
    row = {
        "model": model,
        "weight_format": loaded.weight_format,
        "kernels": loaded.kernels,
        "load_time_s": loaded.load_time_s,
        "wall_s": wall_s,
        "rss_before_load_mib": rss_before_kib / 1024,
        "rss_loaded_mib": _status_kib("VmRSS") / 1024,
        "rss_loaded_anon_mib": _status_kib("RssAnon") / 1024,
        "rss_loaded_file_mib": _status_kib("RssFile") / 1024,
        "peak_rss_mib": _status_kib("VmHWM") / 1024,
    }
    row["peak_over_loaded"] = row["peak_rss_mib"] / row["rss_loaded_mib"]
    print(json.dumps(row))


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_once(model: str, weight_format: str, profile: bool) -> dict[str, object]:
    """One load in a fresh process; ``other_cpu_cores`` is what the rest of the machine
    used meanwhile (processes outside the bench lock): above 0.1, the run was disturbed."""
    command = [sys.executable, __file__, "--child", model, "--formats", weight_format]
    if profile:
        command.append("--profile")
    busy_start, own_start, start = host_busy_s(), _children_cpu_s(), time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    others_s = (host_busy_s() - busy_start) - (_children_cpu_s() - own_start)
    if profile:
        print(result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"load of {model} failed:\n{result.stderr[-4000:]}")
    row = dict(json.loads(result.stdout.strip().splitlines()[-1]))
    row["other_cpu_cores"] = max(0.0, others_s / elapsed)
    return row


def _summarise(runs: list[dict[str, object]]) -> dict[str, object]:
    """min / median of every figure over the repeats."""
    summary: dict[str, object] = {k: runs[0][k] for k in ("model", "weight_format", "kernels")}
    for key, value in runs[0].items():
        if isinstance(value, float):
            values = [float(str(run[key])) for run in runs]
            summary[f"{key}_min"] = min(values)
            summary[f"{key}_median"] = statistics.median(values)
            summary[f"{key}_max"] = max(values)
    return summary


def _table(rows: list[dict[str, Any]]) -> str:
    """min / median load seconds, median RSS figures, and the worst disturbance."""
    lines = [
        f"{'model':22} {'format':7} {'load s min/med':>15} {'loaded MiB':>11} "
        f"{'peak MiB':>9} {'peak/loaded':>11} {'others':>7}"
    ]
    for row in rows:
        lines.append(
            f"{row['model']:22} {row['weight_format']:7} "
            f"{row['load_time_s_min']:6.2f} / {row['load_time_s_median']:5.2f}  "
            f"{row['rss_loaded_mib_median']:10.0f} {row['peak_rss_mib_median']:9.0f} "
            f"{row['peak_over_loaded_median']:11.2f} {row['other_cpu_cores_max']:7.2f}"
        )
    lines.append("others: most CPU cores other processes used during a run (> 0.1: disturbed)")
    return "\n".join(lines)


def main() -> None:
    """Measures every (model, format) pair and prints/writes the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b")
    parser.add_argument("--formats", default="mixed", help="comma-separated weight formats")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.formats, args.profile)
        return
    rows: list[dict[str, Any]] = []
    for model in args.models.split(","):
        for weight_format in args.formats.split(","):
            repeats = 1 if args.profile else args.repeats
            runs = [_run_once(model, weight_format, args.profile) for _ in range(repeats)]
            rows.append({**_summarise(runs), "runs": runs})
    print(f"CPU: {cpu_description()}")
    print(_table(rows))
    if args.profile:
        return
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    out = args.json or RESULTS_DIR / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "cpu": cpu_description(),
        "timestamp": stamp,
        "repeats": args.repeats,
        "results": rows,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
