"""Failure-rate breakers: sliding windows (count and time), slow calls, half-open judged on rates.

Timing runs on looptime's virtual clock: ``asyncio.sleep(30)`` takes no real time.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

import asyncbatch as ab
from asyncbatch._deps import Dependencies


class Down(ConnectionError):
    """The dependency is down (classified TRANSIENT by the built-in rules)."""


class Harness:
    """A run's `Dependencies` with recorded events."""

    def __init__(self, **breakers: ab.Breaker) -> None:
        self.events: list[ab.Event] = []
        self.deps = Dependencies(
            run_id="run-1",
            limits=None,
            rates=None,
            breakers=breakers,
            classify=ab.Classifier(),
            emit=self.events.append,
        )

    async def call(self, name: str = "api", *, fail: bool = False, delay: float = 0) -> str:
        async with self.deps.guard(name):
            if delay:
                await asyncio.sleep(delay)
            if fail:
                raise Down("refused")
            return "ok"

    async def outcome(self, name: str = "api", *, fail: bool, delay: float = 0) -> str:
        """One call; "ok", "failed" or "rejected"."""
        try:
            return await self.call(name, fail=fail, delay=delay)
        except Down:
            return "failed"
        except ab.CircuitOpen:
            return "rejected"

    def opened(self, name: str = "api") -> list[ab.BreakerOpened]:
        return [e for e in self.events if isinstance(e, ab.BreakerOpened) and e.dependency == name]

    def state(self, name: str = "api") -> str:
        return self.deps.stats()[name].state


def interleaved(n: int) -> list[bool]:
    """60% failures, never more than two in a row: F F S F S, repeated."""
    return [(True, True, False, True, False)[i % 5] for i in range(n)]


# ------------------------------------------------------------ the headline


async def test_sixty_percent_interleaved_failures_open_the_rate_breaker_not_fail_max() -> None:
    h = Harness(
        rate=ab.Breaker(failure_rate=0.5, window=50, min_calls=20),
        consecutive=ab.Breaker(fail_max=5),
    )
    pattern = interleaved(300)
    assert max(len(run) for run in "".join("F" if f else "S" for f in pattern).split("S")) == 2

    rate = [await h.outcome("rate", fail=f) for f in pattern]
    consecutive = [await h.outcome("consecutive", fail=f) for f in pattern]

    # The rate breaker opens as soon as its window holds min_calls calls: 12 of 20 failed.
    assert rate[:20].count("failed") == 12
    assert rate[20:] == ["rejected"] * 280
    [event] = h.opened("rate")
    assert (event.reason, event.failure_rate) == ("failure_rate", pytest.approx(0.6))
    # The consecutive-failure breaker sees the same 60% and never trips.
    assert "rejected" not in consecutive
    assert consecutive.count("failed") == 180
    assert h.opened("consecutive") == []
    assert h.deps.stats()["consecutive"].trips == 0


async def test_a_window_opens_at_min_calls_and_not_before() -> None:
    h = Harness(api=ab.Breaker(failure_rate=0.5, window=100, min_calls=10))
    for _ in range(9):
        assert await h.outcome(fail=True) == "failed"
    assert h.state() == "closed"  # 100% failures, but only 9 calls
    assert await h.outcome(fail=True) == "failed"  # the call that opens it raises its own error
    assert h.state() == "open"


async def test_a_failure_share_below_the_rate_never_opens() -> None:
    h = Harness(api=ab.Breaker(failure_rate=0.5, window=20, min_calls=20))
    outcomes = [await h.outcome(fail=i % 5 < 2) for i in range(500)]  # 40%
    assert "rejected" not in outcomes
    assert h.opened() == []


async def test_a_count_window_forgets_calls_older_than_its_size() -> None:
    h = Harness(api=ab.Breaker(failure_rate=0.5, window=10, min_calls=10))
    for _ in range(10):
        await h.outcome(fail=False)
    for i in range(4):
        await h.outcome(fail=True)
        assert h.state() == "closed", i  # 4 of the last 10 failed: 40%
    await h.outcome(fail=True)  # 5 of the last 10 (5 of 15 overall): opens
    assert h.state() == "open"
    assert h.opened()[0].failure_rate == pytest.approx(0.5)


@pytest.mark.looptime
async def test_a_time_window_forgets_calls_older_than_its_span() -> None:
    h = Harness(api=ab.Breaker(failure_rate=0.5, window=timedelta(seconds=10), min_calls=4))
    for _ in range(3):
        await h.outcome(fail=True)
    await asyncio.sleep(11)  # those three left the window
    for _ in range(3):
        await h.outcome(fail=False)
    await h.outcome(fail=True)
    assert h.state() == "closed"  # 1 of 4 in the window (4 of 7 ever)
    await h.outcome(fail=True)
    await h.outcome(fail=True)
    assert h.state() == "open"  # 3 of 6


async def test_permanent_errors_are_not_calls_of_the_window() -> None:
    h = Harness(api=ab.Breaker(failure_rate=0.5, window=10, min_calls=4))
    for _ in range(20):
        with pytest.raises(ValueError, match="bad item"):
            async with h.deps.guard("api"):
                raise ValueError("bad item")
    assert h.state() == "closed"
    for _ in range(3):
        await h.outcome(fail=True)
    assert h.state() == "closed"  # 3 counted calls < min_calls
    await h.outcome(fail=False)
    assert h.state() == "open"  # 3 of 4


# ------------------------------------------------------------- slow calls


@pytest.mark.looptime
async def test_slow_successes_open_a_slow_rate_breaker() -> None:
    h = Harness(api=ab.Breaker(slow_call=1.0, slow_rate=0.8, window=10, min_calls=5))
    outcomes = await asyncio.gather(*(h.outcome(fail=False, delay=2) for _ in range(5)))
    assert outcomes == ["ok"] * 5  # every call succeeded, slowly
    assert h.state() == "open"
    [event] = h.opened()
    assert (event.reason, event.slow_rate, event.failure_rate) == ("slow_rate", 1.0, 0.0)


@pytest.mark.looptime
async def test_fast_calls_keep_a_slow_rate_breaker_closed() -> None:
    h = Harness(api=ab.Breaker(slow_call=1.0, slow_rate=0.8, window=10, min_calls=5))
    await asyncio.gather(*(h.outcome(fail=False, delay=0.5) for _ in range(20)))
    assert h.state() == "closed"


@pytest.mark.looptime
async def test_without_slow_rate_a_slow_call_counts_as_a_failure() -> None:
    h = Harness(api=ab.Breaker(failure_rate=0.5, slow_call=1.0, window=10, min_calls=4))
    await asyncio.gather(*(h.outcome(fail=False, delay=0.1) for _ in range(2)))
    await asyncio.gather(*(h.outcome(fail=False, delay=1.5) for _ in range(2)))
    assert h.state() == "open"  # 2 slow of 4 = 50% "failed", though all returned
    assert h.opened()[0].reason == "failure_rate"


# -------------------------------------------------------------- half-open


async def _open(h: Harness) -> None:
    while h.state() == "closed":
        await h.outcome(fail=True)


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("probe_failures", "state"), [(1, "closed"), (2, "open"), (3, "open"), (0, "closed")]
)
async def test_half_open_judges_all_its_probes_by_the_failure_rate(
    probe_failures: int, state: str
) -> None:
    h = Harness(
        api=ab.Breaker(
            failure_rate=0.5, window=10, min_calls=4, half_open_probes=4, reset_timeout=5
        )
    )
    await _open(h)
    await asyncio.sleep(5)
    fails = [i < probe_failures for i in range(4)]
    # Five calls at once: four probes go, the fifth is rejected; probes end one by one.
    results = await asyncio.gather(
        *(h.outcome(fail=f, delay=1 + i) for i, f in enumerate(fails)),
        h.outcome(fail=False),
    )
    assert results[4] == "rejected"
    assert results[:4] == ["failed" if f else "ok" for f in fails]
    assert h.state() == state
    names = [e.name for e in h.events]
    assert names[-2:] == [
        "BreakerHalfOpen",
        "BreakerClosed" if state == "closed" else "BreakerOpened",
    ]
    if state == "open":
        assert h.opened()[-1].reason == "probes failure_rate"


@pytest.mark.looptime
async def test_half_open_does_not_decide_on_its_first_probe() -> None:
    h = Harness(
        api=ab.Breaker(
            failure_rate=0.5, window=10, min_calls=2, half_open_probes=3, reset_timeout=1
        )
    )
    await _open(h)
    await asyncio.sleep(1)
    assert await h.outcome(fail=False) == "ok"
    assert h.state() == "half_open"  # one probe of three: not judged yet
    assert await h.outcome(fail=True) == "failed"
    assert h.state() == "half_open"
    assert await h.outcome(fail=False) == "ok"
    assert h.state() == "closed"  # 1 of 3 failed < 50%
    # The new closed period starts from an empty window.
    assert await h.outcome(fail=True) == "failed"
    assert h.state() == "closed"


@pytest.mark.looptime
async def test_a_permanent_probe_frees_its_place_for_another() -> None:
    h = Harness(api=ab.Breaker(failure_rate=0.5, window=10, min_calls=2, reset_timeout=1))
    await _open(h)
    await asyncio.sleep(1)
    with pytest.raises(KeyError):
        async with h.deps.guard("api"):
            raise KeyError("no such item")
    assert h.state() == "half_open"
    assert await h.outcome(fail=False) == "ok"
    assert h.state() == "closed"


async def test_fail_max_and_failure_rate_together_either_opens() -> None:
    h = Harness(api=ab.Breaker(fail_max=3, failure_rate=0.9, window=100, min_calls=50))
    for _ in range(3):
        await h.outcome(fail=True)
    assert h.state() == "open"
    assert h.opened()[0].reason == "fail_max"


# ------------------------------------------------------------- in a batch


@pytest.mark.looptime
async def test_a_batch_against_a_sixty_percent_failing_api_trips_the_rate_breaker() -> None:
    calls = 0

    async def job(item: int) -> int:
        nonlocal calls
        calls += 1
        async with ab.guard("api"):
            await asyncio.sleep(0.01)
            if interleaved(calls)[-1]:
                raise Down("refused")
        return item

    result = await ab.run_batch(
        job,
        range(300),
        concurrency=1,
        breakers={"api": ab.Breaker(failure_rate=0.5, window=50, min_calls=20, reset_timeout=5)},
        retry=ab.Retry(attempts=2, backoff=ab.Backoff.constant(0.01)),
    )
    breaker = result.report.breakers["api"]
    assert breaker["trips"] >= 1
    assert breaker["rejections"] >= 1


# ----------------------------------------------------------------- policy


def test_rate_breaker_repr_and_defaults() -> None:
    b = ab.Breaker(failure_rate=0.5)
    assert (b.fail_max, b.window, b.min_calls, b.slow_call, b.slow_rate) == (
        None,
        100,
        20,
        None,
        None,
    )
    assert repr(b) == (
        "Breaker(failure_rate=0.5, window=100, min_calls=20, reset_timeout=30, "
        "half_open_probes=1, on_open='park')"
    )
    t = ab.Breaker(failure_rate=0.5, window=timedelta(seconds=30), slow_call=2, slow_rate=0.8)
    assert t.window == 30.0
    assert "window=30s" in repr(t)
    assert "slow_call=2" in repr(t)
    assert "slow_rate=0.8" in repr(t)
    assert ab.Breaker().fail_max == 5
    assert ab.Breaker(failure_rate=0.5, window=10).min_calls == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_rate": 0}, "failure_rate must be a share"),
        ({"failure_rate": 1.5}, "failure_rate must be a share"),
        ({"failure_rate": True}, "failure_rate must be a share"),
        ({"slow_rate": 0.5}, "slow_rate= needs slow_call="),
        ({"window": 10}, "window= is only used with failure_rate="),
        ({"min_calls": 5}, "min_calls= is only used"),
        ({"slow_call": 1.0}, "slow_call= is only used"),
        ({"failure_rate": 0.5, "window": 2.5}, "number of calls"),
        ({"failure_rate": 0.5, "window": 0}, "number of calls"),
        ({"failure_rate": 0.5, "window": timedelta(0)}, "positive duration"),
        ({"failure_rate": 0.5, "window": 10, "min_calls": 11}, "cannot exceed"),
        ({"failure_rate": 0.5, "min_calls": 0}, "min_calls must be a positive int"),
        ({"failure_rate": 0.5, "slow_call": 0}, "slow_call must be > 0"),
        ({"fail_max": None}, "needs a rule that opens it"),
    ],
)
def test_rate_breaker_rejects_bad_options_with_one_line(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ab.ConfigError, match=message) as info:
        ab.Breaker(**kwargs)
    assert "\n" not in str(info.value)
