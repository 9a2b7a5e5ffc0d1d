"""The executor: fan-out, ordering, retries that free their slot, abort, cancellation."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncbatch as ab

FAST = ab.Backoff.constant(0.001)
FAST_POLICY = ab.RetryPolicy(
    {
        ab.ErrorKind.TRANSIENT: ab.Retry(attempts=3, backoff=FAST),
        ab.ErrorKind.RECOVERABLE: ab.Retry(attempts=3, backoff=FAST),
    }
)


async def double(x: int) -> int:
    return x * 2


async def test_outcomes_come_back_in_input_order_with_results() -> None:
    async def jittery(x: int) -> int:
        await asyncio.sleep(random.random() / 1000)
        return x * 2

    result = await ab.run_batch(jittery, range(50), concurrency=8)
    assert [o.key for o in result.outcomes] == [str(i) for i in range(50)]
    assert result.results == [i * 2 for i in range(50)]
    assert result.ok
    assert result.counts[ab.JobStatus.SUCCEEDED] == 50
    assert all(o.attempts == 1 for o in result.outcomes)


async def test_key_function_names_jobs() -> None:
    items = [{"id": "a"}, {"id": "b"}]

    async def job(item: dict[str, str]) -> str:
        return item["id"]

    result = await ab.run_batch(job, items, key=lambda it: it["id"])
    assert [o.key for o in result.outcomes] == ["a", "b"]
    assert result["b"].result == "b"


async def test_empty_input_gives_empty_ok_result() -> None:
    result = await ab.run_batch(double, [])
    assert result.outcomes == []
    assert result.ok


async def test_current_job_describes_the_running_attempt() -> None:
    seen: list[tuple[str, int, int]] = []

    async def job(x: int) -> None:
        ctx = ab.current_job()
        seen.append((ctx.key, ctx.attempt, ctx.item))
        if ctx.attempt == 1:
            raise ab.TransientError("first attempt fails")

    result = await ab.run_batch(job, [10], run_id="r1", retry=FAST_POLICY)
    assert result.run_id == "r1"
    assert seen == [("0", 1, 10), ("0", 2, 10)]


def test_current_job_outside_a_job_raises_with_a_hint() -> None:
    with pytest.raises(RuntimeError, match="outside a job"):
        ab.current_job()


async def test_concurrency_bounds_in_flight_jobs() -> None:
    in_flight = 0
    peak = 0

    async def job(x: int) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        in_flight -= 1

    await ab.run_batch(job, range(200), concurrency=7)
    assert peak == 7


async def test_async_iterable_input_is_read_lazily() -> None:
    pulled = 0
    finished = 0
    max_ahead = 0

    async def source():  # type: ignore[no-untyped-def]
        nonlocal pulled
        for i in range(500):
            pulled += 1
            yield i

    async def job(x: int) -> None:
        nonlocal finished, max_ahead
        max_ahead = max(max_ahead, pulled - finished)
        await asyncio.sleep(0)
        finished += 1

    result = await ab.run_batch(job, source(), concurrency=4)
    assert result.counts[ab.JobStatus.SUCCEEDED] == 500
    # Read-ahead is bounded by the concurrency (ready queue + workers), not by N.
    assert max_ahead <= 4 * 3


async def test_sync_generator_is_read_lazily() -> None:
    pulled = 0
    max_ahead = 0
    finished = 0

    def source():  # type: ignore[no-untyped-def]
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield i

    async def job(x: int) -> None:
        nonlocal finished, max_ahead
        max_ahead = max(max_ahead, pulled - finished)
        await asyncio.sleep(0)
        finished += 1

    await ab.run_batch(job, source(), concurrency=5)
    assert max_ahead <= 5


async def test_permanent_errors_are_dead_lettered_without_retry() -> None:
    calls = Counter[int]()

    async def job(x: int) -> int:
        calls[x] += 1
        if x == 2:
            raise ValueError("bad item 2")
        return x

    result = await ab.run_batch(job, range(4), retry=FAST_POLICY)
    dead = result["2"]
    assert dead.status is ab.JobStatus.DEAD_LETTERED
    assert dead.kind is ab.ErrorKind.PERMANENT
    assert isinstance(dead.error, ValueError)
    assert calls[2] == 1
    assert [h.message for h in dead.history] == ["bad item 2"]
    assert not result.ok
    assert result.dead_letters == [dead]


async def test_retries_exhausted_end_dead_lettered_with_full_history() -> None:
    async def job(x: int) -> int:
        raise ab.TransientError(f"try {ab.current_job().attempt}")

    result = await ab.run_batch(job, [1], retry=FAST_POLICY)
    outcome = result.outcomes[0]
    assert outcome.status is ab.JobStatus.DEAD_LETTERED
    assert outcome.attempts == 3
    assert [h.number for h in outcome.history] == [1, 2, 3]
    assert [h.message for h in outcome.history] == ["try 1", "try 2", "try 3"]
    assert all(h.kind is ab.ErrorKind.TRANSIENT for h in outcome.history)
    assert outcome.history[0].error_type == "asyncbatch._errors.TransientError"


@pytest.mark.looptime
async def test_backoff_releases_concurrency_slot() -> None:
    """With 2 slots, a job backing off for 10 s must not stop the other slots' quick jobs."""
    loop = asyncio.get_running_loop()
    done_at: dict[int, float] = {}
    slow = ab.RetryPolicy(
        {ab.ErrorKind.RECOVERABLE: ab.Retry(attempts=2, backoff=ab.Backoff.constant(10))}
    )

    async def job(x: int) -> int:
        await asyncio.sleep(0.1)
        if x in (0, 1) and ab.current_job().attempt == 1:
            raise ab.RecoverableError("back off")
        done_at[x] = loop.time()
        return x

    start = loop.time()
    result = await ab.run_batch(job, range(20), concurrency=2, retry=slow)
    assert result.ok
    # Both failing jobs are parked; the 18 quick jobs use both slots: 9 x 0.1 s.
    assert max(done_at[x] for x in range(2, 20)) - start == pytest.approx(1.0, abs=0.15)
    assert done_at[0] - start == pytest.approx(10.2, abs=0.15)


@pytest.mark.looptime
async def test_retry_after_is_honoured_as_minimum_delay() -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    class RateLimited(Exception):
        retry_after = 7.5

    async def job(x: int) -> None:
        starts.append(loop.time())
        if len(starts) == 1:
            raise RateLimited("429")

    policy = ab.RetryPolicy(
        {ab.ErrorKind.RECOVERABLE: ab.Retry(attempts=2, backoff=ab.Backoff.constant(0.1))}
    )
    result = await ab.run_batch(job, [1], retry=policy)
    assert result.ok
    assert starts[1] - starts[0] == pytest.approx(7.5, abs=0.01)
    assert result.outcomes[0].kind is ab.ErrorKind.RECOVERABLE


@pytest.mark.looptime
async def test_attempt_timeout_is_transient_and_retried() -> None:
    async def job(x: int) -> str:
        if ab.current_job().attempt == 1:
            await asyncio.sleep(60)
        return "ok"

    result = await ab.run_batch(job, [1], timeout=1.0, retry=FAST_POLICY)
    outcome = result.outcomes[0]
    assert outcome.status is ab.JobStatus.SUCCEEDED
    assert outcome.attempts == 2
    assert outcome.history[0].kind is ab.ErrorKind.TRANSIENT
    assert outcome.history[0].error_type == "TimeoutError"


@pytest.mark.looptime
async def test_deadline_stops_retries() -> None:
    loop = asyncio.get_running_loop()
    attempts = 0

    async def job(x: int) -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(1)
        raise ab.TransientError("still down")

    policy = ab.RetryPolicy(
        {ab.ErrorKind.TRANSIENT: ab.Retry(attempts=100, backoff=ab.Backoff.constant(1))}
    )
    start = loop.time()
    result = await ab.run_batch(job, [1], deadline=5.5, retry=policy)
    outcome = result.outcomes[0]
    assert outcome.status is ab.JobStatus.DEAD_LETTERED
    assert loop.time() - start <= 5.5 + 0.01
    assert attempts == 3  # 1 s run + 1 s backoff each; the 4th would start past the deadline


@pytest.mark.looptime
async def test_deadline_cuts_a_running_attempt() -> None:
    async def job(x: int) -> None:
        await asyncio.sleep(100)

    result = await ab.run_batch(job, [1], deadline=2, retry=FAST_POLICY)
    outcome = result.outcomes[0]
    assert outcome.status is ab.JobStatus.DEAD_LETTERED
    assert isinstance(outcome.error, ab.DeadlineExceeded)
    assert isinstance(outcome.error, TimeoutError)


async def test_fatal_error_aborts_and_cancels_in_flight_attempts() -> None:
    cancelled: list[int] = []
    started: list[int] = []

    async def job(x: int) -> int:
        started.append(x)
        if x == 5:
            await asyncio.sleep(0.001)
            raise ab.FatalError("credentials revoked")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    with pytest.raises(ab.BatchAborted) as info:
        await ab.run_batch(job, range(100), concurrency=10)
    aborted = info.value
    assert isinstance(aborted.cause, ab.FatalError)
    assert aborted.__cause__ is aborted.cause
    partial = aborted.result
    assert partial["5"].status is ab.JobStatus.FAILED
    assert sorted(cancelled) == sorted(x for x in started if x != 5)
    assert partial.counts[ab.JobStatus.CANCELLED] == len(cancelled)
    # Feeding stopped: only the first wave ever started.
    assert len(started) == 10
    assert not partial.ok


async def test_memory_error_is_fatal_by_default() -> None:
    async def job(x: int) -> None:
        raise MemoryError

    with pytest.raises(ab.BatchAborted):
        await ab.run_batch(job, [1])


async def test_caller_cancellation_cancels_every_attempt_without_classifying() -> None:
    cancelled = 0
    classified: list[BaseException] = []

    def classify(exc: BaseException) -> ab.ErrorKind:
        classified.append(exc)
        return ab.ErrorKind.TRANSIENT

    async def job(x: int) -> None:
        nonlocal cancelled
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled += 1
            raise

    with anyio.move_on_after(0.05) as scope:
        await ab.run_batch(job, range(50), concurrency=5, classify=classify)
    assert scope.cancelled_caught
    assert cancelled == 5
    assert classified == []


async def test_base_exceptions_propagate_unclassified_and_unretried() -> None:
    class Stop(BaseException):
        pass

    calls = 0

    async def job(x: int) -> None:
        nonlocal calls
        calls += 1
        raise Stop

    with pytest.raises(Stop):
        await ab.run_batch(job, [1], retry=FAST_POLICY)
    assert calls == 1


@pytest.mark.looptime
async def test_stream_yields_in_completion_order_and_gives_a_result() -> None:
    async def job(x: int) -> int:
        await asyncio.sleep((5 - x) / 1000)
        return x

    batch = ab.Batch(job, concurrency=5)
    async with batch.stream(range(5)) as outcomes:
        keys = [o.key async for o in outcomes]
    assert keys == ["4", "3", "2", "1", "0"]
    assert outcomes.result is not None
    assert outcomes.result.counts[ab.JobStatus.SUCCEEDED] == 5


async def test_stream_raises_batch_aborted_to_the_reader() -> None:
    async def job(x: int) -> int:
        if x == 3:
            raise ab.FatalError("stop")
        return x

    seen: list[tuple[str, ab.JobStatus]] = []

    async def read_all() -> None:
        async with ab.Batch(job, concurrency=1).stream(range(10)) as outcomes:
            async for o in outcomes:
                seen.append((o.key, o.status))

    with pytest.raises(ab.BatchAborted):
        await read_all()
    ok = ab.JobStatus.SUCCEEDED
    assert seen == [("0", ok), ("1", ok), ("2", ok), ("3", ab.JobStatus.FAILED)]


async def test_leaving_a_stream_early_cancels_the_rest() -> None:
    started = 0

    async def job(x: int) -> int:
        nonlocal started
        started += 1
        await asyncio.sleep(0)
        return x

    async with ab.Batch(job, concurrency=2).stream(range(100_000)) as outcomes:
        async for o in outcomes:
            if o.key == "10":
                break
    assert started < 10_000


async def test_batch_is_reusable() -> None:
    batch = ab.Batch(double, concurrency=3)
    first = await batch.run([1, 2])
    second = await batch.run([3])
    assert first.results == [2, 4]
    assert second.results == [6]
    assert first.run_id != second.run_id


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pattern=st.lists(
        st.lists(
            st.sampled_from(["ok", "transient", "recoverable", "permanent"]), min_size=1, max_size=4
        ),
        min_size=0,
        max_size=40,
    ),
    concurrency=st.integers(1, 8),
)
def test_no_job_is_lost_or_run_again_after_success(
    pattern: list[list[str]], concurrency: int
) -> None:
    """Whatever each attempt does, every item ends exactly once and never re-runs after success."""
    runs = Counter[int]()
    succeeded_at: dict[int, int] = {}

    async def job(i: int) -> int:
        assert i not in succeeded_at, "job ran again after it succeeded"
        runs[i] += 1
        script = pattern[i]
        step = script[min(runs[i], len(script)) - 1]
        await asyncio.sleep(0)
        if step == "transient":
            raise ab.TransientError(step)
        if step == "recoverable":
            raise ab.RecoverableError(step)
        if step == "permanent":
            raise ab.PermanentError(step)
        succeeded_at[i] = runs[i]
        return i

    result = asyncio.run(
        ab.run_batch(job, range(len(pattern)), concurrency=concurrency, retry=FAST_POLICY)
    )
    assert [o.key for o in result.outcomes] == [str(i) for i in range(len(pattern))]
    assert sum(result.counts.values()) == len(pattern)
    for i, outcome in enumerate(result.outcomes):
        assert outcome.attempts == runs[i]
        if outcome.status is ab.JobStatus.SUCCEEDED:
            assert outcome.result == i
            assert succeeded_at[i] == runs[i]
        else:
            assert outcome.status is ab.JobStatus.DEAD_LETTERED
            assert i not in succeeded_at


async def test_result_repr_is_a_summary_not_a_dump() -> None:
    result = await ab.run_batch(double, range(1000))
    text = repr(result)
    assert "outcomes=<1000>" in text
    assert "'succeeded': 1000" in text
    assert len(text) < 300


# ---------------------------------------------------- parked jobs are bounded


def _counting(n: int, pulled: list[int]):  # type: ignore[no-untyped-def]
    for i in range(n):
        pulled[0] += 1
        yield i


async def _always_fails(x: int) -> None:
    raise ab.TransientError("down for everyone")


LONG_BACKOFF = ab.Retry(attempts=5, backoff=ab.Backoff.constant(60))


@pytest.mark.looptime
async def test_admission_waits_while_too_many_jobs_are_parked() -> None:
    pulled = [0]
    # Every item fails and backs off 60 s: without a cap, all 100,000 would be pulled
    # (and held in memory) within the first seconds.
    with anyio.move_on_after(5):
        async with ab.Batch(_always_fails, concurrency=10, retry=LONG_BACKOFF).stream(
            _counting(100_000, pulled)
        ) as outcomes:
            async for _ in outcomes:
                pass
    cap = max(1000, 10 * 10)
    assert cap <= pulled[0] <= cap + 10 + 1


@pytest.mark.looptime
async def test_parked_cap_also_holds_back_an_async_input() -> None:
    pulled = 0

    async def items():  # type: ignore[no-untyped-def]
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield i

    with anyio.move_on_after(5):
        await ab.run_batch(_always_fails, items(), concurrency=10, retry=LONG_BACKOFF)
    # The cap, plus the feeder's read-ahead (one concurrency's worth) and the item in hand.
    assert 1000 <= pulled <= 1000 + 2 * 10 + 1


@pytest.mark.looptime
async def test_parked_jobs_coming_due_let_new_items_in_again() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    tries: Counter[int] = Counter()

    async def flaky(x: int) -> int:
        tries[x] += 1
        if tries[x] == 1:
            raise ab.TransientError("first try fails")
        return x

    retry = ab.Retry(attempts=2, backoff=ab.Backoff.constant(10))
    result = await ab.run_batch(flaky, range(3000), concurrency=10, retry=retry)
    assert result.ok
    # 1,000 parked at a time, each group back 10 s later: three rounds, not one.
    assert 30 <= loop.time() - start < 31


@pytest.mark.looptime
async def test_an_outage_for_everyone_holds_new_items_back_instead_of_burning_their_attempts() -> (
    None
):
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def call(x: int) -> int:
        await asyncio.sleep(0.01)
        if loop.time() - start < 3:  # down for everyone for 3 s
            raise ConnectionRefusedError("connection refused")
        return x

    result = await ab.run_batch(call, range(1500), concurrency=25)  # default retries
    lost = result.counts[ab.JobStatus.DEAD_LETTERED]
    # Without the hold, freed slots started new items that burnt their 5 attempts within
    # the outage (1,230 of 1,500 lost); a retry loop holding a semaphore loses ~160.
    assert lost <= 300
    assert result.counts[ab.JobStatus.SUCCEEDED] == 1500 - lost


@pytest.mark.looptime
async def test_after_an_outage_new_items_flow_at_full_speed_again() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    tries: Counter[int] = Counter()

    async def call(x: int) -> int:
        tries[x] += 1
        await asyncio.sleep(0.01)
        if loop.time() - start < 2:  # down for everyone for 2 s
            raise ConnectionRefusedError("connection refused")
        if x % 5 == 0 and tries[x] == 1:  # afterwards, one item in five fails once
            raise ab.TransientError("blip")
        return x

    retry = ab.Retry(attempts=5, backoff=ab.Backoff.constant(0.3))
    result = await ab.run_batch(call, range(3000), concurrency=10, retry=retry)
    # (The ~300 items started before the first retry failed were lost in the outage.)
    assert result.counts[ab.JobStatus.SUCCEEDED] >= 2500
    # ~3,600 calls of 10 ms on 10 slots after the outage: ~3.6 s. Were new items still
    # held back as in the outage, every item backing off after a blip would hold a slot.
    assert loop.time() - start < 2 + 3.6 + 1


# ------------------------------------------------------------ input errors


def _items_then_bad(n: int):  # type: ignore[no-untyped-def]
    yield from range(n)
    raise ValueError("line 6: malformed")


async def test_an_input_error_lets_started_jobs_finish_then_raises() -> None:
    finished: list[int] = []

    async def slow(x: int) -> int:
        await asyncio.sleep(0.05)
        finished.append(x)
        return x

    with pytest.raises(ValueError, match="line 6: malformed"):
        await ab.run_batch(slow, _items_then_bad(5), concurrency=10)
    assert sorted(finished) == [0, 1, 2, 3, 4]  # none cancelled


async def test_an_input_error_from_an_async_input_lets_started_jobs_finish() -> None:
    finished: list[int] = []

    async def items():  # type: ignore[no-untyped-def]
        for i in range(5):
            yield i
        raise ValueError("bad record")

    async def slow(x: int) -> int:
        await asyncio.sleep(0.05)
        finished.append(x)
        return x

    with pytest.raises(ValueError, match="bad record"):
        await ab.run_batch(slow, items(), concurrency=10)
    assert sorted(finished) == [0, 1, 2, 3, 4]


async def test_after_an_input_error_the_jobs_before_it_are_checkpointed_and_resume(
    tmp_path: object,
) -> None:
    db = f"{tmp_path}/input.db"
    streamed: list[str] = []

    async def slow(x: int) -> int:
        await asyncio.sleep(0.05)
        return x

    batch = ab.Batch(slow, concurrency=10, store=db, run_id="r-input")

    async def read_all() -> None:
        async with batch.stream(_items_then_bad(5)) as outcomes:
            async for outcome in outcomes:
                streamed.append(outcome.key)

    with pytest.raises(ValueError, match="malformed"):
        await read_all()
    assert sorted(streamed) == ["0", "1", "2", "3", "4"]  # the reader saw each of them
    async with ab.open_store(f"sqlite:///{db}") as store:
        assert sorted(await store.finished_jobs("r-input")) == ["0", "1", "2", "3", "4"]
        assert (await store.get_run("r-input")).status == "interrupted"
    result = await batch.run(range(8))  # the input fixed: resume
    assert result.counts[ab.JobStatus.SKIPPED] == 5
    assert result.counts[ab.JobStatus.SUCCEEDED] == 3


# ------------------------------------------------------ handlers and backends


def _broken_classify(exc: BaseException) -> ab.ErrorKind:
    raise RuntimeError("classifier bug")


def _broken_on_error(exc: BaseException, job: ab.JobContext) -> ab.Decision | None:
    raise KeyError("handler bug")


def _nonsense_on_error(exc: BaseException, job: ab.JobContext) -> ab.Decision | None:
    return "retry"  # type: ignore[return-value]  # the bug under test


async def _failing_slowly(x: int) -> int:
    await asyncio.sleep(0.01 * (x % 3))
    if x % 2:
        raise ab.TransientError(f"flaky {x}")
    return x


@pytest.mark.parametrize(
    ("option", "handler", "cause"),
    [
        ("classify", _broken_classify, RuntimeError),
        ("on_error", _broken_on_error, KeyError),
        ("on_error", _nonsense_on_error, TypeError),
    ],
)
async def test_a_raising_handler_stops_the_run_with_its_own_error_and_marks_it_failed(
    tmp_path: Path, option: str, handler: object, cause: type[Exception]
) -> None:
    db = f"sqlite:///{tmp_path}/h.db"
    with pytest.raises(ab.HandlerError) as info:
        await ab.run_batch(
            _failing_slowly, range(20), concurrency=5, store=db, run_id="r", **{option: handler}
        )
    error = info.value
    assert (error.handler, error.name) == (option, handler.__qualname__)  # type: ignore[attr-defined]
    assert isinstance(error.__cause__, cause)  # the handler's own error, chained
    assert "\n" not in str(error)
    assert f"{option}= handler {handler.__qualname__}" in str(error)  # type: ignore[attr-defined]

    async with ab.open_store(db) as store:
        run = await store.get_run("r")
        assert run.status == "failed"
        assert (run.report or {})["aborted"].startswith("HandlerError: ")
        assert run.counts["dead_lettered"] == 0  # no failure was handled blindly

    # Fixed handler, same run id: the run resumes and every job ends properly.
    result = await ab.run_batch(
        _failing_slowly, range(20), concurrency=5, store=db, run_id="r", retry=FAST_POLICY
    )
    done_before = result.counts[ab.JobStatus.SKIPPED]
    assert result.counts[ab.JobStatus.SUCCEEDED] + done_before == 10
    assert result.counts[ab.JobStatus.DEAD_LETTERED] == 10


async def test_a_raising_classifier_reaches_a_stream_reader_as_its_own_error() -> None:
    batch = ab.Batch(_failing_slowly, concurrency=5, classify=_broken_classify)

    async def read_all() -> None:
        async with batch.stream(range(20)) as outcomes:
            async for _ in outcomes:
                pass

    with pytest.raises(ab.HandlerError) as info:
        await read_all()
    assert isinstance(info.value.__cause__, RuntimeError)


async def test_a_raising_handler_does_not_roll_the_batch_back() -> None:
    undone: list[int] = []

    async def undo(item: int, result: int) -> None:
        undone.append(item)

    with pytest.raises(ab.HandlerError):
        await ab.run_batch(
            _failing_slowly, range(20), concurrency=1, on_error=_broken_on_error, compensate=undo
        )
    assert undone == []  # a bug in a handler is not a decision to undo the work


def test_running_under_trio_is_refused_in_one_line() -> None:
    pytest.importorskip("trio")

    async def main() -> None:
        await ab.run_batch(double, [1, 2])

    refused = r"^asyncbatch needs asyncio, but this runs under trio;"
    with pytest.raises(ab.AsyncBatchError, match=refused) as info:
        anyio.run(main, backend="trio")
    assert "\n" not in str(info.value)


async def test_a_raising_result_rule_is_a_handler_error() -> None:
    def explode(result: object) -> bool:
        raise ZeroDivisionError("rule bug")

    classifier = ab.Classifier(rules=[ab.Rule(result=explode, kind=ab.ErrorKind.TRANSIENT)])
    with pytest.raises(ab.HandlerError) as info:
        await ab.run_batch(double, range(5), classify=classifier)
    assert info.value.handler == "classify"
    assert isinstance(info.value.__cause__, ZeroDivisionError)
