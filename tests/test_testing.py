"""asyncbatch.testing: set_testing for users' own tests, and the seeded FaultInjector."""

from __future__ import annotations

import asyncio
import time

import pytest

import asyncbatch as ab
from asyncbatch.testing import (
    FaultInjector,
    InjectedFault,
    InjectedOutage,
    InjectedPermanent,
    InjectedRecoverable,
    InjectedTransient,
    is_testing,
    set_testing,
    testing_overrides,
)

# ------------------------------------------------------------------ set_testing


def test_set_testing_context_restores_previous_state_on_exit() -> None:
    assert testing_overrides() == (False, None)
    with set_testing(attempts=2):
        assert testing_overrides() == (True, 2)
        with set_testing(False):
            assert testing_overrides() == (False, None)
        assert testing_overrides() == (True, 2)
    assert testing_overrides() == (False, None)
    assert not is_testing()


def test_set_testing_restores_even_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), set_testing(attempts=1):
        raise RuntimeError("boom")
    assert testing_overrides() == (False, None)


def test_set_testing_as_a_call_stays_on_until_switched_off() -> None:
    set_testing(True)
    try:
        assert is_testing()
        assert testing_overrides() == (True, None)
    finally:
        set_testing(False)
    assert not is_testing()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_set_testing_rejects_bad_attempts(bad: object) -> None:
    with pytest.raises(ab.ConfigError, match="positive int"):
        set_testing(attempts=bad)  # type: ignore[arg-type]
    assert testing_overrides() == (False, None)


async def test_set_testing_caps_attempts_and_zeroes_backoff_in_a_real_batch() -> None:
    calls: list[int] = []

    async def always_busy(item: int) -> int:
        calls.append(item)
        # Without testing mode, this retry_after alone would take 4 x 30 s.
        exc = ab.RecoverableError("busy")
        exc.retry_after = 30  # type: ignore[attr-defined]
        raise exc

    started = time.perf_counter()
    with set_testing(attempts=3):
        result = await ab.run_batch(always_busy, [1, 2])
    assert time.perf_counter() - started < 2
    assert [o.attempts for o in result.outcomes] == [3, 3]
    assert result.counts[ab.JobStatus.DEAD_LETTERED] == 2
    assert len(calls) == 6


# --------------------------------------------------------------- FaultInjector


async def _draw(injector: FaultInjector, keys: list[str], calls_per_key: int) -> list[str]:
    """Which fault each (key, call) got, as labels ('ok' when it went through)."""
    seen = []
    for n in range(calls_per_key):
        for key in keys:
            try:
                await injector.maybe_fail(key)
            except InjectedFault as exc:
                seen.append(f"{key}/{n}:{exc.kind.value}")
            else:
                seen.append(f"{key}/{n}:ok")
    return seen


async def test_same_seed_gives_the_same_faults() -> None:
    rates = {ab.ErrorKind.TRANSIENT: 0.3, ab.ErrorKind.RECOVERABLE: 0.2}
    keys = [str(i) for i in range(50)]
    first = await _draw(FaultInjector(seed=7, rates=rates), keys, 3)
    again = await _draw(FaultInjector(seed=7, rates=rates), keys, 3)
    other = await _draw(FaultInjector(seed=8, rates=rates), keys, 3)
    assert first == again
    assert first != other
    assert any(":transient" in s for s in first)
    assert any(":recoverable" in s for s in first)


async def test_faults_do_not_depend_on_the_order_of_concurrent_calls() -> None:
    rates = {ab.ErrorKind.TRANSIENT: 0.5}
    keys = [str(i) for i in range(40)]

    async def outcome(inj: FaultInjector, key: str) -> str:
        try:
            await inj.maybe_fail(key)
        except InjectedFault:
            return "fail"
        return "ok"

    forward = FaultInjector(seed=1, rates=rates)
    backward = FaultInjector(seed=1, rates=rates)
    a = {k: await outcome(forward, k) for k in keys}
    b = {k: await outcome(backward, k) for k in reversed(keys)}
    assert a == b


async def test_fault_rates_are_roughly_honoured() -> None:
    injector = FaultInjector(seed=0, rates={"transient": 0.25})
    await _draw(injector, [str(i) for i in range(2000)], 1)
    stats = injector.stats
    assert stats.calls == 2000
    assert 400 < stats.injected["transient"] < 600
    assert stats.passed + stats.failures == 2000


async def test_poison_keys_always_fail_permanent() -> None:
    injector = FaultInjector(poison={"bad"})
    for _ in range(3):
        with pytest.raises(InjectedPermanent) as info:
            await injector.maybe_fail("bad")
        assert isinstance(info.value, ab.PermanentError)
    await injector.maybe_fail("good")
    assert injector.stats.injected == {"poison": 3}


async def test_poison_predicate() -> None:
    injector = FaultInjector(poison=lambda key: key.endswith("7"))
    with pytest.raises(InjectedPermanent):
        await injector.maybe_fail("17")
    await injector.maybe_fail("18")


async def test_injected_errors_carry_retry_after_and_classify_by_kind() -> None:
    injector = FaultInjector(
        rates={ab.ErrorKind.TRANSIENT: 0.5, ab.ErrorKind.RECOVERABLE: 0.5}, retry_after=1.5
    )
    with pytest.raises((InjectedTransient, InjectedRecoverable)) as info:
        await injector.maybe_fail("k")
    assert info.value.retry_after == 1.5
    assert info.value.key == "k"
    assert ab.Classifier()(info.value) is info.value.kind


async def test_custom_exceptions_are_raised_by_probability() -> None:
    injector = FaultInjector(exceptions={ConnectionResetError: 1.0})
    with pytest.raises(ConnectionResetError, match="injected ConnectionResetError"):
        await injector.maybe_fail("a")
    assert injector.stats.injected == {"ConnectionResetError": 1}


@pytest.mark.looptime
async def test_outage_window_is_relative_to_the_first_call() -> None:
    injector = FaultInjector(outages=[(1.0, 3.0)])
    await injector.maybe_fail("a")  # t = 0: before the outage
    await asyncio.sleep(1.5)
    with pytest.raises(InjectedOutage):
        await injector.maybe_fail("a")
    await asyncio.sleep(2.0)  # t = 3.5: over
    await injector.maybe_fail("a")
    assert injector.stats.injected == {"outage": 1}


@pytest.mark.looptime
async def test_latency_is_injected_within_bounds() -> None:
    injector = FaultInjector(seed=3, latency=(0.5, 1.0))
    loop = asyncio.get_running_loop()
    start = loop.time()
    await injector.maybe_fail("a")
    took = loop.time() - start
    assert 0.5 <= took <= 1.0
    assert injector.stats.delayed == pytest.approx(took, abs=0.01)


async def test_wrap_keys_faults_by_job_key_and_call_context_manager_guards_a_call() -> None:
    injector = FaultInjector(seed=2, poison={"3"})

    async def double(x: int) -> int:
        return 2 * x

    with set_testing():
        result = await ab.run_batch(injector.wrap(double), range(5))
    assert result.counts[ab.JobStatus.DEAD_LETTERED] == 1
    assert result["3"].status is ab.JobStatus.DEAD_LETTERED
    assert result["4"].result == 8

    reached = []
    with pytest.raises(InjectedPermanent):
        async with injector.call("3"):
            reached.append(True)
    assert reached == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rates": {"transient": 1.5}},
        {"rates": {"transient": 0.6, "recoverable": 0.6}},
        {"rates": {"sometimes": 0.1}},
        {"latency": (2.0, 1.0)},
        {"outages": [(3.0, 1.0)]},
    ],
)
def test_fault_injector_rejects_bad_configuration(kwargs: dict[str, object]) -> None:
    with pytest.raises(ab.ConfigError):
        FaultInjector(**kwargs)  # type: ignore[arg-type]
