"""One process on PostgreSQL: the shared path (leased chunks) against the single-process path.

Run: ``python -m benchmarks.bench_shared_path [--jobs N] [--url URL] [--quick]`` (URL as
in bench_postgres). ``run_batch(noop, range(N), store=URL)`` end to end, once
with ``shared=True`` (the input written as chunks, claimed back, every commit
fenced: what lets workers join) and once with ``shared=False`` (the lean
single-process store), interleaved over rounds, medians, each run on a fresh
run id. The ratio tells what sharing costs a run that no worker joins: when
one process is all a run will ever have, ``shared=False`` is the faster path.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os

import asyncbatch as ab

from ._util import interleaved, row, table

CONCURRENCY = 100
_ids = itertools.count()


def main(argv: list[str] | None = None) -> list[list[str]]:
    """Print jobs/s of both paths and their ratio."""
    from .bench_postgres import Schemas, _answers, noop, server_url  # noop: importable by name

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="no-op jobs per run")
    parser.add_argument("--url", help="PostgreSQL server (default: see bench_postgres)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    args, _ = parser.parse_known_args(argv)
    url = server_url(args.url)
    problem = asyncio.run(_answers(url))
    if problem is not None:
        print(
            f"\n### One process on PostgreSQL: shared vs single-process path\n\nskipped: {problem}"
        )
        return []
    n = args.jobs // (10 if args.quick else 1)
    schemas = Schemas(url)
    store = schemas.new()

    def run(shared: bool) -> asyncio.Future[object]:
        run_id = f"path-{os.getpid()}-{next(_ids)}"
        return ab.run_batch(  # type: ignore[return-value]
            noop, range(n), store=store, run_id=run_id, concurrency=CONCURRENCY, shared=shared
        )

    try:
        secs = interleaved(
            {"single": lambda: run(False), "shared": lambda: run(True)},
            rounds=1 if args.quick else 3,
        )
    finally:
        asyncio.run(schemas.drop_all())
    single, shared = n / secs["single"], n / secs["shared"]
    load = os.getloadavg()[0]
    rows = [
        row(f"{n:,} no-op jobs, one process, shared=False", f"{single:,.0f} jobs/s", "baseline"),
        row(
            "same, shared=True (no worker joins)",
            f"{shared:,.0f} jobs/s = {shared / single:.2f}x the single-process path",
        ),
    ]
    print(
        table(f"One process on PostgreSQL: shared vs single-process path (load {load:.1f})", rows)
    )
    return rows


if __name__ == "__main__":
    main()
