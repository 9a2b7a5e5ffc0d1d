"""Adaptive concurrency: AIMD with a latency check finds a hidden capacity (virtual time)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import asyncbatch as ab
from asyncbatch._deps import AdaptiveLimit, overloaded


class Overloaded(Exception):
    """The server said 429 Too Many Requests."""

    status = 429


class Server:
    """Hidden capacity ``k``: beyond it, 429 at once; below it, slower as load grows."""

    def __init__(self, k: int, base: float = 0.02) -> None:
        self.k = k
        self.base = base
        self.in_flight = 0
        self.calls = 0
        self.rejected = 0

    async def call(self, item: int) -> int:
        self.calls += 1
        if self.in_flight >= self.k:
            self.rejected += 1
            await asyncio.sleep(self.base / 10)
            raise Overloaded("429")
        self.in_flight += 1
        try:
            await asyncio.sleep(self.base * (1 + 0.5 * self.in_flight / self.k))
        finally:
            self.in_flight -= 1
        return item


RETRY = ab.Retry(attempts=100, backoff=ab.Backoff.constant(0.005))


async def timed(server: Server, concurrency: int | ab.Adaptive, n: int, **kw: Any) -> float:
    """Seconds (virtual) to run ``n`` calls; every call must end succeeded."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await ab.run_batch(server.call, range(n), concurrency=concurrency, retry=RETRY, **kw)
    assert result.ok
    return loop.time() - t0


async def flood(server: Server, concurrency: int, n: int) -> None:
    """Run ``n`` calls that may give up after their attempts (a flooded server)."""
    retry = ab.Retry(attempts=5, backoff=ab.Backoff.constant(0.005))
    await ab.run_batch(server.call, range(n), concurrency=concurrency, retry=retry)


@pytest.mark.looptime
async def test_adaptive_finds_the_hidden_capacity() -> None:
    k, n = 40, 3000
    best = await timed(Server(k), k, n)  # the best fixed concurrency is the capacity itself
    flooded = Server(k)
    await flood(flooded, 4 * k, n)
    adaptive = Server(k)
    events: list[ab.Event] = []
    took = await timed(adaptive, ab.Adaptive(min=1, max=1000, initial=5), n, on_event=events.append)
    assert best / took >= 0.9  # >= 90% of the best fixed concurrency's throughput
    assert adaptive.rejected / adaptive.calls <= 0.05
    assert flooded.rejected / flooded.calls >= 0.3  # a fixed 4K floods it
    changes = [e for e in events if isinstance(e, ab.ConcurrencyChanged)]
    assert any(e.reason == "overload" for e in changes)
    assert all(e.dependency == "" for e in changes)
    assert 0.5 * k <= changes[-1].limit <= 1.5 * k


@pytest.mark.looptime
async def test_report_and_progress_show_the_current_limit() -> None:
    server = Server(20)
    batch = ab.Batch(server.call, concurrency=ab.Adaptive(min=2, max=200, initial=2), retry=RETRY)
    seen: list[ab.Progress] = []

    async def watch() -> None:
        await asyncio.sleep(2)
        seen.append(batch.progress())

    async with asyncio.TaskGroup() as tg:
        tg.create_task(watch())
        result = await batch.run(range(3000))
    assert 10 <= seen[0].concurrency <= 30
    traffic = result.report.traffic
    assert traffic is not None
    state = traffic["concurrency"]
    assert (state["min"], state["max"], state["lowest"]) == (2, 200, 2)
    assert state["decreases"] >= 1
    assert 10 <= state["limit"] <= 30
    assert "Adaptive concurrency:" in str(result.report)


@pytest.mark.looptime
async def test_resize_moves_an_adaptive_limit_within_its_bounds() -> None:
    server = Server(1000, base=1.0)  # never overloaded
    batch = ab.Batch(server.call, concurrency=ab.Adaptive(min=2, max=8, initial=4), retry=RETRY)
    seen: list[tuple[int, int]] = []

    async def steer() -> None:
        await asyncio.sleep(0.5)
        batch.resize(100)  # clamped to max
        await asyncio.sleep(0.1)
        seen.append((batch.progress().concurrency, server.in_flight))
        batch.resize(1)  # clamped to min; attempts in flight are not cut
        seen.append((batch.progress().concurrency, server.in_flight))

    async with asyncio.TaskGroup() as tg:
        tg.create_task(steer())
        await batch.run(range(60))
    assert seen == [(8, 8), (2, 8)]


@pytest.mark.looptime
async def test_an_adaptive_bulkhead_per_dependency() -> None:
    server = Server(30)
    events: list[ab.Event] = []

    async def job(item: int) -> int:
        async with ab.guard("api"):
            return await server.call(item)

    result = await ab.run_batch(
        job,
        range(4000),
        concurrency=200,
        limits={"api": ab.Adaptive(min=1, max=500, initial=4)},
        retry=RETRY,
        on_event=events.append,
    )
    assert result.ok
    assert server.rejected / server.calls <= 0.05
    stats = result.report.breakers["api"]
    assert 15 <= stats["limit"] <= 45
    traffic = result.report.traffic
    assert traffic is not None
    assert traffic["limits"]["api"]["decreases"] >= 1
    changes = [e for e in events if isinstance(e, ab.ConcurrencyChanged)]
    assert changes
    assert {e.dependency for e in changes} == {"api"}


# --------------------------------------------------------------- the algorithm


def test_slow_start_doubles_per_round_trip_then_backs_off_once_per_rtt() -> None:
    limit = AdaptiveLimit(ab.Adaptive(min=1, max=100, initial=4, backoff=0.5))
    now = 0.0
    for _ in range(4):  # one round trip at full use: +1 per sample
        limit.sample(0.1, overload=False, in_flight=4, now=now)
    assert limit.current == 8
    now = 1.0
    assert limit.sample(0.1, overload=True, in_flight=8, now=now) == (4, "overload")
    # More rejections within the same round trip are the same signal.
    assert limit.sample(0.1, overload=True, in_flight=8, now=now + 0.05) is None
    assert limit.current == 4
    assert not limit.slow_start
    # Congestion avoidance: +1 per round trip (limit samples).
    for _ in range(4):
        limit.sample(0.1, overload=False, in_flight=4, now=now + 1)
    assert limit.current == 4 or limit.current == 5
    assert limit.limit == pytest.approx(4 + 1 / 4 + 1 / 4.25 + 1 / 4.485 + 1 / 4.708, rel=0.01)


def test_an_unused_limit_does_not_grow() -> None:
    limit = AdaptiveLimit(ab.Adaptive(min=1, max=100, initial=10))
    for _ in range(100):
        limit.sample(0.1, overload=False, in_flight=3, now=0.0)
    assert limit.current == 10


def test_smoothed_latency_over_tolerance_is_an_overload_signal() -> None:
    limit = AdaptiveLimit(ab.Adaptive(min=1, max=1000, initial=10, tolerance=2.0))
    limit.sample(0.1, overload=False, in_flight=10, now=0.0)
    # One slow call (a heavy tail, a pause) is no signal: it grows on.
    assert limit.sample(1.0, overload=False, in_flight=10, now=1.0) == (12, "grow")
    # Latency that stays high drags the average over 2x the no-load latency.
    changes = [limit.sample(0.3, overload=False, in_flight=10, now=2.0 + i) for i in range(5)]
    assert "latency" in {c[1] for c in changes if c is not None}
    untolerant = AdaptiveLimit(ab.Adaptive(min=1, max=100, initial=10, tolerance=None))
    untolerant.sample(0.1, overload=False, in_flight=10, now=0.0)
    assert untolerant.sample(5.0, overload=False, in_flight=10, now=1.0) == (12, "grow")


def test_bounds_hold() -> None:
    limit = AdaptiveLimit(ab.Adaptive(min=3, max=5, initial=4))
    for i in range(50):
        limit.sample(0.1, overload=False, in_flight=5, now=float(i))
    assert limit.current == 5
    for i in range(50):
        limit.sample(0.1, overload=True, in_flight=5, now=100.0 + i)
    assert limit.current == 3


class _Status(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class _RetryAfter(Exception):
    retry_after = 2.0


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_Status(429), True),
        (_Status(503), True),
        (_Status(500), False),
        (_RetryAfter(), True),
        (TimeoutError(), True),
        (ab.DeadlineExceeded("k", 1.0), True),
        (ValueError("bad item"), False),
        (ab.CircuitOpen("api", 1.0), False),
    ],
)
def test_what_counts_as_overload(exc: BaseException, expected: bool) -> None:
    assert overloaded(exc) is expected


def test_adaptive_repr_and_defaults() -> None:
    a = ab.Adaptive()
    assert (a.min, a.max, a.initial) == (1, 1000, 10)
    assert repr(a) == "Adaptive(min=1, max=1000, initial=10, backoff=0.9, tolerance=2.0)"
    assert ab.Adaptive(min=20, max=50).initial == 20
    assert ab.Adaptive(max=4).initial == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min": 0}, "min must be an int >= 1"),
        ({"max": 1.5}, "max must be an int >= 1"),
        ({"min": 5, "max": 4}, r"max \(4\) must be >= min \(5\)"),
        ({"min": 2, "max": 4, "initial": 5}, "initial must be an int within"),
        ({"backoff": 1.0}, r"backoff must be in \(0, 1\)"),
        ({"tolerance": 1.0}, "tolerance must be a number > 1"),
    ],
)
def test_adaptive_rejects_bad_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ab.ConfigError, match=message):
        ab.Adaptive(**kwargs)


def test_a_bad_limit_names_adaptive_in_its_hint() -> None:
    from asyncbatch._deps import Dependencies

    with pytest.raises(ab.ConfigError, match=r"positive int or an ab\.Adaptive"):
        Dependencies(
            run_id="r",
            limits={"api": "many"},  # type: ignore[dict-item]
            rates=None,
            breakers=None,
            classify=ab.Classifier(),
            emit=lambda e: None,
        )


@pytest.mark.looptime
async def test_the_limit_is_a_metric() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    events: list[ab.Event] = []
    await ab.run_batch(
        Server(20).call,
        range(1000),
        concurrency=ab.Adaptive(min=1, max=100, initial=2),
        retry=RETRY,
        meter_provider=provider,
        on_event=events.append,
    )
    data = reader.get_metrics_data()
    assert data is not None
    points = [
        p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "asyncbatch.concurrency.limit"
        for p in m.data.data_points
    ]
    last = [e for e in events if isinstance(e, ab.ConcurrencyChanged)][-1]
    assert [(dict(p.attributes or {}), p.value) for p in points] == [
        ({"asyncbatch.dependency": ""}, last.limit)
    ]
    provider.shutdown()
