"""Retry budgets: retries capped at a share of recent calls, the rest held parked (no slot).

Timing runs on looptime's virtual clock.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

import asyncbatch as ab
from asyncbatch._policy._retry_budget import RetryAllowance


class Down(ConnectionError):
    """The service is down (TRANSIENT)."""


class Service:
    """A service that is down for the first ``outage`` seconds (loop clock), then fine."""

    def __init__(self, outage: float, latency: float = 0.05) -> None:
        self.outage = outage
        self.latency = latency
        self.first = 0
        self.retries = 0
        self.first_in_outage = 0
        self.retries_in_outage = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.t0 = asyncio.get_running_loop().time()

    async def job(self, item: int) -> int:
        loop = asyncio.get_running_loop()
        down = loop.time() - self.t0 < self.outage
        retry = ab.current_job().attempt > 1
        if retry:
            self.retries += 1
            self.retries_in_outage += down
        else:
            self.first += 1
            self.first_in_outage += down
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency)
        finally:
            self.in_flight -= 1
        if down:
            raise Down("503")
        return item


RETRY = ab.Retry(attempts=1000, backoff=ab.Backoff.constant(0.1))


@pytest.mark.looptime
async def test_a_twenty_percent_budget_keeps_retries_within_it_during_an_outage() -> None:
    outage = 30.0
    budget = ab.RetryBudget(ratio=0.2, min_per_second=5, window=10)
    service = Service(outage)
    result = await ab.run_batch(
        service.job, range(3000), concurrency=20, retry=RETRY, retry_budget=budget
    )
    assert result.ok
    # Measured over the outage: at most 20% of calls, plus the floor over its length
    # (min_per_second x (outage + one window)).
    allowed = 0.2 * service.first_in_outage + 5 * (outage + 10)
    assert service.retries_in_outage <= allowed
    traffic = result.report.traffic
    assert traffic is not None
    state = traffic["retry_budget"]
    assert state["calls"] == 3000
    assert state["retries"] == service.retries
    assert state["held"] > 0
    assert "Retry budget (20% + 5/s)" in str(result.report)
    assert ab.ErrorReport.from_dict(result.report.to_dict()).traffic == traffic

    # The same outage without a budget: retries outnumber calls many times over.
    unbudgeted = Service(outage)
    await ab.run_batch(unbudgeted.job, range(3000), concurrency=20, retry=RETRY)
    assert unbudgeted.retries_in_outage > 5 * unbudgeted.first_in_outage
    assert unbudgeted.retries_in_outage > 5 * service.retries_in_outage


@pytest.mark.looptime
async def test_held_retries_hold_no_slot() -> None:
    """Retries held by the budget leave every worker to the other jobs."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    finished: list[float] = []

    async def job(item: int) -> int:
        await asyncio.sleep(0.05)
        if item < 10:
            raise Down("503")  # ten jobs fail every attempt
        finished.append(loop.time() - t0)
        return item

    result = await ab.run_batch(
        job,
        range(400),
        concurrency=10,
        retry=ab.Retry(attempts=3, backoff=ab.Backoff.constant(0.01)),
        # About one retry per 10 s: the 20 retries wait minutes, held.
        retry_budget=ab.RetryBudget(ratio=0.001, min_per_second=0.1, window=10),
    )
    assert result.counts[ab.JobStatus.DEAD_LETTERED] == 10
    assert len(finished) == 390
    # 400 calls of 50 ms on 10 workers: 2 s, as if the held retries were not there.
    assert max(finished) <= 2.2
    assert result.duration > 60


@pytest.mark.looptime
async def test_a_held_retry_still_ends_at_its_deadline() -> None:
    async def job(item: int) -> int:
        await asyncio.sleep(0.01)
        raise Down("503")

    result = await ab.run_batch(
        job,
        range(50),
        concurrency=50,
        deadline=3.0,
        retry=RETRY,
        # One retry per 10 s window: nearly every retry is held until its deadline.
        retry_budget=ab.RetryBudget(ratio=0.001, min_per_second=0.01, window=10),
    )
    assert result.counts[ab.JobStatus.DEAD_LETTERED] == 50
    assert result.duration < 3.5
    assert all(isinstance(o.error, ab.DeadlineExceeded) for o in result.outcomes)


@pytest.mark.looptime
async def test_every_job_reaches_its_end_when_no_new_calls_come() -> None:
    """The floor keeps retries flowing after the last new job started."""
    attempts: dict[int, int] = {}

    async def job(item: int) -> int:
        attempts[item] = attempts.get(item, 0) + 1
        if attempts[item] < 4:
            raise Down("503")
        return item

    result = await ab.run_batch(
        job,
        range(20),
        concurrency=5,
        retry=RETRY,
        retry_budget=ab.RetryBudget(ratio=0.1, min_per_second=2, window=5),
    )
    assert result.ok
    assert sum(attempts.values()) == 80
    # 60 retries, 2 allowed (ratio) plus 10 per 5 s window: at least ~25 s.
    assert result.duration >= 20


def test_allowance_counts_over_a_sliding_window() -> None:
    a = RetryAllowance(ab.RetryBudget(ratio=0.5, min_per_second=0.1, window=10))
    # Floor: max(1, 0.1 x 10) = 1 retry per window with no calls.
    assert a.allows(0.0)
    a.spend(0.0)
    assert not a.allows(0.0)
    for _ in range(4):
        a.called(1.0)
    assert a.allows(1.0)  # 1 + 1 <= 0.5 x 4 + 1
    a.spend(1.0)
    a.spend(1.0)
    assert not a.allows(1.0)
    assert a.allows(11.6)  # everything of t <= 1.0 left the window
    assert a.state()["retry_ratio"] == pytest.approx(3 / 4)


def test_retry_budget_repr_and_timedelta() -> None:
    b = ab.RetryBudget(ratio=0.2, min_per_second=10, window=timedelta(seconds=30))
    assert repr(b) == "RetryBudget(ratio=0.2, min_per_second=10, window=30)"
    assert repr(ab.RetryBudget()) == "RetryBudget(ratio=0.2, min_per_second=10, window=10)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 0}, "ratio must be a number > 0"),
        ({"ratio": True}, "ratio must be a number > 0"),
        ({"min_per_second": -1}, "min_per_second must be a number > 0"),
        ({"ratio": float("inf")}, "ratio must be a number > 0"),
        ({"window": 0}, "window must be a positive duration"),
    ],
)
def test_retry_budget_rejects_bad_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ab.ConfigError, match=message):
        ab.RetryBudget(**kwargs)


def test_retry_budget_option_must_be_a_retry_budget() -> None:
    with pytest.raises(ab.ConfigError, match=r"retry_budget must be an ab\.RetryBudget"):
        ab.Batch(lambda x: x, retry_budget=0.2)  # type: ignore[arg-type]
