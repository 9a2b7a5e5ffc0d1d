"""The loops people write without asyncbatch: the baselines every ratio is measured against.

Each takes ``(job, items, concurrency)`` and runs ``job`` over every item.
Which one is strongest depends on the job; the benchmarks measure them all
in the same run and compare asyncbatch against the best.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

__all__ = ["BASELINES", "bounded_taskgroup", "floor", "gather_all", "queue_pool"]

Job = Callable[[Any], Awaitable[Any]]


async def floor(job: Job, items: Iterable[Any], concurrency: int) -> list[Any]:
    """Not a real alternative: `concurrency` loops awaiting each job in turn, with no
    results, retries or bookkeeping. What the event loop itself costs."""
    it = iter(items)

    async def worker() -> None:
        for item in it:
            await job(item)

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    return []


async def queue_pool(job: Job, items: Iterable[Any], concurrency: int) -> list[Any]:
    """A bounded ``asyncio.Queue`` and `concurrency` worker tasks (memory bounded too)."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=concurrency)
    results: list[Any] = []
    done = object()

    async def worker() -> None:
        while (item := await queue.get()) is not done:
            results.append(await job(item))

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
        for item in items:
            await queue.put(item)
        for _ in range(concurrency):
            await queue.put(done)
    return results


async def bounded_taskgroup(job: Job, items: Iterable[Any], concurrency: int) -> list[Any]:
    """A task per item, created only once a semaphore slot is free (memory bounded)."""
    sem = asyncio.Semaphore(concurrency)
    results: list[Any] = []

    async def one(item: Any) -> None:
        try:
            results.append(await job(item))
        finally:
            sem.release()

    async with asyncio.TaskGroup() as tg:
        for item in items:
            await sem.acquire()
            tg.create_task(one(item))
    return results


async def gather_all(job: Job, items: Iterable[Any], concurrency: int) -> list[Any]:
    """Every task created up front, each waiting on the semaphore (memory grows with N)."""
    sem = asyncio.Semaphore(concurrency)

    async def one(item: Any) -> Any:
        async with sem:
            return await job(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


BASELINES: dict[str, Callable[[Job, Iterable[Any], int], Awaitable[list[Any]]]] = {
    "bounded TaskGroup (acquire, then create the task)": bounded_taskgroup,
    "gather every task, semaphore inside": gather_all,
    "asyncio.Queue worker pool": queue_pool,
}
"""The real alternatives (the floor is not one: it keeps no results)."""
