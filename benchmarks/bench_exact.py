"""Exact limits of shared runs: calls/s through a fast dependency, exact vs split limits.

Run: ``python -m benchmarks.bench_exact [--calls N] [--url URL] [--rounds R]`` (URL
as in bench_postgres; skipped when nothing answers).

A shared run of N no-op jobs, every attempt inside the guard of one
dependency with a bulkhead of 8 (``limits={"api": 8}, uses=["api"]``), on a
fresh schema, worked by the coordinator alone and by the coordinator plus
two ``asyncbatch worker`` processes (started first: they wait for the run).
Each variant runs with the bulkhead split among workers (the default) and
with ``SharedRun(exact_limits=True)``: a slot leased from and released to
the database for every call. Rounds are interleaved, medians reported, with
the load average. A last row holds 3 processes to an exact ``Rate(1000)``
(no bulkhead) and reports the rate kept over the run's wall time (start-up
and finish included, so below 1,000 even when every second is full).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

from ._util import row, table

LIMIT = 8
CONCURRENCY = 64


async def call(x: int) -> int:
    """The fast dependency: a no-op inside its guard (``uses=["api"]``)."""
    return x


def _workers(url: str, run_id: str, n: int) -> list[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-m", "asyncbatch", "worker", "benchmarks.bench_exact:call", "--db",
           url, "--run-id", run_id, "--concurrency", str(CONCURRENCY)]  # fmt: skip
    return [
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(n)
    ]


async def _one(
    url: str, n: int, *, exact: bool, workers: int, rate: float | None = None, limit: bool = True
) -> float:
    """Seconds for one shared run of ``n`` calls (the coordinator's own clock)."""
    import asyncbatch as ab

    from . import bench_exact

    run_id = f"x{uuid.uuid4().hex[:8]}"
    procs = _workers(url, run_id, workers)
    options: dict[str, Any] = {"limits": {"api": LIMIT} if limit else {}, "uses": ["api"]}
    if rate is not None:
        options["rates"] = {"api": ab.Rate(rate)}
    try:
        if procs:
            await asyncio.sleep(1.5)  # their imports; then they poll for the run
        start = time.perf_counter()
        result = await ab.run_batch(
            bench_exact.call, range(n), store=url, run_id=run_id, concurrency=CONCURRENCY,
            shared=ab.SharedRun(chunk_size=200, lease=10.0, exact_limits=exact), **options,
        )  # fmt: skip
        took = time.perf_counter() - start
    finally:
        for p in procs:
            p.wait(timeout=60)
    if result.counts[ab.JobStatus.SUCCEEDED] != n:
        raise RuntimeError(f"only {result.counts} of {n}")
    return took


async def _round_trip(url: str, n: int = 300) -> float:
    """Median seconds of one slot statement (a claim, then a release, n times)."""
    from asyncbatch._store import RunInfo
    from asyncbatch._store._postgres import PostgresStore
    from asyncbatch._store._postgres_limits import LimitBoard

    async with await PostgresStore.open(url) as store:
        await store.begin_run(RunInfo(run_id="rt"))
        board = LimitBoard(store, lease=10.0)
        await board.make("rt", slots={"api": 1}, spacing={})
        times = []
        for _ in range(n):
            start = time.perf_counter()
            slots = await board.claim("rt", "api", "me", 1)
            await board.release("rt", "me", slots)
            times.append((time.perf_counter() - start) / 2)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list[list[str]]:
    """Print calls/s with exact and split limits, 1 and 3 processes."""
    from .bench_postgres import Schemas, _answers, server_url

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=6_000, help="calls per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--url", help="PostgreSQL server (default: see the module docstring)")
    parser.add_argument("--quick", action="store_true", help="a third of the calls, 1 round")
    args, _ = parser.parse_known_args(argv)
    url = server_url(args.url)
    problem = asyncio.run(_answers(url))
    if problem is not None:
        print(f"\n### Exact limits\n\nskipped: {problem}")
        return []
    n = args.calls // (3 if args.quick else 1)
    rounds = 1 if args.quick else args.rounds
    schemas = Schemas(url)
    variants = [(p, exact) for p in (1, 3) for exact in (False, True)]
    times: dict[tuple[int, bool], list[float]] = {v: [] for v in variants}
    loads = []
    try:
        store = schemas.new()
        for _ in range(rounds):
            for p, exact in variants:
                t = asyncio.run(_one(store, n, exact=exact, workers=p - 1))
                times[(p, exact)].append(t)
                loads.append(os.getloadavg()[0])
        trip = asyncio.run(_round_trip(store))
        rated = asyncio.run(_one(store, 3_000, exact=True, workers=2, rate=1000.0, limit=False))
    finally:
        asyncio.run(schemas.drop_all())
    load = statistics.median(loads)
    rows = []
    for p in (1, 3):
        split = n / statistics.median(times[(p, False)])
        exact = n / statistics.median(times[(p, True)])
        procs = f"{p} process{'es' if p > 1 else ''}"
        rows.append(row(f"{n:,} calls, bulkhead {LIMIT}, split among workers, {procs}",
                        f"{split:,.0f} calls/s"))  # fmt: skip
        rows.append(row(f"{n:,} calls, bulkhead {LIMIT}, exact, {procs}",
                        f"{exact:,.0f} calls/s = {exact / split:.2f}x split"))  # fmt: skip
    rows.append(row("one slot statement (claim or release), median of 600",
                    f"{trip * 1000:.2f} ms"))  # fmt: skip
    kept = 3_000 / rated
    rows.append(row("3,000 calls, exact Rate(1000), no bulkhead, 3 processes",
                    f"{kept:,.0f} calls/s kept", "<= 1,000/s", kept <= 1_000))  # fmt: skip
    title = (f"Exact limits (python {sys.version.split()[0]}, {os.cpu_count()} cores, load "
             f"{load:.1f}, {url.split('@')[-1]})")  # fmt: skip
    print(table(title, rows))
    return rows


if __name__ == "__main__":
    main()
