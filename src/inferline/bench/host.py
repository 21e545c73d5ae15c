"""What machine a benchmark ran on, for its record."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_description() -> str:
    """The CPU model and core count, e.g. ``Intel(R) Xeon(R) Processor, 2 cores``."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} cores"
