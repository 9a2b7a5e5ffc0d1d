"""Resuming a finished run: memory and speed when every job is skipped.

Run: ``python -m benchmarks.bench_resume [--quick]``. A run of 1,000,000 no-op
jobs is checkpointed to SQLite; then the same run id is resumed (streamed,
as ``asyncbatch run`` does) in a fresh process whose peak RSS is read from
the kernel. A resume looks finished keys up in chunks of 512 instead of
loading every finished job first, so its memory does not grow with the run.
Targets: under 100 MB and at least 100,000 skipped jobs/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncbatch as ab

from ._util import row, table


async def noop(x: int) -> int:
    return x


async def _stream(n: int, db: str) -> tuple[int, float]:
    batch = ab.Batch(noop, concurrency=1000, store=f"sqlite:///{db}", run_id="resume")
    start = time.perf_counter()
    count = 0
    async with batch.stream(range(n)) as outcomes:
        async for _ in outcomes:
            count += 1
    return count, time.perf_counter() - start


def child(n: int, db: str) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF)
    count, seconds = asyncio.run(_stream(n, db))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
    peak = usage.ru_maxrss  # KiB on Linux
    print(json.dumps({"count": count, "seconds": seconds, "cpu": cpu, "rss_mb": peak / 1024}))


def _run(n: int, db: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_resume", "--child", str(n), db],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    return json.loads(out.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 jobs instead of 1,000,000")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(int(args.child[0]), args.child[1])
        return []
    n = 100_000 if args.quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        db = f"{tmp}/resume.db"
        fresh = _run(n, db)
        resumed = _run(n, db)
    rate = resumed["count"] / resumed["seconds"]
    per_cpu = resumed["count"] / resumed["cpu"]
    rows = [
        row(f"{n:,} no-op jobs checkpointed, streamed: peak RSS", f"{fresh['rss_mb']:.0f} MB"),
        row(
            "resume of the finished run (every job skipped): peak RSS",
            f"{resumed['rss_mb']:.0f} MB",
            "< 100 MB",
            resumed["rss_mb"] < 100,
        ),
        row(
            "resume of the finished run: skipped jobs/s",
            f"{rate:,.0f} ({resumed['seconds']:.1f} s)",
            ">= 100,000/s",
            rate >= 100_000,
        ),
        row(
            "same, per CPU-second of the process (less sensitive to a busy machine)",
            f"{per_cpu:,.0f}",
            "info",
        ),
    ]
    print(table("Resume (SQLite)", rows))
    return rows


if __name__ == "__main__":
    main()
