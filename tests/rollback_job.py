"""A batch that aborts and rolls back slowly; tests/test_compensate.py kills it mid-rollback.

Usage: python tests/rollback_job.py STORE WORKDIR  (STORE: a SQLite path or a store URL)
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncbatch as ab

DB, WORK = sys.argv[1], Path(sys.argv[2])


async def job(x: int) -> int:
    with open(WORK / "ran.log", "a") as f:  # noqa: ASYNC230 - a tiny append the test counts on
        f.write(f"{x}\n")
    if x == 120:
        raise ab.FatalError("downstream rejected the batch")
    return x * 2


async def undo(item: int, result: int) -> None:
    assert result == item * 2
    await asyncio.sleep(0.01)
    with open(WORK / "undone.log", "a") as f:  # noqa: ASYNC230 - a tiny append the test counts on
        f.write(f"{item}\n")
        f.flush()


async def main() -> None:
    try:
        await ab.run_batch(job, range(200), concurrency=1, store=DB, run_id="rb", compensate=undo)
    except ab.BatchAborted as exc:
        print("aborted:", exc.cause, flush=True)


asyncio.run(main())
