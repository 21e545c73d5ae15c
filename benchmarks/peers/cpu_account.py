#!/usr/bin/env python3
"""Runs a benchmark command and tells whether anything else used the CPUs meanwhile.

On a 2-core host any foreign busy process wrecks a measurement (multi-threaded decode is the
first to suffer), and ``flock`` only keeps out other benchmarks that take the same lock.
So, around the command, this script reads

* the host's busy CPU time (``/proc/stat``),
* the server's CPU time (every process in its process group, which benchmarks/compare
  creates per server: vLLM computes in child processes),
* the command's own CPU time (``RUSAGE_CHILDREN``: the load generator),

and writes ``other_cpu_cores`` = (host - server - client) / wall: the average number of cores
something else used, and the server processes' resident memory: the highest sampled during
the run (``server_rss_mib``) and their lifetime peak (``server_peak_rss_mib``, loading too).
Before starting it waits (up to --wait-idle s) until that foreign load stays under
--idle-cores for a 2 s window.  Exits with the command's exit status.

usage: cpu_account.py --pgid PGID --json OUT [--wait-idle S] -- COMMAND...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def host_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / TICK


def group_cpu_s(pgid: int) -> float:
    """CPU seconds of the processes in process group ``pgid`` (and their reaped children)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            rest = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(rest[2]) == pgid:  # fields after "(comm)": state ppid pgrp ...
            total += sum(int(x) for x in rest[11:15])  # utime stime cutime cstime
    return total / TICK


def group_rss_mib(pgid: int, field: str) -> float:
    """Sum over the group's live processes of a /proc status field (VmRSS, VmHWM), in MiB."""
    total_kib = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            rest = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(rest[2]) != pgid:
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total_kib += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    return total_kib / 1024


def own_cpu_s() -> float:
    """CPU seconds of this script and its (waited-for) children."""
    return sum(
        u.ru_utime + u.ru_stime
        for u in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )


def snapshot(pgid: int) -> tuple[float, float, float, float]:
    """(wall, host busy, server, client) seconds, all at one moment."""
    return time.monotonic(), host_busy_s(), group_cpu_s(pgid), own_cpu_s()


def other_cores(before: tuple[float, ...], after: tuple[float, ...]) -> float:
    """Average cores used by neither the server nor us between two snapshots."""
    wall, host, server, client = (b - a for a, b in zip(before, after, strict=True))
    return max(0.0, host - server - client) / wall if wall > 0 else 0.0


def wait_idle(pgid: int, limit_s: float, idle_cores: float) -> float:
    """Waits until foreign load stays below ``idle_cores`` for 2 s; returns seconds waited."""
    start = time.monotonic()
    while True:
        before = snapshot(pgid)
        time.sleep(2)
        load = other_cores(before, snapshot(pgid))
        waited = time.monotonic() - start
        if load <= idle_cores or waited >= limit_s:
            if load > idle_cores:
                print(
                    f"cpu_account: host still busy ({load:.2f} cores), measuring anyway",
                    file=sys.stderr,
                )
            return waited


def run_sampling_rss(command: list[str], pgid: int, every_s: float = 0.5) -> tuple[int, float]:
    """Runs ``command``; returns its exit status and the server group's highest VmRSS (MiB)
    sampled every ``every_s`` seconds meanwhile."""
    child = subprocess.Popen(command)
    highest = group_rss_mib(pgid, "VmRSS")
    while child.poll() is None:
        time.sleep(every_s)
        highest = max(highest, group_rss_mib(pgid, "VmRSS"))
    return child.returncode, highest


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pgid", type=int, required=True, help="the server's process group")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--wait-idle", type=float, default=120)
    parser.add_argument("--idle-cores", type=float, default=0.15)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    waited = wait_idle(args.pgid, args.wait_idle, args.idle_cores)
    before = snapshot(args.pgid)
    returncode, max_rss = run_sampling_rss(command, args.pgid)
    after = snapshot(args.pgid)
    wall, host, server, client = (b - a for a, b in zip(before, after, strict=True))
    result = {
        "wall_s": wall,
        "host_busy_cpu_s": host,
        "server_cpu_s": server,
        "client_cpu_s": client,
        "other_cpu_cores": other_cores(before, after),
        "waited_idle_s": waited,
        "returncode": returncode,
        "server_rss_mib": max_rss,  # highest resident memory sampled during the run
        "server_peak_rss_mib": group_rss_mib(args.pgid, "VmHWM"),  # lifetime peak, load too
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return returncode


if __name__ == "__main__":
    sys.exit(main())
