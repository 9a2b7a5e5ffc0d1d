"""Events and hooks: order, sync and async hooks, failing and slow hooks, the logging hook."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

import asyncbatch as ab

FAST = ab.Retry(attempts=2, backoff=ab.Backoff.constant(0))


async def flaky(x: int) -> int:
    if x == 1 and ab.current_job().attempt == 1:
        raise ab.TransientError("blip")
    if x == 2:
        raise ab.PermanentError("bad item")
    return x


async def test_hooks_receive_events_in_order() -> None:
    events: list[ab.Event] = []
    result = await ab.run_batch(flaky, range(3), concurrency=1, retry=FAST, on_event=events.append)
    names = [e.name for e in events]
    assert names == ["RunStarted", "RetryScheduled", "JobDeadLettered", "RunFinished"]
    retry = events[1]
    assert isinstance(retry, ab.RetryScheduled)
    assert (retry.key, retry.attempt, retry.kind) == ("1", 1, "transient")
    dead = events[2]
    assert isinstance(dead, ab.JobDeadLettered)
    assert (dead.key, dead.error_type, dead.message) == (
        "2",
        "asyncbatch._errors.PermanentError",
        "bad item",
    )
    finished = events[-1]
    assert isinstance(finished, ab.RunFinished)
    assert finished.counts["succeeded"] == 2
    assert finished.ok is False
    assert all(e.run_id == result.run_id for e in events)


def test_events_are_frozen_values() -> None:
    event = ab.RetryScheduled(
        run_id="r", key="k", attempt=1, delay=0.5, kind="transient", error_type="E", message="m"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.key = "other"  # type: ignore[misc]
    assert event.fields()["delay"] == 0.5


async def test_async_hooks_and_several_hooks_all_get_every_event() -> None:
    sync_seen: list[str] = []
    async_seen: list[str] = []

    async def async_hook(event: ab.Event) -> None:
        await asyncio.sleep(0)
        async_seen.append(event.name)

    await ab.run_batch(
        flaky, range(3), retry=FAST, on_event=[lambda e: sync_seen.append(e.name), async_hook]
    )
    assert sync_seen == async_seen
    assert sync_seen[0] == "RunStarted"
    assert sync_seen[-1] == "RunFinished"


async def test_a_raising_hook_is_logged_and_does_not_break_the_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: ab.Event) -> None:
        raise RuntimeError("alerting is down")

    seen: list[str] = []
    with caplog.at_level(logging.ERROR, logger="asyncbatch"):
        result = await ab.run_batch(
            flaky, range(3), retry=FAST, on_event=[broken, lambda e: seen.append(e.name)]
        )
    assert result.counts[ab.JobStatus.SUCCEEDED] == 2
    assert seen[-1] == "RunFinished"
    assert "alerting is down" in caplog.text


async def test_a_slow_hook_does_not_block_workers() -> None:
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    finished_jobs = 0

    async def slow_hook(event: ab.Event) -> None:
        if event.name == "RetryScheduled":
            await release.wait()  # an alert endpoint that hangs

    async def job(x: int) -> int:
        nonlocal finished_jobs
        if x == 0 and ab.current_job().attempt == 1:
            raise ab.TransientError("blip")
        await asyncio.sleep(0)
        finished_jobs += 1
        if finished_jobs == 50:
            loop.call_soon(release.set)  # only released once every job is done
        return x

    result = await asyncio.wait_for(
        ab.run_batch(job, range(50), concurrency=4, retry=FAST, on_event=slow_hook), timeout=10
    )
    assert result.ok


async def test_logging_hook_writes_structured_records(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="asyncbatch"):
        await ab.run_batch(flaky, range(3), concurrency=1, retry=FAST, on_event=ab.LoggingHook())
    by_event = {r.event: r for r in caplog.records if hasattr(r, "event")}  # type: ignore[attr-defined]
    dead = by_event["JobDeadLettered"]
    assert dead.levelno == logging.WARNING
    assert dead.asyncbatch_key == "2"  # type: ignore[attr-defined]
    assert dead.asyncbatch_kind == "permanent"  # type: ignore[attr-defined]
    assert by_event["RunFinished"].levelno == logging.INFO
    assert "JobDeadLettered" in dead.getMessage()


async def test_bad_hooks_are_config_errors() -> None:
    with pytest.raises(ab.ConfigError, match="on_event"):
        await ab.run_batch(flaky, [], on_event=[42])  # type: ignore[list-item]


@pytest.mark.looptime
async def test_a_hook_that_never_returns_cannot_hold_the_run_forever(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()

    async def hung(event: ab.Event) -> None:
        if event.name == "RunFinished":
            await asyncio.Event().wait()

    start = loop.time()
    with caplog.at_level(logging.WARNING, logger="asyncbatch"):
        result = await ab.run_batch(flaky, range(3), retry=FAST, on_event=hung)
    assert result.counts[ab.JobStatus.SUCCEEDED] == 2
    assert loop.time() - start == pytest.approx(10, abs=0.5)
    assert "did not finish" in caplog.text


@pytest.mark.looptime
async def test_a_hook_hung_mid_run_delays_only_the_hooks_and_is_cut_off_at_the_end() -> None:
    loop = asyncio.get_running_loop()
    delivered: list[str] = []

    async def hung(event: ab.Event) -> None:
        delivered.append(event.name)
        if event.name == "RetryScheduled":
            await asyncio.Event().wait()

    start = loop.time()
    result = await ab.run_batch(flaky, range(3), retry=FAST, on_event=hung)
    assert result.counts[ab.JobStatus.SUCCEEDED] == 2
    assert loop.time() - start == pytest.approx(10, abs=0.5)
    assert "RunFinished" not in delivered
