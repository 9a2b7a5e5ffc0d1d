"""Backoff schedules, jitter bounds, policies and on_error decisions."""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

import asyncbatch as ab

JITTERS = ["none", "full", "equal", "decorrelated"]


@given(
    jitter=st.sampled_from(JITTERS),
    initial=st.floats(0.0, 5.0),
    multiplier=st.floats(1.0, 10.0),
    cap=st.floats(5.0, 120.0),
    retry=st.integers(1, 10_000),
    previous=st.floats(0.0, 500.0),
    seed=st.integers(0, 2**32),
)
def test_exponential_backoff_never_exceeds_its_cap(
    jitter: str,
    initial: float,
    multiplier: float,
    cap: float,
    retry: int,
    previous: float,
    seed: int,
) -> None:
    backoff = ab.Backoff.exponential(initial, multiplier, max=cap, jitter=jitter)  # type: ignore[arg-type]
    delay = backoff.delay(retry, previous, random.Random(seed))
    assert 0.0 <= delay <= cap
    base = backoff.base(retry)
    if jitter == "none":
        assert delay == base
    elif jitter == "full":
        assert delay <= base
    elif jitter == "equal":
        assert base / 2 <= delay <= base
    else:
        assert delay >= min(initial, cap) or delay == cap


@given(retry=st.integers(1, 50), jitter=st.sampled_from(JITTERS))
def test_linear_and_constant_backoff_are_bounded(retry: int, jitter: str) -> None:
    rng = random.Random(1)
    linear = ab.Backoff.linear(0.5, 0.25, max=3.0, jitter=jitter)  # type: ignore[arg-type]
    assert 0 <= linear.delay(retry, 0.0, rng) <= 3.0
    assert linear.base(retry) == min(3.0, 0.5 + 0.25 * (retry - 1))
    assert ab.Backoff.constant(0.2).delay(retry, 0.0, rng) == 0.2


def test_exponential_base_grows_then_clamps_without_overflow() -> None:
    b = ab.Backoff.exponential(0.1, 2, max=30, jitter="none")
    assert [b.base(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.8]
    assert b.base(10_000) == 30


def test_durations_accept_timedelta() -> None:
    b = ab.Backoff.exponential(timedelta(milliseconds=100), max=timedelta(seconds=2))
    assert (b.initial, b.max) == (0.1, 2.0)


def test_seeded_policies_reproduce_their_delays() -> None:
    b = ab.Backoff.exponential(0.1, 2, max=30, jitter="full")
    p1, p2 = ab.RetryPolicy(seed=7).rng(), ab.RetryPolicy(seed=7).rng()
    assert [b.delay(n, 0, p1) for n in range(1, 8)] == [b.delay(n, 0, p2) for n in range(1, 8)]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ab.Retry(attempts=0), "attempts"),
        (lambda: ab.Backoff.exponential(jitter="sometimes"), "jitter"),  # type: ignore[arg-type]
        (lambda: ab.Backoff.exponential(5, max=1), "must not exceed max"),
        (lambda: ab.RetryPolicy({ab.ErrorKind.FATAL: ab.Retry(attempts=3)}), "FATAL"),
        (lambda: ab.RetryPolicy({"sometimes": ab.Retry()}), "unknown error kind"),  # type: ignore[dict-item]
        (lambda: ab.Backoff.constant(-1), "negative"),
    ],
)
def test_bad_policies_are_rejected_with_one_line(make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ab.ConfigError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


def test_default_policy_retries_transient_and_recoverable_only() -> None:
    policy = ab.RetryPolicy()
    assert policy[ab.ErrorKind.TRANSIENT].attempts > 1
    assert policy[ab.ErrorKind.RECOVERABLE].attempts > 1
    assert policy[ab.ErrorKind.PERMANENT].attempts == 1
    assert policy[ab.ErrorKind.FATAL].attempts == 1
    assert "TRANSIENT" in repr(policy)


@pytest.mark.looptime
async def test_jittered_retry_schedule_is_reproducible_with_a_seed() -> None:
    loop = asyncio.get_running_loop()

    async def run_once() -> list[float]:
        starts: list[float] = []

        async def job(x: int) -> None:
            starts.append(loop.time())
            raise ab.RecoverableError("nope")

        policy = ab.RetryPolicy(
            {
                ab.ErrorKind.RECOVERABLE: ab.Retry(
                    attempts=4, backoff=ab.Backoff.exponential(1, 2, max=60)
                )
            },
            seed=123,
        )
        await ab.run_batch(job, [1], retry=policy)
        return [b - a for a, b in itertools.pairwise(starts)]

    first, second = await run_once(), await run_once()
    assert first == pytest.approx(second)
    assert len(first) == 3
    assert all(0 <= d <= cap for d, cap in zip(first, (1, 2, 4), strict=True))


async def _seeded_delays(durations: dict[str, float]) -> dict[tuple[str, int], float]:
    """Every retry delay of a seeded run at concurrency 5, by (key, attempt)."""
    delays: dict[tuple[str, int], float] = {}

    def record(event: ab.Event) -> None:
        if isinstance(event, ab.RetryScheduled):
            delays[event.key, event.attempt] = event.delay

    async def job(key: str) -> str:
        await asyncio.sleep(durations[key])  # how long each job takes decides who fails first
        if ab.current_job().attempt < 4:
            raise ab.RecoverableError("try again")
        return key

    policy = ab.RetryPolicy(
        {ab.ErrorKind.RECOVERABLE: ab.Retry(attempts=4, backoff=ab.Backoff.exponential(1, 2))},
        seed=42,
    )
    result = await ab.run_batch(
        job, list(durations), key=str, concurrency=5, retry=policy, on_event=record
    )
    assert result.ok
    return delays


@pytest.mark.looptime
async def test_seeded_delay_depends_on_key_and_attempt_not_on_failure_order() -> None:
    keys = [f"job-{i}" for i in range(20)]
    fast_first = {k: 0.01 * i for i, k in enumerate(keys)}
    slow_first = {k: 0.01 * (20 - i) for i, k in enumerate(keys)}

    first = await _seeded_delays(fast_first)
    again = await _seeded_delays(fast_first)
    reordered = await _seeded_delays(slow_first)

    assert len(first) == 60  # 20 jobs x 3 retries
    assert first == again  # two identical runs: identical delays for every (key, attempt)
    assert first == reordered  # jobs failing in another order: still the same delays
    assert len(set(first.values())) > 50  # and the delays are really jittered


def test_unseeded_policies_draw_from_the_run_source_without_hashing() -> None:
    run_rng = random.Random()
    assert ab.RetryPolicy().rng_for("job-1", 1, run_rng) is run_rng
    seeded = ab.RetryPolicy(seed=42)
    a, b = seeded.rng_for("job-1", 1, run_rng), seeded.rng_for("job-1", 1, run_rng)
    assert a is not run_rng
    assert a.random() == b.random()
    other_attempt = seeded.rng_for("job-1", 2, run_rng).random()
    assert other_attempt != seeded.rng_for("job-2", 1, run_rng).random()


async def test_on_error_can_force_dead_letter_retry_or_abort() -> None:
    seen: list[tuple[str, int]] = []

    def on_error(exc: BaseException, job: ab.JobContext) -> ab.Decision | None:
        seen.append((job.key, job.attempt))
        if "poison" in str(exc):
            return ab.Decision.dead_letter()
        if "again" in str(exc) and job.attempt < 3:
            return ab.Decision.retry(after=0)
        if "stop" in str(exc):
            return ab.Decision.abort()
        return None

    async def job(x: str) -> str:
        if x == "again" and ab.current_job().attempt < 3:
            raise ab.PermanentError("again")  # PERMANENT, yet on_error retries it
        if x == "poison":
            raise ab.TransientError("poison")  # TRANSIENT, yet dead-lettered at once
        return x

    result = await ab.run_batch(job, ["again", "poison", "fine"], key=str, on_error=on_error)
    assert result["again"].status is ab.JobStatus.SUCCEEDED
    assert result["again"].attempts == 3
    assert result["poison"].status is ab.JobStatus.DEAD_LETTERED
    assert result["poison"].attempts == 1

    async def stopper(x: int) -> None:
        raise ab.TransientError("stop")

    with pytest.raises(ab.BatchAborted):
        await ab.run_batch(stopper, [1], on_error=on_error)


async def test_a_single_retry_applies_to_both_retryable_kinds() -> None:
    calls = 0

    async def job(x: int) -> None:
        nonlocal calls
        calls += 1
        raise ab.RecoverableError("x")

    await ab.run_batch(job, [1], retry=ab.Retry(attempts=2, backoff=ab.Backoff.constant(0)))
    assert calls == 2
