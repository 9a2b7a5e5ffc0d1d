"""The garbage collector around a run: room for the young generation, nothing left in cycles."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

import asyncbatch as ab


@pytest.fixture(autouse=True)
def default_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


async def test_the_young_generation_gets_room_while_a_run_is_active_and_it_is_restored() -> None:
    seen: list[tuple[int, int, int]] = []

    async def job(x: int) -> int:
        seen.append(gc.get_threshold())
        return x

    await ab.run_batch(job, range(3), concurrency=1000)
    assert seen == [(20_000, 10, 10)] * 3
    assert gc.get_threshold() == (700, 10, 10)


async def test_overlapping_runs_restore_the_thresholds_when_the_last_one_ends() -> None:
    first_may_end = asyncio.Event()
    during: list[tuple[int, int, int]] = []

    async def slow(x: int) -> int:
        await first_may_end.wait()
        return x

    async def quick(x: int) -> int:
        return x

    first = asyncio.create_task(ab.run_batch(slow, range(2), concurrency=2))
    await asyncio.sleep(0)
    await ab.run_batch(quick, range(2), concurrency=2000)
    during.append(gc.get_threshold())  # the first run is still active
    first_may_end.set()
    await first
    assert during == [(40_000, 10, 10)]
    assert gc.get_threshold() == (700, 10, 10)


async def test_a_threshold_changed_during_the_run_is_kept() -> None:
    async def job(x: int) -> int:
        gc.set_threshold(1234, 5, 5)
        return x

    await ab.run_batch(job, range(1))
    assert gc.get_threshold() == (1234, 5, 5)


async def test_a_higher_threshold_and_a_disabled_collector_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[int, int, int]] = []

    async def job(x: int) -> int:
        seen.append(gc.get_threshold())
        return x

    gc.set_threshold(50_000, 10, 10)
    await ab.run_batch(job, range(1), concurrency=10)
    gc.set_threshold(700, 10, 10)
    gc.disable()
    try:
        await ab.run_batch(job, range(1), concurrency=10)
    finally:
        gc.enable()
    monkeypatch.setenv("ASYNCBATCH_GC", "leave")
    await ab.run_batch(job, range(1), concurrency=10)
    assert seen == [(50_000, 10, 10), (700, 10, 10), (700, 10, 10)]


@pytest.mark.parametrize("api", ["run_batch", "stream"])
async def test_a_dropped_result_is_freed_at_once_not_by_the_cyclic_collector(api: str) -> None:
    async def job(x: int) -> int:
        return x

    gc.collect()
    gc.disable()
    try:
        if api == "run_batch":
            result = await ab.run_batch(job, range(2000), concurrency=10)
            assert len(result.outcomes) == 2000
            del result
        else:
            async with ab.Batch(job, concurrency=10).stream(range(2000)) as outcomes:
                assert len([o async for o in outcomes]) == 2000
        left_in_cycles = gc.collect()
    finally:
        gc.enable()
    # The run's own internals (a few dozen objects) may wait for the
    # collector; its 2,000 outcomes must not.
    assert left_in_cycles < 500
