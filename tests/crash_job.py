"""A checkpointed batch that tests/test_crash.py SIGKILLs mid-run, then resumes.

Usage: python tests/crash_job.py STORE RAN_LOG N CONCURRENCY  (STORE: a SQLite path or a store URL)

Every job appends its key to RAN_LOG (append mode, one line) before it
returns, so the log counts executions across the killed run and the resume.
Every 97th item fails permanently and is dead-lettered. Prints the run's
counts as JSON when it finishes. ``CRASH_WRITER_ROWS=1`` sends every SQLite
group the writer process can take to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys

import asyncbatch as ab

DB, RAN_LOG, N, CONCURRENCY = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if "CRASH_WRITER_ROWS" in os.environ:  # SQLite: groups this large go to the writer process
    from asyncbatch._store import _sqlite

    _sqlite.WRITER_ROWS = int(os.environ["CRASH_WRITER_ROWS"])


async def job(x: int) -> dict[str, int]:
    await asyncio.sleep(random.uniform(0.0005, 0.004))  # some I/O
    # One write(2) per line on an O_APPEND descriptor: lines never interleave or tear.
    fd = os.open(RAN_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    if x % 97 == 0:
        raise ab.PermanentError(f"item {x} is malformed")
    return {"double": 2 * x}


async def main() -> None:
    result = await ab.run_batch(job, range(N), concurrency=CONCURRENCY, store=DB, run_id="crash")
    print(json.dumps({s.value: n for s, n in result.counts.items()}), flush=True)


asyncio.run(main())
