"""Saga rollback: compensation on abort, reverse completion order, retries, failures."""

from __future__ import annotations

import asyncio

import pytest

import asyncbatch as ab


async def test_abort_undoes_succeeded_jobs_newest_first() -> None:
    undone: list[int] = []

    async def job(x: int) -> int:
        await asyncio.sleep(x / 1000)
        if x == 5:
            raise ab.FatalError("downstream corrupted")
        return x * 10

    async def undo(item: int, result: int) -> None:
        assert result == item * 10
        undone.append(item)

    with pytest.raises(ab.BatchAborted) as info:
        await ab.run_batch(job, range(8), concurrency=1, compensate=undo)
    assert undone == [4, 3, 2, 1, 0]
    partial = info.value.result
    assert [o.status for o in partial.outcomes[:5]] == [ab.JobStatus.COMPENSATED] * 5
    assert partial.outcomes[5].status is ab.JobStatus.FAILED
    assert partial.counts[ab.JobStatus.COMPENSATED] == 5
    assert partial.counts[ab.JobStatus.SUCCEEDED] == 0
    assert len(partial.outcomes) == 6


async def test_a_compensation_is_retried_and_a_lasting_failure_is_reported() -> None:
    calls: dict[int, int] = {}

    async def job(x: int) -> int:
        if x == 3:
            raise ab.FatalError("stop")
        return x

    async def undo(item: int, result: int) -> None:
        calls[item] = calls.get(item, 0) + 1
        if item == 1 and calls[item] < 2:
            raise ConnectionError("undo blip")
        if item == 2:
            raise RuntimeError("cannot undo 2")

    with pytest.raises(ab.BatchAborted) as info:
        await ab.run_batch(
            job,
            range(5),
            concurrency=1,
            compensate=undo,
            compensate_retry=ab.Retry(attempts=3, backoff=ab.Backoff.constant(0)),
        )
    partial = info.value.result
    assert calls == {0: 1, 1: 2, 2: 3}
    assert partial["1"].status is ab.JobStatus.COMPENSATED
    assert partial["2"].status is ab.JobStatus.SUCCEEDED  # undo failed for good
    assert partial.counts[ab.JobStatus.COMPENSATED] == 2
    assert partial.report.compensation is not None
    assert partial.report.compensation["failed"] == 1
    assert "cannot undo 2" in partial.report.compensation["failures"]["2"]


async def test_no_compensation_when_the_batch_succeeds() -> None:
    undone: list[int] = []

    async def undo(item: int, result: int) -> None:
        undone.append(item)

    async def job(x: int) -> int:
        return x

    result = await ab.run_batch(job, range(3), compensate=undo)
    assert result.ok
    assert undone == []
