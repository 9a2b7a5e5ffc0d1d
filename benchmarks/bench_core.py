"""Core executor benchmarks against the loops people write today.

Run: ``python -m benchmarks.bench_core [--quick]``. Every figure is a ratio to
a baseline measured in the same run, because the machines are shared and noisy.

Scenarios (5 interleaved rounds, medians, unless said otherwise):
1. no-op jobs, checkpoints off: vs every baseline of `benchmarks.baselines`
   (bounded TaskGroup, gather-all, Queue pool; target: >= 1.0x the
   strongest, >= 1.5x the bounded TaskGroup) and vs aiometer (>= 5x);
2. scaling: 10,000 x ``sleep(0.1)`` at concurrency 10,000 (<= 1.2x the bounded
   TaskGroup) and 100,000 x ``sleep(0.01)`` at concurrency 1,000 (<= 1.1x the
   Queue pool; <= 1.2x the ideal 1.0 s);
3. 20% of jobs fail once and back off 50 ms: vs tenacity inside a semaphore
   (which holds the slot while it sleeps; target: faster);
4. checkpoints: no-op jobs with SQLite checkpoints vs asyncbatch without a
   store (>= 0.5x) and vs the strongest baseline;
5. 1,000,000 streamed no-op items at concurrency 1,000: peak RSS (< 100 MB),
   measured in a fresh subprocess.

Instruction counts per job for the same loops are in `benchmarks.bench_callgrind`.
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

from ._util import best_of, interleaved, row, sqlite_writer, table
from .baselines import BASELINES, gather_all, queue_pool


async def noop(x: int) -> int:
    return x


async def with_aiometer(job, items, concurrency):  # type: ignore[no-untyped-def]
    return await aiometer.run_on_each(job, items, max_at_once=concurrency)


def vs_baselines(job, n: int, c: int, rounds: int = 5) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Median seconds of asyncbatch and of every baseline on the same jobs, interleaved."""
    variants = {name: (lambda f=f: f(job, range(n), c)) for name, f in BASELINES.items()}
    variants["asyncbatch"] = lambda: ab.run_batch(job, range(n), concurrency=c)
    return interleaved(variants, rounds)


def scenario_noop(n: int) -> list[list[str]]:
    c = 100
    t = vs_baselines(noop, n, c)
    t_ab = t.pop("asyncbatch")
    best_name = min(t, key=t.__getitem__)
    t_aio = best_of(lambda: with_aiometer(noop, range(n), c), repeat=1)
    rows = [
        row(f"{n:,} no-op jobs, {name}", f"{n / s:,.0f} jobs/s", "baseline")
        for name, s in t.items()
    ]
    bounded = t["bounded TaskGroup (acquire, then create the task)"]
    rows += [
        row(f"{n:,} no-op jobs, aiometer", f"{n / t_aio:,.0f} jobs/s", "baseline"),
        row(
            f"{n:,} no-op jobs, asyncbatch vs the strongest ({best_name})",
            f"{t[best_name] / t_ab:.2f}x ({n / t_ab:,.0f} jobs/s)",
            ">= 1.0x",
            t[best_name] / t_ab >= 1.0,
        ),
        row(
            "same, asyncbatch vs the bounded TaskGroup",
            f"{bounded / t_ab:.2f}x",
            ">= 1.5x",
            bounded / t_ab >= 1.5,
        ),
        row(
            "no-op jobs, asyncbatch vs aiometer", f"{t_aio / t_ab:.1f}x", ">= 5x", t_aio / t_ab >= 5
        ),
    ]
    return rows


def scenario_scale(n_wide: int, n_io: int) -> list[list[str]]:
    async def slow(x: int) -> int:
        await asyncio.sleep(0.1)
        return x

    async def io(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    wide = vs_baselines(slow, n_wide, n_wide, rounds=5)
    bounded = wide["bounded TaskGroup (acquire, then create the task)"]
    c = 1000
    ideal = n_io / c * 0.01
    deep = vs_baselines(io, n_io, c, rounds=3)
    pool = deep["asyncio.Queue worker pool"]
    return [
        row(
            f"{n_wide:,} x 100 ms at concurrency {n_wide:,}, bounded TaskGroup",
            f"{bounded:.2f} s",
            "baseline",
        ),
        row(
            "same, asyncbatch",
            f"{wide['asyncbatch']:.2f} s ({wide['asyncbatch'] / bounded:.2f}x the TaskGroup)",
            "<= 1.2x",
            wide["asyncbatch"] / bounded <= 1.2,
        ),
        row(f"{n_io:,} x 10 ms at concurrency {c:,}, Queue pool", f"{pool:.2f} s", "baseline"),
        row(
            "same, asyncbatch",
            f"{deep['asyncbatch']:.2f} s ({deep['asyncbatch'] / pool:.2f}x the pool, "
            f"{deep['asyncbatch'] / ideal:.2f}x the ideal {ideal:.1f} s)",
            "<= 1.1x the pool, <= 1.2x ideal",
            deep["asyncbatch"] / pool <= 1.1 and deep["asyncbatch"] / ideal <= 1.2,
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
        await gather_all(retrying, range(n), c)

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

    def durable(durability: str, writer: str = "process"):  # type: ignore[no-untyped-def]
        # A fresh database and run id per round: a resume would skip everything.
        path = os.path.join(tmp, f"bench-{next(counter)}.db")

        async def run() -> None:
            # Read when the store starts its writer: "thread" keeps every commit
            # in the connection's thread (the way before the writer process).
            with sqlite_writer(writer):
                await ab.run_batch(noop, range(n), concurrency=c, store=path, durability=durability)

        return run()

    t = interleaved(
        {
            "pool": lambda: queue_pool(noop, range(n), c),
            "off": lambda: ab.run_batch(noop, range(n), concurrency=c),
            "normal": lambda: durable("normal"),
            "thread": lambda: durable("normal", "thread"),
            "full": lambda: durable("full"),
        }
    )
    return [
        row(
            f"{n:,} no-op jobs, SQLite checkpoints (normal) vs asyncbatch without a store",
            f"{t['off'] / t['normal']:.2f}x ({n / t['normal']:,.0f} jobs/s)",
            ">= 0.5x",
            t["off"] / t["normal"] >= 0.5,
        ),
        row("same, vs the Queue worker pool (no store)", f"{t['pool'] / t['normal']:.2f}x", ""),
        row(
            "same, every commit in the connection's thread (ASYNCBATCH_SQLITE_WRITER=thread)",
            f"{t['off'] / t['thread']:.2f}x ({n / t['thread']:,.0f} jobs/s)",
            "",
        ),
        row(
            'same with durability="full" (fsync per group commit) vs without a store',
            f"{t['off'] / t['full']:.2f}x ({n / t['full']:,.0f} jobs/s)",
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
    rows += scenario_scale(10_000 // scale, 100_000 // scale)
    rows += scenario_failures(10_000 // scale)
    rows += scenario_checkpoints(100_000 // scale)
    rows += scenario_memory(1_000_000 // scale)
    print(table("Core executor (python " + sys.version.split()[0] + ")", rows))
    return rows


if __name__ == "__main__":
    main()
