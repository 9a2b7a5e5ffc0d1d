"""Hedged attempts: a second call for a slow attempt, first success wins (virtual time)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import asyncbatch as ab


class HeavyTail:
    """Calls take ``fast`` seconds, except a ``share`` of them that take ``slow`` (seeded)."""

    def __init__(self, *, fast: float = 0.05, slow: float = 1.0, share: float = 0.04) -> None:
        self.rng = random.Random(7)
        self.fast, self.slow, self.share = fast, slow, share
        self.calls = 0
        self.cancelled = 0
        self.started: dict[int, float] = {}
        self.ended: dict[int, float] = {}

    async def job(self, item: int) -> int:
        loop = asyncio.get_running_loop()
        self.calls += 1
        self.started.setdefault(item, loop.time())
        latency = self.slow if self.rng.random() < self.share else self.fast
        try:
            await asyncio.sleep(latency)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.ended.setdefault(item, loop.time())
        return item

    def p99(self) -> float:
        """The 99th percentile of job latency (first call's start to the first result)."""
        durations = sorted(self.ended[i] - self.started[i] for i in self.started)
        return durations[int(0.99 * len(durations))]


@pytest.mark.looptime
async def test_hedging_after_p95_cuts_p99_at_most_ten_percent_more_calls() -> None:
    plain = HeavyTail()
    await ab.run_batch(plain.job, range(2000), concurrency=50)
    hedged_service = HeavyTail()
    hedged = await ab.run_batch(
        hedged_service.job, range(2000), concurrency=50, hedge=ab.Hedge(after="p95")
    )
    assert hedged.ok
    assert [o.result for o in hedged.outcomes] == list(range(2000))
    assert plain.p99() == pytest.approx(1.0)  # the tail: p99 = 20x p50
    assert plain.p99() / hedged_service.p99() >= 3
    extra = hedged_service.calls - 2000
    assert 0 < extra <= 0.10 * 2000
    assert hedged_service.cancelled >= 1  # the losers were cancelled
    traffic = hedged.report.traffic
    assert traffic is not None
    state = traffic["hedge"]
    assert state["extra_calls"] == extra
    assert state["won"] >= 1
    assert state["attempts"] == 2000
    assert state["threshold"] == pytest.approx(0.05, abs=0.01)


@pytest.mark.looptime
async def test_the_budget_caps_extra_calls() -> None:
    service = HeavyTail(share=0.5)  # half the calls are slow: p50 hedging would double them
    result = await ab.run_batch(
        service.job,
        range(1000),
        concurrency=20,
        hedge=ab.Hedge(after="p50", budget=0.02),
    )
    assert result.ok
    assert service.calls - 1000 <= 0.02 * 1000


@pytest.mark.looptime
async def test_a_fixed_threshold_hedges_from_the_start_and_the_first_success_wins() -> None:
    starts: list[float] = []
    loop = asyncio.get_running_loop()

    async def job(item: int) -> str:
        starts.append(loop.time())
        if len(starts) == 1:
            await asyncio.sleep(10)  # the first call hangs
            return "slow"
        await asyncio.sleep(0.1)
        return "fast"

    t0 = loop.time()
    result = await ab.run_batch(
        job, [1], concurrency=1, hedge=ab.Hedge(after=0.5, budget=1.0, max_extra=2)
    )
    assert [o.result for o in result.outcomes] == ["fast"]
    assert [round(s - t0, 3) for s in starts] == [0.0, 0.5]
    assert result.duration == pytest.approx(0.6)


@pytest.mark.looptime
async def test_a_failing_call_does_not_win_and_all_failing_fail_the_attempt() -> None:
    calls = 0

    async def job(item: int) -> str:
        nonlocal calls
        calls += 1
        n = calls
        await asyncio.sleep(1.0 if n == 1 else 0.1)
        if n <= 2:
            raise ConnectionError(f"call {n} failed")
        return "ok"

    hedge = ab.Hedge(after=0.5, budget=1.0)
    # Attempt 1: call 1 (slow) and its hedge, call 2, both fail; the first error is call 2's.
    # Attempt 2 (the retry): call 3 succeeds.
    events: list[ab.Event] = []
    result = await ab.run_batch(
        job,
        [1],
        concurrency=1,
        hedge=hedge,
        retry=ab.Retry(attempts=2, backoff=ab.Backoff.constant(0.01)),
        on_event=events.append,
    )
    assert [o.result for o in result.outcomes] == ["ok"]
    [retry] = [e for e in events if isinstance(e, ab.RetryScheduled)]
    assert retry.message == "call 2 failed"


@pytest.mark.looptime
async def test_hedged_attempts_are_marked_on_their_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    calls = 0

    async def job(item: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(5 if calls == 1 else 0.1)
        return item

    await ab.run_batch(
        job, [1, 2], concurrency=1, hedge=ab.Hedge(after=1, budget=1.0), tracer_provider=provider
    )
    attempts = [s for s in exporter.get_finished_spans() if s.name == "asyncbatch.attempt"]
    marked = [dict(s.attributes or {}) for s in attempts if s.attributes]
    hedged = [a for a in marked if "asyncbatch.hedge.extra" in a]
    assert len(hedged) == 1
    assert hedged[0]["asyncbatch.hedge.extra"] == 1
    assert hedged[0]["asyncbatch.hedge.won"] is True
    provider.shutdown()


def test_hedge_repr_and_defaults() -> None:
    assert repr(ab.Hedge()) == "Hedge(after='p95', max_extra=1, budget=0.1)"
    assert repr(ab.Hedge(after=0.5)) == "Hedge(after=0.5, max_extra=1, budget=0.1)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"after": "p100"}, "percentile"),
        ({"after": "fast"}, "percentile"),
        ({"after": 0}, "must be > 0 seconds"),
        ({"max_extra": 0}, "max_extra must be an int >= 1"),
        ({"budget": 0}, r"budget must be in \(0, 1\]"),
        ({"budget": 2}, r"budget must be in \(0, 1\]"),
    ],
)
def test_hedge_rejects_bad_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ab.ConfigError, match=message):
        ab.Hedge(**kwargs)


def test_hedge_option_must_be_a_hedge() -> None:
    with pytest.raises(ab.ConfigError, match=r"hedge must be an ab\.Hedge"):
        ab.Batch(lambda x: x, hedge=0.5)  # type: ignore[arg-type]
