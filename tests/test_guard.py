"""Guards per dependency: bulkheads, rate limits, the run's context, statistics."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import anyio
import pytest

import asyncbatch as ab
from asyncbatch._context import JobContext, _current
from asyncbatch._deps import (
    Dependencies,
    DependencyStats,
    reset_dependencies,
    use_dependencies,
)


def make(
    *,
    limits: dict[str, int] | None = None,
    rates: dict[str, ab.Rate] | None = None,
    breakers: dict[str, ab.Breaker] | None = None,
    classify: Any = None,
) -> tuple[Dependencies, list[ab.Event]]:
    events: list[ab.Event] = []
    deps = Dependencies(
        run_id="run-1",
        limits=limits,
        rates=rates,
        breakers=breakers,
        classify=classify or ab.Classifier(),
        emit=events.append,
    )
    return deps, events


class InJob:
    """Run a block as if inside a job of a run using ``deps`` (as the executor does)."""

    def __init__(self, deps: Dependencies | None, key: str = "k") -> None:
        self.deps = deps
        self.ctx = JobContext("run-1", key, 1, None)

    def __enter__(self) -> JobContext:
        self._dt = use_dependencies(self.deps) if self.deps is not None else None
        self._jt = _current.set(self.ctx)
        return self.ctx

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._jt)
        if self._dt is not None:
            reset_dependencies(self._dt)


# ---------------------------------------------------------------- Rate


def test_rate_normalises_period_and_reads_well() -> None:
    assert ab.Rate(10) == ab.Rate(10, per=1.0)
    assert ab.Rate(5, per=timedelta(minutes=1)).per == 60.0
    assert repr(ab.Rate(10, per=0.5)) == "Rate(10, per=0.5)"
    with pytest.raises(AttributeError):
        ab.Rate(1).n = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0,), "Rate n must be a number >= 1"),
        ((0.5,), "HINT: for one call every 2 s write Rate"),
        (("10",), "Rate n must be a number"),
        ((True,), "Rate n must be a number"),
        ((float("nan"),), "Rate n must be a number"),
        ((10, 0), "Rate per must be a positive"),
        ((10, -1), "must not be negative"),
    ],
)
def test_rate_rejects_bad_values(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ab.ConfigError, match=message):
        ab.Rate(*args)


# -------------------------------------------------------- Dependencies


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limits": {1: 3}}, "limits= keys must be dependency names"),
        ({"limits": {"db": 0}}, r"limits\['db'\] must be a positive int"),
        ({"limits": {"db": True}}, r"limits\['db'\] must be a positive int"),
        ({"limits": {"db": 2.5}}, r"limits\['db'\] must be a positive int"),
        ({"limits": [("db", 1)]}, "limits= must be a dict"),
        ({"rates": {"api": 10}}, r"rates\['api'\] must be an ab.Rate.*HINT"),
        ({"breakers": {"api": object()}}, r"breakers\['api'\] must be an ab.Breaker"),
        ({"breakers": {None: ab.Breaker()}}, "breakers= keys must be dependency names"),
    ],
)
def test_dependencies_validate_their_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ab.ConfigError, match=message):
        make(**kwargs)


def test_dependencies_are_truthy_only_when_configured() -> None:
    assert not make()[0]
    assert make(limits={"db": 1})[0]
    assert make(rates={"api": ab.Rate(1)})[0]
    assert make(breakers={"api": ab.Breaker()})[0]


# ------------------------------------------------------------ bulkhead


async def test_bulkhead_never_exceeds_its_bound() -> None:
    deps, _ = make(limits={"db": 3})
    inside = peak = 0

    async def call(i: int) -> None:
        nonlocal inside, peak
        async with deps.guard("db"):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.001 * (i % 4))
            inside -= 1

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(call, i)
    assert peak == 3
    stats = deps.stats()["db"]
    assert (stats.max_in_flight, stats.limit, stats.calls, stats.successes) == (3, 3, 50, 50)


@pytest.mark.looptime
async def test_guards_in_child_tasks_of_a_guard_share_its_slot() -> None:
    """A job holding the only slot may fan out calls to the same dependency."""
    deps, _ = make(limits={"db": 1})
    with anyio.fail_after(1):
        async with deps.guard("db"), anyio.create_task_group() as tg:
            for _ in range(3):

                async def inner() -> None:
                    async with deps.guard("db"):
                        await asyncio.sleep(0.1)

                tg.start_soon(inner)
    stats = deps.stats()["db"]
    assert (stats.calls, stats.max_in_flight) == (1, 1)


@pytest.mark.looptime
async def test_nested_guard_of_the_same_dependency_passes_through() -> None:
    """``uses=["db"]`` plus ``ab.guard("db")`` in the job must not wait for its own slot."""
    deps, _ = make(limits={"db": 1})
    with anyio.fail_after(1):
        async with deps.guard_all(["db"]), deps.guard("db"):
            await asyncio.sleep(0)
    stats = deps.stats()["db"]
    assert (stats.calls, stats.max_in_flight) == (1, 1)


@pytest.mark.looptime
async def test_cancelled_while_waiting_for_the_rate_releases_the_slot() -> None:
    deps, _ = make(limits={"api": 1}, rates={"api": ab.Rate(1, per=100)})
    async with deps.guard("api"):
        pass  # spends the only token for 100 s
    with anyio.move_on_after(1):
        async with deps.guard("api"):
            pytest.fail("the rate limit should have held this call")
    with anyio.fail_after(200):  # the bulkhead slot must be free again
        async with deps.guard("api"):
            pass
    assert deps.stats()["api"].calls == 2


# ---------------------------------------------------------- rate limit


@pytest.mark.looptime
async def test_rate_limit_holds_over_every_window() -> None:
    loop = asyncio.get_running_loop()
    deps, _ = make(rates={"api": ab.Rate(5, per=1)})
    starts: list[float] = []

    async def call() -> None:
        async with deps.guard("api"):
            starts.append(loop.time())

    t0 = loop.time()
    async with anyio.create_task_group() as tg:
        for _ in range(40):
            tg.start_soon(call)
    starts = [t - t0 for t in starts]
    # One every 0.2 s from the first call on: the 40th starts at 7.8 s.
    assert starts[-1] == pytest.approx(7.8, rel=0.005)
    for i, t in enumerate(starts):
        assert t >= i * 0.2 - 1e-9, f"call {i} started early at {t}"
    for t in starts:  # no 1 s window holds more than 5 starts
        assert sum(1 for s in starts if t <= s < t + 1) <= 5


@pytest.mark.looptime
async def test_rate_limit_holds_in_the_first_second_of_a_batch() -> None:
    """Rate(50, per=1) used to start 99 calls in the first second (a full bucket plus its drip)."""
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def job(x: int) -> int:
        async with ab.guard("api"):
            starts.append(loop.time())
        return x

    t0 = loop.time()
    result = await ab.run_batch(job, range(150), concurrency=100, rates={"api": ab.Rate(50, per=1)})
    assert result.ok
    starts = [t - t0 for t in starts]
    assert sum(1 for t in starts if t < 1.0) == 50
    assert max(sum(1 for s in starts if t <= s < t + 1) for t in starts) == 50
    assert starts[-1] == pytest.approx(149 / 50, rel=0.005)  # and the rate is the full 50/s


@pytest.mark.looptime
async def test_breaker_rejects_before_waiting_on_rate_or_bulkhead() -> None:
    loop = asyncio.get_running_loop()
    deps, _ = make(rates={"api": ab.Rate(1, per=100)}, breakers={"api": ab.Breaker(fail_max=1)})
    with pytest.raises(ConnectionError):
        async with deps.guard("api"):
            raise ConnectionError("down")
    t0 = loop.time()
    with pytest.raises(ab.CircuitOpen):
        async with deps.guard("api"):
            pass
    assert loop.time() == t0  # rejected at once, not after the 100 s rate wait


@pytest.mark.looptime
async def test_call_waiting_on_the_bulkhead_is_rejected_if_the_circuit_opened_meanwhile() -> None:
    deps, _ = make(limits={"api": 1}, breakers={"api": ab.Breaker(fail_max=1)})
    reached: list[str] = []

    async def failing() -> None:
        async with deps.guard("api"):
            reached.append("first")
            await asyncio.sleep(1)
            raise ConnectionError("down")

    async def waiting() -> None:
        await asyncio.sleep(0.1)  # queue behind the first call's slot
        async with deps.guard("api"):
            reached.append("second")

    results = await asyncio.gather(failing(), waiting(), return_exceptions=True)
    assert isinstance(results[0], ConnectionError)
    assert isinstance(results[1], ab.CircuitOpen)
    assert reached == ["first"]
    assert deps.stats()["api"].rejections == 1
    with anyio.fail_after(31):  # the slot was given back
        await asyncio.sleep(30)
        async with deps.guard("api"):
            pass


# -------------------------------------------------------- guard_all


@pytest.mark.looptime
async def test_guard_all_checks_every_breaker_before_taking_any_slot() -> None:
    loop = asyncio.get_running_loop()
    deps, _ = make(limits={"a": 1}, breakers={"b": ab.Breaker(fail_max=1)})
    with pytest.raises(OSError, match="b down"):
        async with deps.guard("b"):
            raise OSError("b down")
    async with deps.guard("a"):  # hold a's only slot
        t0 = loop.time()
        with pytest.raises(ab.CircuitOpen) as info:
            async with deps.guard_all(["b", "a"]):
                pass
        assert loop.time() == t0
    assert info.value.dependency == "b"


async def test_guard_all_enters_each_dependency_once() -> None:
    deps, _ = make(limits={"a": 1, "b": 1})
    async with deps.guard_all(("b", "a", "b")):
        stats = deps.stats()
        assert stats["a"].max_in_flight == stats["b"].max_in_flight == 1
    assert deps.stats()["b"].calls == 1


async def test_guard_all_records_the_failure_on_every_dependency_once_classified() -> None:
    seen: list[BaseException] = []
    classifier = ab.Classifier()

    def classify(exc: BaseException) -> ab.ErrorKind:
        seen.append(exc)
        return classifier(exc)

    deps, _ = make(
        breakers={"a": ab.Breaker(fail_max=1), "b": ab.Breaker(fail_max=1)}, classify=classify
    )
    with InJob(deps) as job, pytest.raises(TimeoutError):
        async with deps.guard_all(["b", "a"]):
            raise TimeoutError
    assert {n: s.state for n, s in deps.stats().items()} == {"a": "open", "b": "open"}
    assert len(seen) == 1
    assert job.dependency == "b"  # the first dependency the run declared in uses=


# ------------------------------------------------------- ab.guard & context


async def test_guard_outside_a_run_says_how_to_fix_it() -> None:
    with pytest.raises(RuntimeError, match=r"outside a batch run; HINT: .*breakers="):
        async with ab.guard("api"):
            pass


async def test_guard_finds_the_runs_dependencies_from_child_tasks() -> None:
    deps, _ = make(limits={"db": 1})
    with InJob(deps):
        async with anyio.create_task_group() as tg:
            for _ in range(3):

                async def call() -> None:
                    async with ab.guard("db"):
                        await asyncio.sleep(0.001)

                tg.start_soon(call)
    assert deps.stats()["db"].calls == 3


async def test_unconfigured_dependency_is_not_limited_but_recorded() -> None:
    deps, _ = make(limits={"db": 1})
    with InJob(deps) as job:
        with pytest.raises(ConnectionError):
            async with ab.guard("search"):
                raise ConnectionError("x")
        async with ab.guard("search"):
            pass
    assert job.dependency == "search"
    stats = deps.stats()["search"]
    assert (stats.calls, stats.successes, stats.failures, stats.limit, stats.state) == (
        2,
        1,
        1,
        None,
        "closed",
    )


async def test_guard_in_a_job_of_a_run_without_dependencies_still_attributes_errors() -> None:
    with InJob(None) as job, pytest.raises(KeyError):
        async with ab.guard("cache"):
            raise KeyError("k")
    assert job.dependency == "cache"


async def test_error_is_attributed_to_the_innermost_dependency_for_the_classifier() -> None:
    seen: list[str | None] = []
    classifier = ab.Classifier()

    def classify(exc: BaseException) -> ab.ErrorKind:
        seen.append(ab.current_job().dependency)
        return classifier(exc)

    deps, _ = make(breakers={"api": ab.Breaker(fail_max=1)}, classify=classify)
    with InJob(deps) as job, pytest.raises(ConnectionError):
        async with ab.guard("api"), ab.guard("db"):
            raise ConnectionError("db is down")
    assert job.dependency == "db"
    assert seen == ["db"]  # classified once, by the guard it came from, after attribution
    assert deps.stats()["api"].state == "closed"  # the db's failure is not the api's
    assert deps.stats()["api"].failures == 0


async def test_rejection_sets_the_jobs_dependency() -> None:
    deps, _ = make(breakers={"api": ab.Breaker(fail_max=1)})
    with InJob(deps) as job:
        with pytest.raises(ConnectionError):
            async with ab.guard("api"):
                raise ConnectionError
        job.dependency = None
        with pytest.raises(ab.CircuitOpen):
            async with ab.guard("db"), ab.guard("api"):
                pass
    assert job.dependency == "api"
    assert deps.stats()["db"].failures == 0


async def test_guard_name_must_be_a_string() -> None:
    with pytest.raises(ab.ConfigError, match="dependency name"):
        ab.guard(3)  # type: ignore[arg-type]


async def test_broken_classifier_does_not_replace_the_jobs_error() -> None:
    def classify(exc: BaseException) -> Any:
        raise RuntimeError("bug in a rule")

    deps, _ = make(breakers={"api": ab.Breaker(fail_max=1)}, classify=classify)
    with pytest.raises(ConnectionError, match="real"):
        async with deps.guard("api"):
            raise ConnectionError("real")
    assert deps.stats()["api"].state == "open"  # unclassifiable counts, to be safe


# ------------------------------------------------------------- stats


@pytest.mark.looptime
async def test_stats_snapshot_numbers() -> None:
    deps, _ = make(
        limits={"api": 4},
        rates={"api": ab.Rate(1000)},  # one start per ms: the 4 calls overlap
        breakers={"api": ab.Breaker(fail_max=2, reset_timeout=10)},
    )

    async def call(fail: bool = False) -> None:
        async with deps.guard("api"):
            await asyncio.sleep(0.01)
            if fail:
                raise ConnectionError("down")

    await asyncio.gather(*(call() for _ in range(4)))  # 4 at once
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await call(fail=True)
    for _ in range(3):
        with pytest.raises(ab.CircuitOpen):
            await call()
    await asyncio.sleep(4)
    snap = deps.stats()["api"]
    assert snap == DependencyStats(
        name="api",
        state="open",
        calls=6,
        successes=4,
        failures=2,
        rejections=3,
        trips=1,
        time_open=pytest.approx(4.0, abs=1e-6),
        max_in_flight=4,
        limit=4,
        rate=ab.Rate(1000),
    )
    await asyncio.sleep(6)
    await call()  # the probe closes it: time_open stops growing
    await asyncio.sleep(5)
    later = deps.stats()["api"]
    assert later.state == "closed"
    assert later.time_open == pytest.approx(10.0, abs=0.05)
    as_dict = json.loads(json.dumps(later.to_dict()))
    assert as_dict["rate"] == {"n": 1000, "per": 1.0}
    assert as_dict["trips"] == 1
    assert set(as_dict) == {
        "name",
        "state",
        "calls",
        "successes",
        "failures",
        "rejections",
        "trips",
        "time_open",
        "max_in_flight",
        "limit",
        "rate",
    }


async def test_two_dependencies_have_independent_bulkheads() -> None:
    deps, _ = make(limits={"a": 1, "b": 1})
    async with deps.guard("a"):
        with anyio.fail_after(1):
            async with deps.guard("b"):  # a's full bulkhead does not hold b
                pass
    assert deps.stats()["b"].calls == 1
