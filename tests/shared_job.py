"""Jobs for the shared-run tests (tests/test_shared.py), and their coordinator.

Workers import ``shared_job:job`` (tests/ on PYTHONPATH). Every attempt
appends ``start KEY PID TIME`` to the side-effect ledger ``$SHARED_LEDGER``
before it runs and ``done KEY PID TIME`` when it succeeds, one write(2) on an
O_APPEND descriptor per line (lines never interleave or tear): executions
are counted outside the database. ``$SHARED_SLEEP`` is each job's duration;
items divisible by ``$SHARED_FAIL_EVERY`` fail permanently (dead letters);
with ``$SHARED_FAIL_FROM``, every item at or above it fails (a budget abort),
once the file ``$SHARED_FAIL_GATE`` exists when that is set.

Coordinator: ``python tests/shared_job.py URL RUN_ID N CHUNK LEASE [budget] [compensate]
[slowinput] [limited] [rated] [exact]``
prints the run's counts as JSON (or ``aborted`` and the counts).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncbatch as ab


def _closed(gate: str) -> bool:
    return not os.path.exists(gate)


def _log(line: str) -> None:
    fd = os.open(os.environ["SHARED_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line} {os.getpid()} {time.time():.4f}\n".encode())
    finally:
        os.close(fd)


async def job(x: int) -> dict[str, int]:
    start = int(os.environ.get("SHARED_FAIL_FROM", "-1"))
    gate = os.environ.get("SHARED_FAIL_GATE")
    if gate and start >= 0 and x >= start and _closed(gate):
        _log(f"held {x}")  # a failing item waits until the test opens the gate
        while _closed(gate):  # noqa: ASYNC110  (another process opens it: a file)
            await asyncio.sleep(0.01)
    _log(f"start {x}")
    await asyncio.sleep(float(os.environ.get("SHARED_SLEEP", "0")))
    every = int(os.environ.get("SHARED_FAIL_EVERY", "0"))
    if every and x % every == 0:
        raise ab.PermanentError(f"item {x} is malformed")
    if start >= 0 and x >= start:
        raise ab.PermanentError(f"item {x} fails")
    _log(f"done {x}")
    return {"v": 2 * x, "pid": os.getpid()}  # which process ran (and so wrote) it


class RetryLater(ab.RecoverableError):
    """A failure whose server asked for a wait (``retry_after`` seconds)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"retry in {seconds} s")
        self.retry_after = seconds


async def flaky(x: int) -> int:
    """Every ``$SHARED_RETRY_EVERY``-th item fails its first attempt with a long Retry-After."""
    _log(f"start {x}")
    every = int(os.environ.get("SHARED_RETRY_EVERY", "10"))
    if x % every == 0 and ab.current_job().attempt == 1:
        raise RetryLater(float(os.environ.get("SHARED_RETRY_AFTER", "1.0")))
    _log(f"done {x}")
    return x


async def undo(item: int, result: dict[str, int]) -> None:
    _log(f"undo {item}")


async def _slowly(n: int) -> AsyncIterator[int]:
    for i in range(n):
        if i % 50 == 0:
            await asyncio.sleep(0.02)
        yield i


async def main() -> None:
    import shared_job  # the importable module, not __main__: workers import it by name

    url, run_id, n, chunk, lease = sys.argv[1:6]
    flags = set(sys.argv[6:])
    options: ab.BatchOptions = {}
    if "budget" in flags:
        options["budget"] = ab.ErrorBudget(max_failures=5)
    if "compensate" in flags:
        options["compensate"] = shared_job.undo
    if "limited" in flags:  # a bulkhead of 4 around every attempt, split among workers
        options["limits"] = {"api": 4}
        options["uses"] = ["api"]
    if "rated" in flags:  # a rate limit on the same dependency
        options["rates"] = {"api": ab.Rate(float(os.environ.get("SHARED_RATE", "40")))}
        options["uses"] = ["api"]
    exact = "exact" in flags  # ...held exactly across workers by the database
    items: Any = range(int(n))
    if "slowinput" in flags:  # a live input: the coordinator can die while it enqueues
        items = _slowly(int(n))
    try:
        result = await ab.run_batch(
            shared_job.job,
            items,
            store=url,
            run_id=run_id,
            concurrency=int(os.environ.get("SHARED_CONCURRENCY", "50")),
            shared=ab.SharedRun(chunk_size=int(chunk), lease=float(lease), exact_limits=exact),
            **options,
        )
    except ab.BatchAborted as exc:
        counts = {s.value: c for s, c in exc.result.counts.items() if c}
        print(json.dumps({"aborted": True, "counts": counts}), flush=True)
        return
    print(json.dumps({s.value: c for s, c in result.counts.items() if c}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
