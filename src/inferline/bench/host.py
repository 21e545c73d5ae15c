"""What machine a benchmark ran on, for its record."""

from __future__ import annotations

import os
import platform
import re
from datetime import date
from pathlib import Path


def cpu_description() -> str:
    """The CPU model and core count, e.g. ``Intel(R) Xeon(R) Processor, 2 cores``."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} cores"


def results_dir(benchmarks: Path) -> Path:
    """``benchmarks/results/<date>-<cpu>/``: where a benchmark run today on this CPU writes."""
    tag = re.sub(r"[^a-z0-9]+", "-", cpu_description().lower()).strip("-")[:40]
    return benchmarks / "results" / f"{date.today()}-{tag}"


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def host_busy_s() -> float:
    """CPU seconds every process of this machine has used (/proc/stat; steal excluded)."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq = first[1:8]
    return sum(int(x) for x in (user, nice, system, irq, softirq)) / CLOCK_TICKS
