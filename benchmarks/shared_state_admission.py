"""What sharing limits and budgets through Redis adds to each admission.

One key with rpm, tpm, max_parallel and a budget; each iteration is the server's path for
one request: `Tenants.admit` (rate limits, then the budget's reservation) and
`Tenants.finish` (settlement: in the background with shared state, so only its queueing
is on the request's path). Four set-ups, each without and with the ledger row in an
SQLite database (what `serve` writes at every admission of a key with a budget):

- ``local``: `LocalLimits` + `BudgetLedger` (one process);
- ``redis``: `RedisLimits` + `RedisLedger` on a redis-server on this machine (started here,
  no persistence): two Lua scripts per admission, run in one worker-thread hop.

usage:
  flock /tmp/bench.lock .venv/bin/python benchmarks/shared_state_admission.py [--n 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from inferline.core.protocols import ModelInfo
from inferline.store import KeyStore, connect, migrate
from inferline.tenants import Estimate, KeyPolicy, Tenants
from inferline.tenants.redis_budget import RedisLedger
from inferline.tenants.redis_limits import RedisLimits
from inferline.tenants.redis_state import connect_redis


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server on a free port (no RDB, no AOF)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    args = [binary, "--port", str(port), "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            connect_redis(url)
            return process, url
        except Exception:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


async def per_admission_us(tenants: Tenants, key: KeyPolicy, n: int) -> tuple[float, float]:
    """(median microseconds of one admit with nothing else running, mean microseconds of
    admit + finish one request after the other, the background settlements included)."""
    info = ModelInfo("remote", output_usd_per_mtok=1.0, is_local=False)
    estimate = Estimate(100, 100)
    admits = []
    for i in range(n):  # each alone: the previous one settled before it
        before = time.perf_counter()
        admission = await tenants.admit(key, f"a{time.monotonic_ns()}-{i}", info, estimate)
        admits.append(time.perf_counter() - before)
        tenants.finish(admission, None, (100, 0, 100))
        await drained(tenants, key)
    started = time.perf_counter()
    for i in range(n):
        admission = await tenants.admit(key, f"r{time.monotonic_ns()}-{i}", info, estimate)
        tenants.finish(admission, None, (100, 0, 100))
    await drained(tenants, key)
    return statistics.median(admits) * 1e6, (time.perf_counter() - started) / n * 1e6


async def drained(tenants: Tenants, key: KeyPolicy) -> None:
    """Waits for the background settlements."""
    while tenants.ledger.reserved(key) > 0:
        await asyncio.sleep(0.001)


def build(kind: str, url: str, with_store: bool, directory: Path) -> tuple[Tenants, KeyPolicy]:
    store = None
    if with_store:
        engine = connect(f"sqlite:///{directory / f'{kind}-{time.monotonic_ns()}.db'}")
        migrate(engine)
        store = KeyStore(engine)
    fields = {"name": "bench", "rpm": 10**9, "tpm": 10**12, "max_parallel": 1000,
              "budget_usd": 10.0**9, "budget_period": "total"}  # fmt: skip
    key = KeyPolicy.from_row({"id": f"key_{time.monotonic_ns()}", **fields})
    if store is not None:
        key = KeyPolicy.from_row(store.create(fields)[0])
    if kind == "local":
        return Tenants(store), key
    state = connect_redis(url, prefix=f"bench{time.monotonic_ns()}")
    spent = store.spent_since if store is not None else (lambda _k, _s: 0.0)
    return Tenants(store, limits=RedisLimits(state), ledger=RedisLedger(state, spent)), key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    process, url = start_redis()
    directory = Path(tempfile.mkdtemp(prefix="inferline-bench-"))
    try:
        for with_store in (False, True):
            for kind in ("local", "redis"):
                runs = []
                for _ in range(args.repeats):
                    tenants, key = build(kind, url, with_store, directory)
                    runs.append(asyncio.run(per_admission_us(tenants, key, args.n)))
                label = f"{kind:5s} {'+ sqlite ledger row' if with_store else 'limits + budget'}"
                admit = [r[0] for r in runs]
                total = [r[1] for r in runs]
                print(f"{label:28s} admit alone: min {min(admit):7.1f} median "
                      f"{statistics.median(admit):7.1f} us; admit + settle: min "
                      f"{min(total):7.1f} median {statistics.median(total):7.1f} us")  # fmt: skip
    finally:
        process.terminate()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
