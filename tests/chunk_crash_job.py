"""A chunked, checkpointed batch that tests/test_chunks.py SIGKILLs mid-run, then resumes.

Usage: python tests/chunk_crash_job.py DB CALL_LOG N BATCH_SIZE

Every call appends one line to CALL_LOG (the keys of its items, comma-
separated) before it returns, so the log shows which items each call ran,
across the killed run and the resume. Every 97th item is bad: odd ones fail
alone (``ab.ItemError``), even ones make their whole chunk raise (bisected).
Prints the run's counts as JSON when it finishes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from typing import Any

import asyncbatch as ab

DB, CALL_LOG, N, BATCH = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


async def job(items: list[int]) -> list[Any]:
    await asyncio.sleep(random.uniform(0.001, 0.005))  # a bulk request
    # One write(2) per line on an O_APPEND descriptor: lines never interleave or tear.
    fd = os.open(CALL_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (",".join(str(x) for x in items) + "\n").encode())
    finally:
        os.close(fd)
    if any(x % 97 == 0 and x % 2 == 0 for x in items):
        raise ab.PermanentError("the bulk API rejected the request: a malformed record")
    return [
        ab.ItemError(ValueError(f"item {x} is malformed")) if x % 97 == 0 else 2 * x for x in items
    ]


async def main() -> None:
    result = await ab.run_batch(
        job, range(N), batch_size=BATCH, concurrency=4, store=DB, run_id="chunked"
    )
    print(json.dumps({s.value: n for s, n in result.counts.items()}), flush=True)


asyncio.run(main())
