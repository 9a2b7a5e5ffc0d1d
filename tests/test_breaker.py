"""Circuit breakers: the policy, the state machine around aiobreaker, events, timing.

Timing runs on looptime's virtual clock: ``asyncio.sleep(30)`` takes no real time.
"""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, timedelta
from typing import Any

import aiobreaker.circuitbreaker
import pytest

import asyncbatch as ab
from asyncbatch._deps import Dependencies
from asyncbatch._deps._circuit import PROBE_RECHECK


class Down(ConnectionError):
    """The dependency is down (classified TRANSIENT by the built-in rules)."""


class Harness:
    """A run's `Dependencies` with recorded events and classifier calls."""

    def __init__(self, **breakers: ab.Breaker) -> None:
        self.events: list[ab.Event] = []
        self.classified: list[BaseException] = []
        classifier = ab.Classifier()

        def classify(exc: BaseException) -> ab.ErrorKind:
            self.classified.append(exc)
            return classifier(exc)

        self.deps = Dependencies(
            run_id="run-1",
            limits=None,
            rates=None,
            breakers=breakers,
            classify=classify,
            emit=self.events.append,
        )

    async def call(
        self, name: str = "api", error: BaseException | None = None, *, delay: float = 0
    ) -> str:
        async with self.deps.guard(name):
            if delay:
                await asyncio.sleep(delay)
            if error is not None:
                raise error
            return "ok"

    async def fail(self, name: str = "api", times: int = 1) -> None:
        for _ in range(times):
            with pytest.raises(Down):
                await self.call(name, Down("refused"))

    def names(self) -> list[str]:
        return [e.name for e in self.events]

    def state(self, name: str = "api") -> str:
        return self.deps.stats()[name].state


# ----------------------------------------------------------------- policy


def test_breaker_defaults_and_repr() -> None:
    b = ab.Breaker()
    assert (b.fail_max, b.reset_timeout, b.half_open_probes, b.on_open) == (5, 30.0, 1, "park")
    assert repr(b) == "Breaker(fail_max=5, reset_timeout=30, half_open_probes=1, on_open='park')"


def test_breaker_accepts_timedelta_and_shows_fallback_in_repr() -> None:
    async def cached(item: Any, error: ab.CircuitOpen) -> str:
        return "cached"

    b = ab.Breaker(
        reset_timeout=timedelta(minutes=2), on_open="fallback", fallback=cached, name="pay"
    )
    assert b.reset_timeout == 120.0
    assert (
        "fallback=test_breaker_accepts_timedelta_and_shows_fallback_in_repr.<locals>.cached"
        in repr(b)
    )
    assert "name='pay'" in repr(b)


def test_breaker_is_immutable() -> None:
    b = ab.Breaker()
    with pytest.raises(AttributeError):
        b.fail_max = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on_open": "fallback"}, "needs fallback="),
        ({"fallback": lambda item, err: None}, 'only used with on_open="fallback"'),
        ({"on_open": "retry"}, "on_open must be one of"),
        ({"fail_max": 0}, "fail_max must be a positive int"),
        ({"fail_max": True}, "fail_max must be a positive int"),
        ({"half_open_probes": 0}, "half_open_probes must be a positive int"),
        ({"reset_timeout": 0}, "reset_timeout must be > 0"),
        ({"reset_timeout": -1}, "must not be negative"),
        ({"on_open": "fallback", "fallback": "nope"}, "fallback must be an async callable"),
    ],
)
def test_breaker_rejects_bad_options_with_one_line(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ab.ConfigError, match=message) as info:
        ab.Breaker(**kwargs)
    assert "\n" not in str(info.value)


# -------------------------------------------------------------- tripping


@pytest.mark.looptime
async def test_opens_after_fail_max_and_tripping_call_raises_the_original_error() -> None:
    h = Harness(api=ab.Breaker(fail_max=3, reset_timeout=30))
    await h.fail(times=2)
    assert h.state() == "closed"

    original = Down("third strike")
    with pytest.raises(Down) as info:
        await h.call(error=original)
    assert info.value is original  # not aiobreaker's CircuitBreakerError
    assert h.classified[-1] is original  # the classifier judged the real error
    assert h.state() == "open"

    ran = False

    async def body() -> None:
        nonlocal ran
        async with h.deps.guard("api"):
            ran = True

    with pytest.raises(ab.CircuitOpen) as rejected:
        await body()
    assert not ran
    assert rejected.value.dependency == "api"
    assert rejected.value.retry_in == pytest.approx(30)


async def test_tripping_error_keeps_its_own_traceback_and_context() -> None:
    h = Harness(api=ab.Breaker(fail_max=1))
    with pytest.raises(Down) as info:
        await h.call(error=Down("boom"))
    assert info.value.__cause__ is None
    assert info.value.__context__ is None
    assert info.traceback[-1].name == "call"  # raised where the job raised it


async def test_permanent_errors_do_not_trip_or_reset_the_count() -> None:
    h = Harness(api=ab.Breaker(fail_max=3))
    for _ in range(10):
        with pytest.raises(ValueError, match="bad item"):
            await h.call(error=ValueError("bad item"))
    assert h.state() == "closed"
    await h.fail(times=2)
    with pytest.raises(ValueError, match="bad item"):
        await h.call(error=ValueError("bad item"))
    await h.fail()  # third counted failure in a row: the PERMANENT one in between is neutral
    assert h.state() == "open"
    stats = h.deps.stats()["api"]
    assert (stats.calls, stats.failures, stats.successes) == (14, 3, 0)


async def test_a_success_resets_the_consecutive_count() -> None:
    h = Harness(api=ab.Breaker(fail_max=3))
    for _ in range(5):
        await h.fail(times=2)
        assert await h.call() == "ok"
    assert h.state() == "closed"


@pytest.mark.parametrize("kind", ["transient", "recoverable", "fatal"])
async def test_every_non_permanent_kind_counts(kind: str) -> None:
    errors = {
        "transient": ab.TransientError("t"),
        "recoverable": ab.RecoverableError("r"),
        "fatal": ab.FatalError("f"),
    }
    h = Harness(api=ab.Breaker(fail_max=1))
    with pytest.raises(type(errors[kind])):
        await h.call(error=errors[kind])
    assert h.state() == "open"


async def test_cancellation_never_counts() -> None:
    h = Harness(api=ab.Breaker(fail_max=1))
    task = asyncio.create_task(h.call(delay=10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert h.state() == "closed"
    assert h.classified == []


async def test_classifier_decides_what_counts() -> None:
    events: list[ab.Event] = []
    deps = Dependencies(
        run_id="r",
        limits=None,
        rates=None,
        breakers={"api": ab.Breaker(fail_max=1)},
        classify=ab.Classifier([ab.Rule(Down, kind="permanent")]),
        emit=events.append,
    )
    with pytest.raises(Down):
        async with deps.guard("api"):
            raise Down("treated as a bad item by this run's rules")
    assert deps.stats()["api"].state == "closed"


# ------------------------------------------------------------- half-open


@pytest.mark.looptime
async def test_half_open_admits_exactly_half_open_probes_at_once() -> None:
    h = Harness(api=ab.Breaker(fail_max=1, reset_timeout=10, half_open_probes=2))
    await h.fail()
    await asyncio.sleep(10)

    inside = 0
    release = asyncio.Event()

    async def probe() -> None:
        nonlocal inside
        async with h.deps.guard("api"):
            inside += 1
            await release.wait()

    results = await asyncio.gather(
        *(probe() for _ in range(5)), _release_later(release), return_exceptions=True
    )
    rejected = [r for r in results if isinstance(r, ab.CircuitOpen)]
    assert inside == 2
    assert len(rejected) == 3
    assert all(r.retry_in == pytest.approx(PROBE_RECHECK) for r in rejected)
    assert h.state() == "closed"  # the first probe to finish succeeded


async def _release_later(event: asyncio.Event) -> None:
    await asyncio.sleep(1)
    event.set()


@pytest.mark.looptime
async def test_probe_recheck_is_capped_at_reset_timeout() -> None:
    h = Harness(api=ab.Breaker(fail_max=1, reset_timeout=0.05))
    await h.fail()
    await asyncio.sleep(0.05)
    busy = asyncio.create_task(h.call(delay=1))
    await asyncio.sleep(0)
    with pytest.raises(ab.CircuitOpen) as info:
        await h.call()
    assert info.value.retry_in == pytest.approx(0.05)
    await busy


@pytest.mark.looptime
async def test_successful_probe_closes_and_failing_probe_reopens() -> None:
    loop = asyncio.get_running_loop()
    h = Harness(api=ab.Breaker(fail_max=2, reset_timeout=5))
    await h.fail(times=2)
    opened = loop.time()

    await asyncio.sleep(4.9)
    with pytest.raises(ab.CircuitOpen) as early:
        await h.call()
    assert early.value.retry_in == pytest.approx(0.1)

    await asyncio.sleep(0.1)
    await h.fail()  # the probe fails: open again, for a whole reset_timeout
    assert h.state() == "open"
    with pytest.raises(ab.CircuitOpen) as again:
        await h.call()
    assert again.value.retry_in == pytest.approx(5)

    await asyncio.sleep(5)
    assert await h.call() == "ok"
    assert h.state() == "closed"
    assert await h.call() == "ok"  # closed: calls flow, no probe limit
    stats = h.deps.stats()["api"]
    assert stats.trips == 2
    assert stats.time_open == pytest.approx(loop.time() - opened)


@pytest.mark.looptime
async def test_permanent_probe_leaves_the_circuit_half_open() -> None:
    h = Harness(api=ab.Breaker(fail_max=1, reset_timeout=1))
    await h.fail()
    await asyncio.sleep(1)
    with pytest.raises(KeyError):
        await h.call(error=KeyError("no such item"))
    assert h.state() == "half_open"
    assert await h.call() == "ok"  # the next call probes
    assert h.state() == "closed"


@pytest.mark.looptime
async def test_cancelled_probe_frees_its_slot() -> None:
    h = Harness(api=ab.Breaker(fail_max=1, reset_timeout=1))
    await h.fail()
    await asyncio.sleep(1)
    probe = asyncio.create_task(h.call(delay=60))
    await asyncio.sleep(0)
    with pytest.raises(ab.CircuitOpen):
        await h.call()
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert await h.call() == "ok"
    assert h.state() == "closed"


@pytest.mark.looptime
async def test_stragglers_admitted_before_opening_do_not_move_the_circuit() -> None:
    h = Harness(api=ab.Breaker(fail_max=2, reset_timeout=10))
    slow_fail = asyncio.create_task(h.call(error=Down("late"), delay=12))
    slow_ok = asyncio.create_task(h.call(delay=11))
    await asyncio.sleep(0)
    await h.fail(times=2)  # open at t=0
    await asyncio.sleep(10)
    probe = asyncio.create_task(h.call(delay=5))  # half-open at t=10, probe until t=15
    await asyncio.sleep(1.5)
    assert slow_ok.done()  # t=11: a stale success does not close
    assert await slow_ok == "ok"
    assert h.state() == "half_open"
    with pytest.raises(Down):
        await slow_fail  # t=12: a stale failure does not re-open
    assert h.state() == "half_open"
    assert await probe == "ok"
    assert h.state() == "closed"
    assert h.names() == ["BreakerOpened", "BreakerHalfOpen", "BreakerClosed"]
    stats = h.deps.stats()["api"]
    assert (stats.calls, stats.successes, stats.failures, stats.trips) == (5, 2, 3, 1)


# ---------------------------------------------------------------- events


@pytest.mark.looptime
async def test_state_changes_become_events_in_order() -> None:
    h = Harness(api=ab.Breaker(fail_max=3, reset_timeout=2))
    await h.fail(times=3)
    await asyncio.sleep(2)
    await h.fail()
    await asyncio.sleep(2)
    await h.call()

    assert h.names() == [
        "BreakerOpened",
        "BreakerHalfOpen",
        "BreakerOpened",
        "BreakerHalfOpen",
        "BreakerClosed",
    ]
    first = h.events[0]
    assert isinstance(first, ab.BreakerOpened)
    assert (first.run_id, first.dependency, first.failures) == ("run-1", "api", 3)
    assert first.error_type.endswith("test_breaker.Down")
    assert all(getattr(e, "dependency", None) == "api" for e in h.events)


async def test_no_events_while_the_circuit_stays_closed() -> None:
    h = Harness(api=ab.Breaker(fail_max=5))
    await h.fail(times=4)
    await h.call()
    assert h.events == []


# ---------------------------------------------------------------- timing


@pytest.fixture
def tokyo() -> Iterator[None]:
    """TZ=Asia/Tokyo (UTC+9) for one test; restored afterwards."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.mark.looptime
@pytest.mark.usefixtures("tokyo")
async def test_non_utc_timezone_does_not_break_timing() -> None:
    assert time.localtime().tm_gmtoff == 9 * 3600  # the fixture took effect
    h = Harness(api=ab.Breaker(fail_max=1, reset_timeout=30))
    await h.fail()
    with pytest.raises(ab.CircuitOpen) as info:
        await h.call()
    assert info.value.retry_in == pytest.approx(30)  # not 30 s +/- 9 h, no TypeError
    await asyncio.sleep(29.9)
    with pytest.raises(ab.CircuitOpen):
        await h.call()
    await asyncio.sleep(0.1)
    assert await h.call() == "ok"  # 30 virtual seconds: aiobreaker's wall clock saw ~none
    assert h.names() == ["BreakerOpened", "BreakerHalfOpen", "BreakerClosed"]


@pytest.mark.looptime
async def test_open_period_runs_on_the_loop_clock_not_the_wall_clock() -> None:
    h = Harness(api=ab.Breaker(fail_max=1, reset_timeout=3600))
    started = time.monotonic()
    await h.fail()
    await asyncio.sleep(3600)
    assert await h.call() == "ok"
    assert time.monotonic() - started < 5


async def test_utcnow_deprecation_from_aiobreaker_is_filtered_narrowly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On Python 3.12+ aiobreaker's datetime.utcnow() warns; simulate that on any version."""
    real = aiobreaker.circuitbreaker.datetime

    class WarningDatetime(real):  # type: ignore[misc, valid-type]
        @classmethod
        def utcnow(cls) -> Any:
            warnings.warn(
                "datetime.datetime.utcnow() is deprecated and scheduled for removal",
                DeprecationWarning,
                stacklevel=2,  # attributed to aiobreaker, like the real one
            )
            # Not real.utcnow(): on 3.12+ that warns too, from this test's frame.
            return real.now(UTC).replace(tzinfo=None)

    monkeypatch.setattr(aiobreaker.circuitbreaker, "datetime", WarningDatetime)
    h = Harness(api=ab.Breaker(fail_max=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # override pyproject's test-only ignore
        await h.fail()  # opening calls utcnow(): must not warn
        assert h.state() == "open"
        with pytest.raises(DeprecationWarning):
            aiobreaker.circuitbreaker.CircuitBreaker().open()  # outside asyncbatch: not hidden


# ----------------------------------------------------- several dependencies


async def test_two_dependencies_have_independent_circuits() -> None:
    shared = ab.Breaker(fail_max=1)
    h = Harness(api=shared, db=shared)
    await h.fail("api")
    assert h.state("api") == "open"
    assert h.state("db") == "closed"
    assert await h.call("db") == "ok"
    with pytest.raises(ab.CircuitOpen) as info:
        await h.call("api")
    assert info.value.dependency == "api"
    assert [getattr(e, "dependency", None) for e in h.events] == ["api"]


async def test_executor_can_find_the_policy_of_a_rejecting_dependency() -> None:
    async def cached(item: Any, error: ab.CircuitOpen) -> str:
        return "cached"

    h = Harness(api=ab.Breaker(fail_max=1, on_open="fallback", fallback=cached))
    await h.fail()
    with pytest.raises(ab.CircuitOpen) as info:
        await h.call()
    policy = h.deps.breaker(info.value.dependency)
    assert policy is not None
    assert policy.on_open == "fallback"
    assert policy.fallback is not None
    assert await policy.fallback(1, info.value) == "cached"
    assert h.deps.breaker("unknown") is None


# ------------------------------------------------- jobs parked on the circuit


def _waiters(h: Harness, n: int, woken: list[int]) -> list[Any]:
    circuit = h.deps.circuit("api")
    assert circuit is not None
    return [circuit.wait(lambda i=i: woken.append(i)) for i in range(n)]  # type: ignore[misc]


@pytest.mark.looptime
async def test_end_of_open_period_wakes_as_many_waiters_as_probe_slots_oldest_first() -> None:
    h = Harness(api=ab.Breaker(fail_max=1, reset_timeout=10, half_open_probes=2))
    await h.fail()
    woken: list[int] = []
    _waiters(h, 5, woken)
    await asyncio.sleep(9.9)
    assert woken == []  # nobody polls, nobody is woken while it is open
    await asyncio.sleep(0.2)
    assert woken == [0, 1]


@pytest.mark.looptime
async def test_closing_the_circuit_wakes_every_waiter_once() -> None:
    h = Harness(api=ab.Breaker(fail_max=1, reset_timeout=10))
    await h.fail()
    woken: list[int] = []
    _waiters(h, 100, woken)
    await asyncio.sleep(10)
    assert woken == [0]  # one probe slot
    assert await h.call() == "ok"  # the probe succeeds: closed
    assert sorted(woken) == list(range(100))
    await asyncio.sleep(100)
    assert len(woken) == 100  # and never again


@pytest.mark.looptime
async def test_a_failed_probe_keeps_waiters_parked_for_the_new_open_period() -> None:
    h = Harness(api=ab.Breaker(fail_max=1, reset_timeout=10))
    await h.fail()
    woken: list[int] = []
    _waiters(h, 3, woken)
    await asyncio.sleep(10)
    assert woken == [0]
    await h.fail()  # the probe fails: open again for 10 s
    await asyncio.sleep(9.9)
    assert woken == [0]
    await asyncio.sleep(0.2)
    assert woken == [0, 1]


@pytest.mark.looptime
async def test_a_hung_probe_wakes_nobody_and_a_cancelled_waiter_is_never_woken() -> None:
    h = Harness(api=ab.Breaker(fail_max=1, reset_timeout=1))
    await h.fail()
    woken: list[int] = []
    waiters = _waiters(h, 3, woken)
    waiters[1].cancel()
    release = asyncio.Event()

    async def hung_probe() -> None:
        async with h.deps.guard("api"):
            await release.wait()

    await asyncio.sleep(1)
    assert woken == [0]
    probe = asyncio.create_task(hung_probe())
    await asyncio.sleep(60)  # the probe hangs: the backstop check finds no free slot
    assert woken == [0]
    release.set()
    await probe
    assert woken == [0, 2]  # closed: the rest, but not the one that gave up
    waiting = [e for e in h.events if isinstance(e, ab.JobsWaiting)]
    assert waiting[0].waiting == 2
    assert waiting[-1].waiting == 0
