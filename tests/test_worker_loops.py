"""How many worker loops a run starts and keeps: what it can use, never fewer than it needs."""

from __future__ import annotations

import asyncio

import pytest

import asyncbatch as ab


async def test_a_small_input_starts_only_as_many_workers_as_items() -> None:
    peak = 0

    async def job(x: int) -> int:
        nonlocal peak
        peak = max(peak, len(asyncio.all_tasks()))
        await asyncio.sleep(0)
        return x

    result = await ab.run_batch(job, range(100), concurrency=10_000)
    assert result.ok
    assert len(result.outcomes) == 100
    assert peak <= 100 + 5  # the workers, plus the test's and the run's own few tasks


@pytest.mark.looptime
async def test_retries_after_the_input_ends_still_run_side_by_side() -> None:
    # Every job fails once and backs off: when the retries come due, the input is
    # long exhausted and workers have left; the ones that stayed run all 20 at once.
    seen: set[int] = set()
    running = peak = 0

    async def job(x: int) -> int:
        nonlocal running, peak
        if x not in seen:
            seen.add(x)
            await asyncio.sleep(x * 0.01)  # first attempts end one by one
            raise ab.TransientError("once")
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(1)
        running -= 1
        return x

    policy = ab.RetryPolicy(
        {ab.ErrorKind.TRANSIENT: ab.Retry(attempts=2, backoff=ab.Backoff.constant(5))}
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await ab.run_batch(job, range(20), concurrency=20, retry=policy)
    assert result.ok
    assert peak == 20
    assert loop.time() - start == pytest.approx(0.19 + 5 + 1, abs=0.05)


class Peak:
    """A job that waits ``seconds`` and counts how many of it ran at once (``most``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.running = self.most = 0

    async def __call__(self, x: int) -> int:
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(self.seconds)
        self.running -= 1
        return x


async def test_an_unsized_input_runs_at_full_concurrency() -> None:
    job = Peak(0.001)
    result = await ab.run_batch(job, (i for i in range(200)), concurrency=50)
    assert result.ok
    assert job.most == 50


async def test_jobs_that_never_suspend_still_let_other_tasks_run() -> None:
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    async def cached(x: int) -> int:  # returns without ever awaiting anything
        return x

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    result = await ab.run_batch(cached, range(20_000), concurrency=10)
    done = True
    await task
    assert result.ok
    # Each worker hands the loop a turn every TURN jobs: the ticker ran all along.
    assert ticks - before >= 20_000 // (10 * 32)


@pytest.mark.timeout(60)  # without the turns, this would run a billion jobs
async def test_a_run_of_never_suspending_jobs_can_be_cancelled_promptly() -> None:
    ran = 0
    started = asyncio.Event()

    async def cached(x: int) -> int:
        nonlocal ran
        ran += 1
        if ran == 1_000:
            started.set()
        return x

    task = asyncio.create_task(ab.run_batch(cached, range(10**9), concurrency=10))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ran < 100_000  # not a billion: the cancel reached the workers at their next turn


async def test_workers_start_as_the_run_needs_them() -> None:
    # Jobs that never suspend keep a few workers busy; no need for 10,000.
    peak_tasks = 0

    async def cached(x: int) -> int:
        nonlocal peak_tasks
        peak_tasks = max(peak_tasks, len(asyncio.all_tasks()))
        return x

    result = await ab.run_batch(cached, range(20_000), concurrency=10_000)
    assert result.ok
    assert peak_tasks < 2_000

    # Jobs that wait reach the full concurrency.
    waits = Peak(0.01)
    result = await ab.run_batch(waits, range(3_000), concurrency=1_000)
    assert result.ok
    assert waits.most == 1_000
