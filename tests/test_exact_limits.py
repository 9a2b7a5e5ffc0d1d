"""Exact limits of shared runs (``ab.SharedRun(exact_limits=...)``), on the real server.

The slot and rate statements are tested first with an injected clock (no
sleeping for leases); then the in-process limiter over them; then real
worker processes on one run, whose calls are counted from a side-channel
ledger written outside the database (tests/shared_job.py).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_shared import (
    LEASE,
    coordinator,
    coordinator_counts,
    finish,
    ledger_lines,
    wait_for,
    worker,
)

import asyncbatch as ab

pytestmark = pytest.mark.timeout(120)


class Clock:
    """Epoch seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def board(pg_url: str) -> AsyncIterator[Any]:
    from asyncbatch._store import RunInfo
    from asyncbatch._store._postgres import PostgresStore
    from asyncbatch._store._postgres_limits import LimitBoard

    async with await PostgresStore.open(pg_url) as store:
        await store.begin_run(RunInfo(run_id="r"))
        yield LimitBoard(store, lease=10.0, clock=Clock())


# ------------------------------------------------------------------ the statements


async def test_slots_are_leased_at_most_n_at_once_and_come_back_when_released(board: Any) -> None:
    await board.make("r", slots={"api": 4}, spacing={})
    a = await board.claim("r", "api", "a", 3)
    b = await board.claim("r", "api", "b", 3)
    assert len(a) == 3
    assert len(b) == 1, "4 slots between them"
    assert await board.claim("r", "api", "c", 1) == []
    await board.release("r", "a", a[:2])
    c = await board.claim("r", "api", "c", 5)
    assert sorted(s for _, s, _ in c) == sorted(s for _, s, _ in a[:2])
    await board.release("r", "a", a[:2])  # a late, repeated release: not a's any more
    assert await board.claim("r", "api", "d", 1) == [], "c still holds them"


async def test_a_dead_holders_slots_come_back_when_its_lease_runs_out(board: Any) -> None:
    await board.make("r", slots={"api": 2}, spacing={})
    dead = await board.claim("r", "api", "dead", 2)
    board._clock.now += 9.9
    assert await board.claim("r", "api", "b", 2) == []
    board._clock.now += 0.2  # its lease (10 s) ran out: no reaper needed
    taken = await board.claim("r", "api", "b", 2)
    assert len(taken) == 2
    assert await board.renew("r", "dead") == set(), "the dead holder's renewal finds nothing"
    await board.release("r", "dead", dead)  # it wakes and releases: the epoch moved on
    assert await board.claim("r", "api", "c", 1) == []


async def test_a_renewal_keeps_a_long_calls_slot_past_its_first_lease(board: Any) -> None:
    await board.make("r", slots={"api": 1}, spacing={})
    held = await board.claim("r", "api", "a", 1)
    for _ in range(3):
        board._clock.now += 6.0
        assert await board.renew("r", "a") == set(held)
    assert await board.claim("r", "api", "b", 1) == []
    await board.drop("r", "a")
    assert len(await board.claim("r", "api", "b", 1)) == 1


async def test_making_the_slots_again_keeps_them_and_a_smaller_limit_removes_the_rest(
    board: Any,
) -> None:
    await board.make("r", slots={"api": 3}, spacing={})
    held = await board.claim("r", "api", "a", 3)
    await board.make("r", slots={"api": 3}, spacing={})  # a second worker joins
    assert await board.claim("r", "api", "b", 1) == [], "its rows changed nothing"
    await board.release("r", "a", held)
    await board.make("r", slots={"api": 2}, spacing={})
    assert len(await board.claim("r", "api", "b", 5)) == 2


async def test_rate_reservations_of_every_worker_are_spaced_per_over_n(board: Any) -> None:
    async def reserve(n: int) -> float:
        first, now, spacing = await board.reserve("r", "api", n)
        assert spacing == 0.1
        return first - now  # seconds until the first reserved start

    await board.make("r", slots={}, spacing={"api": 0.1})
    assert await reserve(3) == 0.0  # starts at 0, .1, .2
    assert await reserve(1) == pytest.approx(0.3)  # another worker, same instant
    board._clock.now += 0.25
    assert await reserve(2) == pytest.approx(0.15), "after the 4th start, 0.4 s from the first"
    board._clock.now += 60.0  # a quiet minute: no burst saved up
    assert await reserve(1) == 0.0
    assert await reserve(1) == pytest.approx(0.1)


async def test_a_finished_runs_limits_are_forgotten(board: Any) -> None:
    await board.make("r", slots={"api": 2}, spacing={"api": 0.5})
    await board.forget("r")
    assert await board.claim("r", "api", "a", 2) == []
    with pytest.raises(LookupError):
        await board.reserve("r", "api", 1)


# ------------------------------------------------------------------ the limiter in one process


async def _exact_deps(store: Any, owner: str, **options: Any) -> tuple[Any, Any]:
    from asyncbatch._deps import Dependencies
    from asyncbatch._deps._global import exact_limits, exact_names

    deps = Dependencies(
        run_id="r", limits=options.get("limits"), rates=options.get("rates"), breakers=None,
        classify=lambda exc: ab.ErrorKind.TRANSIENT, emit=lambda event: None,
    )  # fmt: skip
    names = exact_names(True, options.get("limits"), options.get("rates"))
    limits = exact_limits(store, deps, names, run_id="r", owner=owner, lease=10.0)
    return deps, limits


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Any]:
    from asyncbatch._store import RunInfo
    from asyncbatch._store._postgres import PostgresStore

    async with await PostgresStore.open(pg_url) as store:
        await store.begin_run(RunInfo(run_id="r"))
        yield store


async def test_two_sessions_share_one_bulkhead_and_a_cancelled_wait_leaks_no_slot(
    store: Any,
) -> None:
    inside = peak = 0

    async def call(deps: Any) -> None:
        nonlocal inside, peak
        async with deps.guard("db"):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.005)
            inside -= 1

    sessions = [await _exact_deps(store, owner, limits={"db": 3}) for owner in ("a", "b")]
    async with asyncio.TaskGroup() as tg:
        services = [tg.create_task(limits.run()) for _, limits in sessions]
        await asyncio.gather(*(call(deps) for deps, _ in sessions for _ in range(20)))
        assert peak == 3, "3 at once across both, not 3 each"
        # A call waiting for a slot is cancelled (a timeout): nothing leaks.
        (deps_a, _), (deps_b, _) = sessions
        hold = asyncio.Event()
        held = 0

        async def holder() -> None:
            nonlocal held
            async with deps_a.guard("db"):
                held += 1
                await hold.wait()

        holders = [tg.create_task(holder()) for _ in range(3)]
        while held < 3:  # noqa: ASYNC110  (three tasks to enter: a counter is plainer)
            await asyncio.sleep(0.001)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await call(deps_b)
        hold.set()
        await asyncio.gather(*holders)
        peak = 0
        await asyncio.gather(*(call(deps_b) for _ in range(10)))
        assert peak == 3, "every slot came back"
        for service in services:
            service.cancel()


class FakeBoard:
    """The slot statements in memory: what a session sends, and N slots."""

    def __init__(self, n: int) -> None:
        self.free = list(range(n))
        self.claims = 0
        self.released: list[Any] = []

    async def make(self, run_id: str, **kinds: Any) -> None:
        pass

    async def claim(self, run_id: str, dep: str, owner: str, n: int) -> list[Any]:
        self.claims += 1
        got, self.free = self.free[:n], self.free[n:]
        return [(dep, s, 1) for s in got]

    async def release(self, run_id: str, owner: str, slots: list[Any]) -> None:
        self.released += slots
        self.free += [s for _, s, _ in slots]


@pytest.mark.looptime
async def test_a_slot_passes_to_the_next_call_only_while_it_is_fresh() -> None:
    from asyncbatch._deps._global import REUSE, ExactLimits

    board = FakeBoard(1)
    limits = ExactLimits(board, "r", "me")  # type: ignore[arg-type]
    limit = limits.add("api", 1, None)
    service = asyncio.create_task(limits.run())
    slot = await limit.acquire()
    limit.release(slot)  # nobody waits: kept for the next call, no round trip
    assert await limit.acquire() == slot
    assert board.claims == 1
    assert board.released == []
    limit.release(slot)
    await asyncio.sleep(REUSE)  # too old to pass on: back to the database
    assert board.released == [slot]
    assert await limit.acquire() == slot
    assert board.claims == 2, "leased again"
    service.cancel()


async def test_an_exact_name_without_a_limit_or_an_adaptive_one_is_a_config_error() -> None:
    from asyncbatch._deps._global import exact_names

    with pytest.raises(ab.ConfigError, match="no limits= or rates= entry"):
        exact_names(["api"], {"db": 2}, None)
    with pytest.raises(ab.ConfigError, match="adaptive"):
        exact_names(["db"], {"db": ab.Adaptive()}, None)
    assert exact_names(True, {"db": ab.Adaptive(), "x": 2}, {"api": ab.Rate(5)}) == ["api", "x"]
    with pytest.raises(ab.ConfigError, match="exact_limits"):
        ab.SharedRun(exact_limits="api")  # type: ignore[arg-type]


async def test_a_run_naming_an_unlimited_dependency_exact_fails_before_it_starts(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHARED_LEDGER", str(tmp_path / "ledger"))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import shared_job

    with pytest.raises(ab.ConfigError, match="'payments', which has no limits="):
        await ab.run_batch(
            shared_job.job, range(3), store=pg_url, run_id="bad", limits={"db": 2},
            shared=ab.SharedRun(exact_limits=["payments"]),
        )  # fmt: skip
    assert not (tmp_path / "ledger").exists(), "no job ran"


# ------------------------------------------------------------------ real processes


def _intervals(ledger: Path) -> list[tuple[float, float, int]]:
    """``(start, end, pid)`` of every call (start and done lines are inside the guard)."""
    started: dict[int, tuple[float, int]] = {}
    calls = []
    for kind, key, pid, t in ledger_lines(ledger):
        if kind == "start":
            started[key] = (t, pid)
        elif kind == "done":
            t0, p = started.pop(key)
            calls.append((t0, t, p))
    return calls


def _peak(calls: list[tuple[float, float, int]], since: float = 0.0, until: float = 1e18) -> int:
    """Most calls in flight at once, across processes, among those starting in [since, until)."""
    events = sorted(
        [(t0, 1) for t0, _, _ in calls if since <= t0 < until]
        + [(t1, -1) for t0, t1, _ in calls if since <= t0 < until]
    )  # an end at the same instant as a start comes first
    inside = peak = 0
    for _, step in events:
        inside += step
        peak = max(peak, inside)
    return peak


def _most_in_a_window(starts: list[float], window: float) -> int:
    starts = sorted(starts)
    most, j = 0, 0
    for i, t in enumerate(starts):
        while starts[j] <= t - window:
            j += 1
        most = max(most, i - j + 1)
    return most


def _three_processes(
    pg_url: str, run_id: str, n: int, ledger: Path, *flags: str, **env: str
) -> Any:
    workers = [worker(pg_url, run_id, ledger, **env) for _ in range(2)]  # they wait for it
    coord = coordinator(pg_url, run_id, n, 5, ledger, *flags, **env)
    counts = coordinator_counts(finish(coord, 90))
    for w in workers:
        finish(w)
    assert counts == {"succeeded": n}
    return _intervals(ledger), {coord.pid, *(w.pid for w in workers)}


def test_three_workers_never_exceed_an_exact_bulkhead_of_4(pg_url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    calls, pids = _three_processes(pg_url, "ex4", 300, ledger, "limited", "exact",
                                   SHARED_SLEEP="0.02")  # fmt: skip
    assert {p for _, _, p in calls} == pids, "all three processes called"
    assert _peak(calls) == 4, "never more than 4 calls in flight across processes, and 4 used"


def test_without_exact_limits_the_bulkhead_is_split_and_can_exceed_4_in_all(
    pg_url: str, tmp_path: Path
) -> None:
    # The split (ceil(4 / 3) = 2 each, the whole 4 until a worker's first heartbeat)
    # is not a global limit: the measurement above would see it.
    ledger = tmp_path / "ledger"
    calls, _ = _three_processes(pg_url, "split4", 400, ledger, "limited", SHARED_SLEEP="0.03")
    assert _peak(calls) > 4


def test_three_workers_keep_an_exact_rate_in_every_second(pg_url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    rate = 20
    calls, _ = _three_processes(pg_url, "rate20", 100, ledger, "limited", "rated", "exact",
                                SHARED_SLEEP="0.01", SHARED_RATE=str(rate),
                                SHARED_CONCURRENCY="4")  # fmt: skip
    starts = sorted(t0 for t0, _, _ in calls)
    assert len({p for _, _, p in calls}) >= 2
    # Reserved starts are 1/20 s apart on the database clock, and no call starts
    # before its own; one that starts late (a busy machine: the ledger line is
    # written after the guard) can land in the next window. The README's bound:
    # one call more per 1/rate of lateness; allow two (100 ms late).
    assert _most_in_a_window(starts, 1.0) <= rate + 2
    assert _peak(calls) <= 4
    spread = starts[-1] - starts[0]
    assert spread >= (len(starts) - 1) / rate * 0.98, "the run kept to the rate overall"


def test_a_killed_workers_slots_come_back_when_its_lease_runs_out(
    pg_url: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    env = {"SHARED_SLEEP": "0.3", "SHARED_CONCURRENCY": "8"}
    victim = worker(pg_url, "exkill", ledger, **env)
    coord = coordinator(pg_url, "exkill", 80, 1, ledger, "limited", "exact", **env)

    def victim_inside() -> int:
        inside = 0
        for kind, _, pid, _ in ledger_lines(ledger):
            if pid == victim.pid:
                inside += {"start": 1, "done": -1}.get(kind, 0)
        return inside

    wait_for(lambda: victim_inside() >= 1)
    held = victim_inside()
    victim.send_signal(signal.SIGKILL)
    killed = time.time()
    victim.communicate(timeout=30)
    counts = coordinator_counts(finish(coord, 90))
    assert counts == {"succeeded": 80}, "the run finished: the slots came back"
    calls = [c for c in _intervals(ledger) if c[2] == coord.pid]
    # Until the dead worker's lease runs out its slots stay taken...
    assert _peak(calls, killed + 0.1, killed + LEASE - 0.2) <= 4 - held
    # ...and then the coordinator has all 4.
    assert _peak(calls, killed + LEASE + 0.5) == 4
