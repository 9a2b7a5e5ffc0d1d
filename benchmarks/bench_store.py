"""Checkpoint store benchmarks: what a group commit costs per job.

Run: ``python -m benchmarks.bench_store [--records N] [--group G] [--quick]``.
Every figure is a ratio to a baseline measured in the same run (machines are
shared and noisy):

1. ``SQLiteStore.commit`` with G-record groups (small SUCCEEDED records, the
   executor's hot path) vs the limit: stdlib ``sqlite3`` ``executemany`` of the
   equivalent rows, same schema, pragmas and upsert, one transaction per group,
   rows built in advance (target: >= 0.5x; >= 100k records/s);
2. the same store committing one record per transaction (what group commit
   saves; the DESIGN measured ~19k rows/s for aiosqlite this way);
3. both with ``durability="full"`` (an fsync per commit);
4. `MemoryStore` for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

from asyncbatch import JobStatus
from asyncbatch._store import JobRecord, MemoryStore, RunInfo, SQLiteStore, Store
from asyncbatch._store._common import is_plain_success, job_row, success_row
from asyncbatch._store._schema import JOB_SUCCESS, JOB_UPSERT, MIGRATIONS

from ._util import row, sqlite_writer, table

RUN = "bench"


def records(start: int, n: int) -> list[JobRecord]:
    """Small SUCCEEDED records, as the executor makes for no-op jobs."""
    return [
        JobRecord(
            run_id=RUN,
            key=str(i),
            status=JobStatus.SUCCEEDED,
            index=i,
            attempts=1,
            duration=0.0001,
            result=i,
            has_result=True,
        )
        for i in range(start, start + n)
    ]


def groups(n: int, size: int) -> list[list[JobRecord]]:
    return [records(s, min(size, n - s)) for s in range(0, n, size)]


async def store_rate(
    open_: Callable[[], Awaitable[Store]], batches: list[list[JobRecord]], durability: str
) -> float:
    """Records/s of ``store.commit`` over ``batches`` (records built in advance)."""
    store = await open_()
    try:
        await store.begin_run(RunInfo(run_id=RUN, job="bench:noop"))
        start = time.perf_counter()
        for batch in batches:
            await store.commit(batch, durability=durability)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - start
    finally:
        await store.aclose()
    return sum(map(len, batches)) / elapsed


def stdlib_rate(path: str, batches: list[list[JobRecord]], durability: str) -> float:
    """Records/s of plain sqlite3 executemany: the same rows, one transaction per group.

    The rows are built before the clock starts and written with the statement
    the store uses for them (the lean one for plain successes), so this is the
    ceiling of what SQLite itself allows.
    """
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute(
        "INSERT INTO runs (id, status, created_at, updated_at) VALUES (?, 'running', 0, 0)", (RUN,)
    )
    plain = all(is_plain_success(r) for batch in batches for r in batch)
    sql, row = (JOB_SUCCESS, success_row) if plain else (JOB_UPSERT, job_row)
    rows = [[row(r, i, 0.0) for i, r in enumerate(batch)] for batch in batches]
    start = time.perf_counter()
    for chunk in rows:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(sql, chunk)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return sum(map(len, rows)) / elapsed


def measure(n: int, size: int, singles: int, durability: str, tmp: str) -> dict[str, float]:
    """Best of three of each variant, fresh database files each time."""
    grouped = groups(n, size)
    one_by_one = groups(singles, 1)
    best: dict[str, float] = {}
    for attempt in range(3):

        def path(name: str, attempt: int = attempt) -> str:
            return os.path.join(tmp, f"{name}-{durability}-{attempt}.db")

        def opener(name: str) -> Callable[[], Awaitable[Store]]:
            return lambda: SQLiteStore.open(path(name), durability=durability)  # type: ignore[arg-type]

        rates = {
            "limit": stdlib_rate(path("stdlib"), grouped, durability),
            "group": asyncio.run(store_rate(opener("group"), grouped, durability)),
            "thread": asyncio.run(
                in_thread(store_rate(opener("thread"), grouped, durability))
            ),
            "single": asyncio.run(store_rate(opener("single"), one_by_one, durability)),
        }
        for name, rate in rates.items():
            best[name] = max(best.get(name, 0.0), rate)
    return best


async def in_thread(run: Awaitable[float]) -> float:
    """``run`` with every commit in the connection's thread, none in the writer process."""
    with sqlite_writer("thread"):
        return await run


async def _memory() -> Store:
    return MemoryStore()


def main(argv: list[str] | None = None) -> None:
    """Print records/s of each variant and the ratios between them."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000, help="records per grouped run")
    parser.add_argument("--group", type=int, default=1_000, help="records per commit")
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    n, singles = args.records // scale, 2_000 // scale
    rows = []
    with tempfile.TemporaryDirectory(prefix="asyncbatch-bench-") as tmp:
        for durability, fsyncs in (("normal", singles), ("full", max(singles // 10, 20))):
            r = measure(
                n if durability == "normal" else n // 5, args.group, fsyncs, durability, tmp
            )
            label = f"synchronous={'FULL' if durability == 'full' else 'NORMAL'}"
            ratio = r["group"] / r["limit"]
            rows += [
                row(
                    f"stdlib sqlite3 executemany, {args.group}/txn ({label})",
                    f"{r['limit']:,.0f} rec/s",
                ),
                row(
                    f"SQLiteStore.commit, {args.group}/group ({label})",
                    f"{r['group']:,.0f} rec/s = {ratio:.2f}x the limit",
                    ">= 0.5x, >= 100k/s" if durability == "normal" else "",
                    (ratio >= 0.5 and r["group"] >= 100_000) if durability == "normal" else None,
                ),
                row(
                    f"same, every commit in the connection's thread ({label})",
                    f"{r['thread']:,.0f} rec/s = {r['thread'] / r['limit']:.2f}x the limit",
                ),
                row(
                    f"SQLiteStore.commit, 1/commit ({label})",
                    f"{r['single']:,.0f} rec/s; grouping is {r['group'] / r['single']:.0f}x faster",
                ),
            ]
        mem = asyncio.run(store_rate(_memory, groups(n, args.group), "normal"))
        rows.append(row(f"MemoryStore.commit, {args.group}/group", f"{mem:,.0f} rec/s"))
    print(
        table(
            f"Checkpoint store (python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version})",
            rows,
        )
    )


if __name__ == "__main__":
    main()
