"""Breakers inside a batch: parked jobs spend no attempts or slots; fail and fallback policies."""

from __future__ import annotations

import asyncio

import pytest

import asyncbatch as ab

FAST = ab.Retry(attempts=10, backoff=ab.Backoff.constant(0.01))


class Upstream:
    """A dependency that is down until ``recovers_at`` (loop time)."""

    def __init__(self, recovers_at: float) -> None:
        self.recovers_at = recovers_at
        self.calls = 0

    async def call(self, x: int) -> int:
        self.calls += 1
        await asyncio.sleep(0.01)
        if asyncio.get_running_loop().time() < self.recovers_at:
            raise ConnectionError("upstream down")
        return x


@pytest.mark.looptime
async def test_parked_jobs_spend_no_attempts_and_finish_after_recovery() -> None:
    loop = asyncio.get_running_loop()
    api = Upstream(recovers_at=loop.time() + 3)
    events: list[str] = []

    async def job(x: int) -> int:
        async with ab.guard("api"):
            return await api.call(x)

    result = await ab.run_batch(
        job,
        range(40),
        concurrency=8,
        breakers={"api": ab.Breaker(fail_max=3, reset_timeout=1)},
        retry=FAST,
        on_event=lambda e: events.append(e.name),
    )
    assert result.ok
    # Far fewer calls than 40 jobs x attempts: while open, nobody called.
    assert api.calls < 40 + 20
    assert max(o.attempts for o in result.outcomes) <= 4
    assert (
        events.index("BreakerOpened")
        < events.index("BreakerHalfOpen")
        < events.index("BreakerClosed")
    )


@pytest.mark.looptime
async def test_jobs_not_using_an_open_dependency_keep_their_pace() -> None:
    loop = asyncio.get_running_loop()
    api = Upstream(recovers_at=loop.time() + 1000)
    other_done: list[float] = []
    start = loop.time()

    async def job(x: int) -> int:
        if x % 2:
            async with ab.guard("api"):
                return await api.call(x)
        await asyncio.sleep(0.1)
        other_done.append(loop.time())
        return x

    await ab.run_batch(
        job,
        range(40),
        concurrency=2,
        breakers={"api": ab.Breaker(fail_max=2, reset_timeout=1000, on_open="fail")},
        retry=FAST,
    )
    # 20 jobs of 0.1 s on 2 slots: ~1 s, not held up by the 1000 s open circuit.
    assert max(other_done) - start < 1.6


async def test_on_open_fail_dead_letters_at_once_naming_the_dependency() -> None:
    calls = 0

    async def job(x: int) -> int:
        nonlocal calls
        async with ab.guard("payments"):
            calls += 1
            raise ConnectionError("refused")

    result = await ab.run_batch(
        job,
        range(20),
        concurrency=1,
        breakers={"payments": ab.Breaker(fail_max=2, reset_timeout=60, on_open="fail")},
        retry=ab.Retry(attempts=2, backoff=ab.Backoff.constant(0)),
    )
    rejected = [o for o in result.outcomes if isinstance(o.error, ab.CircuitOpen)]
    assert len(rejected) >= 15
    assert all(o.status is ab.JobStatus.DEAD_LETTERED for o in rejected)
    # Jobs that arrive while it is open are rejected on their first and only attempt.
    # (The two jobs whose failures opened it had one real attempt before.)
    assert sum(o.attempts == 1 for o in rejected) >= len(rejected) - 2
    assert all(o.error.dependency == "payments" for o in rejected)  # type: ignore[union-attr]
    assert calls <= 4


async def test_on_open_fallback_returns_the_fallback_result() -> None:
    async def cached(item: int, error: BaseException) -> str:
        assert isinstance(error, ab.CircuitOpen)
        return f"cached-{item}"

    async def job(x: int) -> str:
        async with ab.guard("model"):
            raise ab.TransientError("overloaded")

    result = await ab.run_batch(
        job,
        range(10),
        concurrency=1,
        breakers={
            "model": ab.Breaker(fail_max=2, reset_timeout=60, on_open="fallback", fallback=cached)
        },
        retry=ab.Retry(attempts=3, backoff=ab.Backoff.constant(0)),
    )
    fell_back = [o for o in result.outcomes if o.fell_back]
    assert fell_back
    assert all(o.status is ab.JobStatus.SUCCEEDED for o in fell_back)
    assert fell_back[-1].result == "cached-9"


async def test_a_failing_fallback_is_handled_as_the_attempt_failure() -> None:
    async def broken(item: int, error: BaseException) -> str:
        raise ab.PermanentError("no cache either")

    async def job(x: int) -> str:
        async with ab.guard("model"):
            raise ab.TransientError("overloaded")

    result = await ab.run_batch(
        job,
        range(6),
        concurrency=1,
        breakers={
            "model": ab.Breaker(fail_max=1, reset_timeout=60, on_open="fallback", fallback=broken)
        },
        retry=ab.Retry(attempts=2, backoff=ab.Backoff.constant(0)),
    )
    last = result.outcomes[-1]
    assert last.status is ab.JobStatus.DEAD_LETTERED
    assert isinstance(last.error, ab.PermanentError)


@pytest.mark.looptime
async def test_uses_guards_whole_attempts_with_bulkhead_and_rate() -> None:
    loop = asyncio.get_running_loop()
    in_flight = 0
    peak = 0
    starts: list[float] = []

    async def job(x: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        starts.append(loop.time())
        await asyncio.sleep(0.5)
        in_flight -= 1
        return x

    result = await ab.run_batch(
        job,
        range(30),
        concurrency=20,
        uses=["db"],
        limits={"db": 3},
        rates={"db": ab.Rate(10, per=1)},
    )
    assert result.ok
    assert peak == 3
    # At most 10 calls start in any second, the first one included.
    for t in starts:
        assert sum(1 for s in starts if t <= s < t + 1) <= 10
