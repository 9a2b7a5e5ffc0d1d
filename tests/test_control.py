"""Live control of a running batch: pause, resume, resize, progress (virtual time)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import asyncbatch as ab


class Meter:
    """A job that takes ``latency`` seconds and records how many run at once."""

    def __init__(self, latency: float = 1.0) -> None:
        self.latency = latency
        self.in_flight = 0
        self.max_in_flight = 0
        self.started = 0

    async def job(self, item: int) -> int:
        self.in_flight += 1
        self.started += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency)
        finally:
            self.in_flight -= 1
        return item


@pytest.mark.looptime
@pytest.mark.parametrize("options", [{}, {"timeout": 100}], ids=["plain", "full"])
async def test_pause_and_resume_move_in_flight_exactly(options: dict[str, float]) -> None:
    meter = Meter(latency=1.0)
    batch = ab.Batch(meter.job, concurrency=5, **options)  # type: ignore[arg-type]
    seen: list[tuple[float, int]] = []

    async def steer() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(0.5)
        seen.append((0.5, meter.in_flight))
        batch.pause()
        await asyncio.sleep(0.6)  # t=1.1: the attempts in flight at the pause ended
        seen.append((1.1, meter.in_flight))
        assert batch.progress().paused
        await asyncio.sleep(3.0)  # t=4.1: still nothing starts
        seen.append((4.1, meter.in_flight))
        started = meter.started
        batch.resume()
        await asyncio.sleep(0.1)
        seen.append((4.2, meter.in_flight))
        assert meter.started == started + 5
        assert loop.time() - t0 == pytest.approx(4.2)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(steer())
        result = await batch.run(range(40))
    assert result.ok
    assert seen == [(0.5, 5), (1.1, 0), (4.1, 0), (4.2, 5)]
    # 40 jobs of 1 s at 5: 8 s, plus the 3.1 s paused.
    assert result.duration == pytest.approx(8 + 3.1, abs=0.05)


@pytest.mark.looptime
@pytest.mark.parametrize("options", [{}, {"timeout": 100}], ids=["plain", "full"])
async def test_resize_down_and_up_follows_the_command(options: dict[str, float]) -> None:
    meter = Meter(latency=1.0)
    batch = ab.Batch(meter.job, concurrency=8, **options)  # type: ignore[arg-type]
    seen: list[int] = []

    async def steer() -> None:
        await asyncio.sleep(0.5)
        seen.append(meter.in_flight)  # 8
        batch.resize(3)
        await asyncio.sleep(0.1)
        seen.append(meter.in_flight)  # still 8: attempts in flight are never cut
        await asyncio.sleep(0.5)  # t=1.1: they ended, only 3 started
        seen.append(meter.in_flight)
        await asyncio.sleep(2.0)  # t=3.1
        seen.append(meter.in_flight)
        batch.resize(12)  # beyond the initial 8: new workers start
        await asyncio.sleep(0.01)
        seen.append(meter.in_flight)
        assert batch.progress().concurrency == 12
        await asyncio.sleep(1.0)
        seen.append(meter.in_flight)
        batch.resize(4)
        await asyncio.sleep(1.0)
        seen.append(meter.in_flight)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(steer())
        result = await batch.run(range(100))
    assert result.ok
    assert seen == [8, 8, 3, 3, 12, 12, 4]
    assert meter.max_in_flight == 12


@pytest.mark.looptime
async def test_a_batch_paused_at_its_end_finishes_on_resume() -> None:
    meter = Meter(latency=1.0)
    batch = ab.Batch(meter.job, concurrency=10)

    async def steer() -> None:
        await asyncio.sleep(0.5)
        batch.pause()
        await asyncio.sleep(9.5)
        assert batch.progress().done == 10
        batch.resume()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(steer())
        result = await batch.run(range(10))
    assert result.ok
    assert result.duration == pytest.approx(10.0)


@pytest.mark.looptime
async def test_a_paused_batch_keeps_retries_waiting_and_loses_nothing() -> None:
    tries: dict[int, int] = {}

    async def job(item: int) -> int:
        tries[item] = tries.get(item, 0) + 1
        await asyncio.sleep(0.5)
        if tries[item] == 1 and item % 2:
            raise ConnectionError("flaky")
        return item

    batch = ab.Batch(
        job, concurrency=4, retry=ab.Retry(attempts=3, backoff=ab.Backoff.constant(0.2))
    )

    async def steer() -> None:
        await asyncio.sleep(0.6)  # items 1 and 3 failed at 0.5; 4..7 run until 1.0
        batch.pause()
        await asyncio.sleep(2.0)
        p = batch.progress()
        assert (p.in_flight, p.paused, p.done) == (0, True, 4)
        assert p.ready == 4  # the retries of 1, 3, 5, 7 came due and wait for the resume
        assert p.elapsed == pytest.approx(2.6)
        batch.resume()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(steer())
        result = await batch.run(range(12))
    assert result.ok
    assert sorted(o.result for o in result.outcomes) == list(range(12))


@pytest.mark.looptime
async def test_stream_can_be_paused_and_resized() -> None:
    meter = Meter(latency=1.0)
    batch = ab.Batch(meter.job, concurrency=6)

    async def items() -> AsyncIterator[int]:
        for i in range(30):
            yield i

    got = 0
    async with batch.stream(items()) as outcomes:
        async for _ in outcomes:
            got += 1
            if got == 6:
                batch.resize(2)
                await asyncio.sleep(1.5)
                assert meter.in_flight == 2
                batch.pause()
                await asyncio.sleep(1.5)
                assert meter.in_flight == 0
                batch.resume()
                batch.resize(6)
    assert got == 30
    assert meter.max_in_flight == 6


@pytest.mark.looptime
async def test_progress_snapshot_counts_rate_and_eta() -> None:
    tries: dict[int, int] = {}

    async def job(item: int) -> int:
        tries[item] = tries.get(item, 0) + 1
        await asyncio.sleep(1.0)
        if item >= 90 and tries[item] == 1:
            raise ConnectionError("flaky")
        return item

    batch = ab.Batch(
        job, concurrency=10, retry=ab.Retry(attempts=2, backoff=ab.Backoff.constant(50))
    )
    snaps: list[ab.Progress] = []

    async def watch() -> None:
        for _ in range(4):
            await asyncio.sleep(4.5)
            snaps.append(batch.progress())
        await asyncio.sleep(8)  # t=26: items 90..99 failed at t=10 and wait 50 s
        snaps.append(batch.progress())

    async with asyncio.TaskGroup() as tg:
        tg.create_task(watch())
        result = await batch.run(range(100))
    assert result.ok
    first = snaps[0]
    assert (first.total, first.done, first.in_flight, first.parked) == (100, 40, 10, 0)
    assert first.rate == pytest.approx(40 / 4.5)
    assert first.eta == pytest.approx(60 / (40 / 4.5))
    assert first.concurrency == 10
    assert not first.paused
    # t=13.5: no snapshot is 10 s old yet, so the rate is the whole run's.
    assert snaps[2].rate == pytest.approx(90 / 13.5)
    # t=18: measured since the latest snapshot at least 10 s old (t=4.5, 40 done).
    assert snaps[3].rate == pytest.approx((90 - 40) / 13.5)
    last = snaps[-1]
    assert (last.done, last.in_flight, last.parked, last.retrying) == (90, 0, 10, 10)
    assert last.failed == 0
    assert "90/100 done" in str(last)
    assert "10 parked (10 retrying)" in str(last)


def test_controls_need_a_running_batch() -> None:
    batch = ab.Batch(Meter().job)
    for call in (batch.pause, batch.resume, batch.progress, lambda: batch.resize(3)):
        with pytest.raises(ab.AsyncBatchError, match="needs a running batch"):
            call()


@pytest.mark.looptime
async def test_resize_rejects_a_bad_size() -> None:
    batch = ab.Batch(Meter(0.1).job, concurrency=2)

    async def steer() -> None:
        await asyncio.sleep(0.05)
        with pytest.raises(ab.ConfigError, match="resize"):
            batch.resize(0)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(steer())
        await batch.run(range(4))
