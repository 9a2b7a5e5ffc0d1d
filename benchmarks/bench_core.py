"""Core executor benchmarks against the loops people write today.

Run: ``python -m benchmarks.bench_core [--quick]``. Every figure is a ratio to
a baseline measured in the same run, because the machines are shared and noisy.

Scenarios:
1. no-op jobs, checkpoints off: vs a bare ``asyncio.TaskGroup`` + ``Semaphore``
   loop (target >= 1.0x) and vs aiometer (target >= 5x);
2. 10 ms jobs at concurrency 1,000: wall time vs the ideal (target <= 1.2x);
3. 20% of jobs fail once and back off 50 ms: vs tenacity inside a semaphore
   (which holds the slot while it sleeps; target: faster);
4. 1,000,000 streamed no-op items at concurrency 1,000: peak RSS (< 100 MB),
   measured in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from collections import Counter

import aiometer
import tenacity

import asyncbatch as ab

from ._util import best_of, row, table


async def noop(x: int) -> int:
    return x


async def bare_taskgroup(job, items, concurrency):  # type: ignore[no-untyped-def]
    """The code users write today: a task per item, a semaphore around the call."""
    sem = asyncio.Semaphore(concurrency)

    async def one(item):  # type: ignore[no-untyped-def]
        async with sem:
            return await job(item)

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(i)) for i in items]
    return [t.result() for t in tasks]


async def with_aiometer(job, items, concurrency):  # type: ignore[no-untyped-def]
    return await aiometer.run_on_each(job, items, max_at_once=concurrency)


def scenario_noop(n: int) -> list[list[str]]:
    c = 100
    t_bare = best_of(lambda: bare_taskgroup(noop, range(n), c))
    t_ab = best_of(lambda: ab.run_batch(noop, range(n), concurrency=c))
    t_aio = best_of(lambda: with_aiometer(noop, range(n), c), repeat=1)
    return [
        row(f"{n:,} no-op jobs, bare TaskGroup+Semaphore", f"{n / t_bare:,.0f} jobs/s", "baseline"),
        row(f"{n:,} no-op jobs, aiometer", f"{n / t_aio:,.0f} jobs/s", "baseline"),
        row(
            f"{n:,} no-op jobs, asyncbatch vs bare loop",
            f"{t_bare / t_ab:.2f}x ({n / t_ab:,.0f} jobs/s)",
            ">= 1.0x",
            t_bare / t_ab >= 1.0,
        ),
        row(
            "no-op jobs, asyncbatch vs aiometer", f"{t_aio / t_ab:.1f}x", ">= 5x", t_aio / t_ab >= 5
        ),
    ]


async def bare_pool(job, items, concurrency):  # type: ignore[no-untyped-def]
    """The floor: workers pulling from one iterator, no bookkeeping, no results."""
    it = iter(items)

    async def worker() -> None:
        for item in it:
            await job(item)

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())


def scenario_io(n: int) -> list[list[str]]:
    c = 1000

    async def io(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    ideal = n / c * 0.01
    t_ab = best_of(lambda: ab.run_batch(io, range(n), concurrency=c), repeat=3)
    t_bare = best_of(lambda: bare_taskgroup(io, range(n), c), repeat=1)
    t_floor = best_of(lambda: bare_pool(io, range(n), c), repeat=3)
    return [
        row(
            f"{n:,} x 10 ms at concurrency {c:,}, bare worker pool (the event loop's floor)",
            f"{t_floor:.2f} s ({t_floor / ideal:.2f}x ideal)",
            "baseline",
        ),
        row(
            f"{n:,} x 10 ms at concurrency {c:,}, bare loop",
            f"{t_bare:.2f} s ({t_bare / ideal:.2f}x ideal)",
            "baseline",
        ),
        row(
            f"{n:,} x 10 ms at concurrency {c:,}, asyncbatch",
            f"{t_ab:.2f} s ({t_ab / ideal:.2f}x ideal {ideal:.1f} s, "
            f"{t_ab / t_floor:.2f}x the floor)",
            "<= 1.2x ideal",
            t_ab / ideal <= 1.2,
        ),
    ]


def scenario_failures(n: int) -> list[list[str]]:
    c = 100
    backoff = 0.05

    def make_job():  # type: ignore[no-untyped-def]
        seen: Counter[int] = Counter()

        async def job(x: int) -> int:
            seen[x] += 1
            await asyncio.sleep(0.005)
            if x % 5 == 0 and seen[x] == 1:
                raise ab.TransientError("fails once")
            return x

        return job

    policy = ab.RetryPolicy(
        {ab.ErrorKind.TRANSIENT: ab.Retry(attempts=3, backoff=ab.Backoff.constant(backoff))}
    )

    async def run_ab() -> None:
        result = await ab.run_batch(make_job(), range(n), concurrency=c, retry=policy)
        assert result.ok

    async def run_tenacity() -> None:
        job = make_job()
        retrying = tenacity.retry(
            stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(backoff)
        )(job)
        await bare_taskgroup(retrying, range(n), c)

    t_ab = best_of(run_ab, repeat=2)
    t_ten = best_of(run_tenacity, repeat=2)
    return [
        row(
            f"{n:,} x 5 ms, 20% fail once (50 ms backoff), tenacity in semaphore",
            f"{t_ten:.2f} s",
            "baseline",
        ),
        row(
            "same, asyncbatch (backoff parked off-slot)",
            f"{t_ab:.2f} s ({t_ten / t_ab:.2f}x faster)",
            "faster than tenacity",
            t_ab < t_ten,
        ),
    ]


def scenario_checkpoints(n: int) -> list[list[str]]:
    import os
    import tempfile

    c = 100
    tmp = tempfile.mkdtemp(prefix="ab-bench-")
    counter = iter(range(1_000_000))

    def durable(durability: str):  # type: ignore[no-untyped-def]
        # A fresh database and run id per repeat: a resume would skip everything.
        path = os.path.join(tmp, f"bench-{next(counter)}.db")
        return ab.run_batch(noop, range(n), concurrency=c, store=path, durability=durability)

    t_bare = best_of(lambda: bare_taskgroup(noop, range(n), c))
    t_off = best_of(lambda: ab.run_batch(noop, range(n), concurrency=c))
    t_normal = best_of(lambda: durable("normal"))
    t_full = best_of(lambda: durable("full"))
    return [
        row(
            f"{n:,} no-op jobs, SQLite checkpoints (normal) vs bare loop",
            f"{t_bare / t_normal:.2f}x ({n / t_normal:,.0f} jobs/s)",
            ">= 0.5x",
            t_bare / t_normal >= 0.5,
        ),
        row(
            "same, vs asyncbatch with checkpoints off",
            f"{t_off / t_normal:.2f}x",
            "",
        ),
        row(
            'same with durability="full" (fsync per group commit) vs bare loop',
            f"{t_bare / t_full:.2f}x ({n / t_full:,.0f} jobs/s)",
            "",
        ),
    ]


async def _stream_million(n: int, c: int) -> int:
    count = 0
    async with ab.Batch(noop, concurrency=c).stream(range(n)) as outcomes:
        async for _ in outcomes:
            count += 1
    return count


def scenario_memory(n: int) -> list[list[str]]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_core", "--rss-child", str(n)],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    mb = data["peak_rss_kb"] / 1024
    return [
        row(
            f"{n:,} streamed no-op items at concurrency 1,000: peak RSS",
            f"{mb:.0f} MB ({n / data['seconds']:,.0f} jobs/s)",
            "< 100 MB",
            mb < 100,
        )
    ]


def rss_child(n: int) -> None:
    start = time.perf_counter()
    count = asyncio.run(_stream_million(n, 1000))
    assert count == n, count
    print(json.dumps({"peak_rss_kb": peak_rss_kb(), "seconds": time.perf_counter() - start}))


def peak_rss_kb() -> int:
    """This process's peak RSS. ``VmHWM`` rather than ``ru_maxrss``: on Linux the
    latter survives exec, so a child spawned by a big parent reports the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child)
        return []
    scale = 10 if args.quick else 1
    rows = []
    rows += scenario_noop(100_000 // scale)
    rows += scenario_io(100_000 // scale)
    rows += scenario_failures(10_000 // scale)
    rows += scenario_checkpoints(100_000 // scale)
    rows += scenario_memory(1_000_000 // scale)
    print(table("Core executor (python " + sys.version.split()[0] + ")", rows))
    return rows


if __name__ == "__main__":
    main()
