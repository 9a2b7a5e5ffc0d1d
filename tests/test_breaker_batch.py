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


# --------------------------------------------- parked jobs: deadlines, wake-ups, reports


@pytest.mark.looptime
async def test_jobs_parked_behind_an_open_breaker_end_at_their_deadline() -> None:
    loop = asyncio.get_running_loop()
    api = Upstream(recovers_at=loop.time() + 1000)
    admitted: dict[str, float] = {}
    ended: dict[str, float] = {}

    async def job(x: int) -> int:
        admitted.setdefault(ab.current_job().key, loop.time())
        async with ab.guard("api"):
            return await api.call(x)

    batch = ab.Batch(
        job,
        concurrency=4,
        deadline=0.5,
        breakers={"api": ab.Breaker(fail_max=2, reset_timeout=3)},
        retry=FAST,
    )
    async with batch.stream(range(20)) as outcomes:
        async for outcome in outcomes:
            ended[outcome.key] = loop.time()
            assert outcome.status is ab.JobStatus.DEAD_LETTERED
    assert len(ended) == 20
    for key, t in ended.items():
        # Every job ends within its own 0.5 s, counted from its admission, not ~3 s later
        # when the breaker would let a probe through.
        assert t - admitted[key] <= 0.5 + 0.02, (key, t - admitted[key])
    assert loop.time() < 2.5


@pytest.mark.looptime
async def test_a_job_rejected_on_its_first_call_still_ends_with_deadline_exceeded() -> None:
    loop = asyncio.get_running_loop()
    api = Upstream(recovers_at=loop.time() + 1000)

    async def job(x: int) -> int:
        async with ab.guard("api"):
            return await api.call(x)

    result = await ab.run_batch(
        job,
        range(10),
        concurrency=1,
        deadline=2,
        breakers={"api": ab.Breaker(fail_max=1, reset_timeout=60)},
        retry=ab.Retry(attempts=1),
    )
    never_called = [o for o in result.outcomes if o.attempts == 0]
    # The first job opened the circuit; the others never got a call through.
    assert len(never_called) == 9
    assert all(isinstance(o.error, ab.DeadlineExceeded) for o in never_called)
    assert all(o.status is ab.JobStatus.DEAD_LETTERED for o in never_called)
    assert result.report.to_dict()["groups"]  # the report says why they ended
    assert loop.time() < 60  # not held until the breaker's reset_timeout


@pytest.mark.looptime
async def test_jobs_parked_behind_a_hung_probe_wake_once_not_every_tenth_of_a_second() -> None:
    loop = asyncio.get_running_loop()
    entered = 0
    probe_release = asyncio.Event()
    state = {"down": True}

    async def job(x: int) -> int:
        nonlocal entered
        entered += 1
        async with ab.guard("api"):
            if state["down"] and x < 2:
                raise ConnectionError("down")
            if state["down"]:
                # The first call after the open period is the probe: it hangs until t=70.
                await probe_release.wait()
                state["down"] = False
            return x

    async def release_later() -> None:
        await asyncio.sleep(70)
        probe_release.set()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(release_later())
        result = await ab.run_batch(
            job,
            range(1000),
            concurrency=10,
            breakers={"api": ab.Breaker(fail_max=2, reset_timeout=5)},
            retry=ab.Retry(attempts=3, backoff=ab.Backoff.constant(0.01)),
        )
    assert result.ok
    assert loop.time() >= 70
    # Each job entered the job function about once or twice (rejected, then woken when the
    # probe closed the circuit), not once per 0.1 s of the 65 s the probe hung (~650 times).
    assert entered <= 2 * 1000 + 20


@pytest.mark.looptime
async def test_a_reopened_circuit_keeps_its_jobs_parked_and_lets_them_probe_in_turn() -> None:
    loop = asyncio.get_running_loop()
    api = Upstream(recovers_at=loop.time() + 7)
    calls_at: list[float] = []

    async def job(x: int) -> int:
        async with ab.guard("api"):
            calls_at.append(loop.time())
            return await api.call(x)

    result = await ab.run_batch(
        job,
        range(50),
        concurrency=5,
        breakers={"api": ab.Breaker(fail_max=2, reset_timeout=2)},
        retry=ab.Retry(attempts=3, backoff=ab.Backoff.constant(0.01)),
    )
    assert result.ok
    # While down (about 7 s, three open periods) only the probes reached the dependency.
    during_outage = [t for t in calls_at if 0.1 < t < 7]
    assert len(during_outage) <= 4


@pytest.mark.looptime
async def test_jobs_waiting_on_an_open_breaker_are_reported_per_dependency(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    api = Upstream(recovers_at=loop.time() + 4)
    waiting: list[ab.JobsWaiting] = []

    async def job(x: int) -> int:
        async with ab.guard("api"):
            return await api.call(x)

    def collect(event: ab.Event) -> None:
        if isinstance(event, ab.JobsWaiting):
            waiting.append(event)

    with caplog.at_level("WARNING", logger="asyncbatch"):
        result = await ab.run_batch(
            job,
            range(30),
            concurrency=5,
            breakers={"api": ab.Breaker(fail_max=2, reset_timeout=1)},
            retry=FAST,
            on_event=[collect, ab.LoggingHook()],
        )
    assert result.ok
    assert waiting, "parked jobs were never reported"
    assert {e.dependency for e in waiting} == {"api"}
    assert max(e.waiting for e in waiting) >= 20
    assert waiting[-1].waiting == 0  # and the end of the stall is reported too
    assert any(e.state == "open" for e in waiting if e.waiting)
    logged = [r for r in caplog.records if r.getMessage().startswith("JobsWaiting")]
    assert logged
    assert logged[0].levelname == "WARNING"
    assert "dependency=api" in logged[0].getMessage()


@pytest.mark.looptime
async def test_leaving_a_stream_early_leaves_no_park_timers_on_the_loop() -> None:
    loop = asyncio.get_running_loop()

    async def job(x: int) -> int:
        async with ab.guard("api"):
            raise ConnectionError("down")

    batch = ab.Batch(
        job,
        concurrency=4,
        breakers={"api": ab.Breaker(fail_max=2, reset_timeout=30)},
        retry=ab.Retry(attempts=5, backoff=ab.Backoff.constant(60)),
    )
    async with batch.stream(range(100)):
        await asyncio.sleep(5)  # the circuit is open, most jobs are parked on it
    # Nothing of the run may stay scheduled: no backoff timer, no circuit check that
    # would re-arm itself every reset_timeout and keep the run's jobs alive.
    pending = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    assert pending == []
