"""Exact limits: a dependency's bulkhead and rate limit held across every worker of a shared run.

By default a shared run splits each bulkhead and rate limit among its live
workers (`Dependencies.share`). With ``ab.SharedRun(exact_limits=...)`` the
named dependencies are limited by the database instead (`LimitBoard`):

- a call through the guard leases one of the dependency's N slot rows
  before it starts and frees it when it ends; a worker's slot leases are
  renewed with its heartbeat, so a dead worker's slots come back when its
  lease runs out;
- a call then takes a start time reserved on the dependency's rate row:
  starts of every worker are ``per / n`` seconds apart on the database clock.

In each worker, ONE task per dependency talks to the database for all the
calls waiting there (`ExactLimits.run`): it leases as many slots, or
reserves as many starts, as calls wait, in one statement; a call that finds
no free slot waits while that task polls with backoff (1 ms doubling to
25 ms, woken early when this worker frees a slot). A call ending only queues
its slot for release (`ExactLimit.release` does not wait): one statement
frees every slot queued meanwhile. Waiting calls are cancellable at any
point (timeouts, deadlines, an abort); a slot handed to a call that was
cancelled meanwhile is released, a start reserved for it is lost (the rate
only ever errs low).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from asyncbatch._errors import ConfigError, StoreError

from ._adaptive import Adaptive
from ._rate import Rate

if TYPE_CHECKING:
    from asyncbatch._store._postgres import PostgresStore
    from asyncbatch._store._postgres_limits import LimitBoard, Slot

    from ._dependencies import Dependencies

__all__ = ["ExactLimit", "ExactLimits", "exact_limits", "exact_names", "forget_limits"]

REUSE = 0.05
"""Seconds a slot leased from the database may pass from call to call in one worker."""
_POLL_MIN, _POLL_MAX = 0.001, 0.02  # backoff while no slot is free (< YIELD)
_RESERVE_MAX = 64  # starts reserved by one statement


def exact_names(
    spec: bool | Collection[str],
    limits: Mapping[str, int | Adaptive] | None,
    rates: Mapping[str, Rate] | None,
) -> list[str]:
    """The dependencies whose limits are exact under ``SharedRun(exact_limits=spec)``.

    Raises:
        ConfigError: a named dependency has neither ``limits=`` nor ``rates=``,
            or its bulkhead is `Adaptive` (each process learns its own).
    """
    limits = dict(limits or {})
    rates = dict(rates or {})
    if spec is False:
        return []
    if spec is True:
        return sorted(
            n for n in {*limits, *rates} if n in rates or not isinstance(limits[n], Adaptive)
        )
    names = sorted(set(spec))
    for name in names:
        if name not in limits and name not in rates:
            raise ConfigError(
                f"SharedRun exact_limits names {name!r}, which has no limits= or rates= entry; "
                f"HINT: limits={{{name!r}: 10}} or rates={{{name!r}: ab.Rate(50)}}"
            )
        if isinstance(limits.get(name), Adaptive):
            raise ConfigError(
                f"limits[{name!r}] is adaptive, which each worker learns for itself: it "
                "cannot be an exact limit; HINT: give it a fixed int, or leave it out of "
                "exact_limits"
            )
    return names


class ExactLimit:
    """One dependency's exact limits in one worker session (what its guard awaits)."""

    __slots__ = ("_claim_wake", "_claimed", "_idle", "_limits", "_reserve_wake",
                 "_slot_waiters", "_start_waiters", "name", "rate", "slots")  # fmt: skip

    def __init__(self, limits: ExactLimits, name: str, slots: int | None, rate: Rate | None):
        self._limits = limits
        self.name = name
        self.slots = slots
        self.rate = rate
        self._slot_waiters: deque[asyncio.Future[Slot]] = deque()
        self._start_waiters: deque[asyncio.Future[float]] = deque()
        self._claim_wake = asyncio.Event()
        self._reserve_wake = asyncio.Event()
        self._claimed: dict[Slot, float] = {}
        """Slots this session holds → loop time it leased each from the database."""
        self._idle: dict[Slot, asyncio.TimerHandle] = {}
        """Held slots no call uses right now → the timer that frees each."""

    async def acquire(self) -> Slot | None:
        """Wait for a slot (a bulkhead), then for a start time (a rate); the slot, or None."""
        slot = self._reuse() if self._idle else None
        if slot is None and self.slots:
            slot = await self._wait(self._slot_waiters, self._claim_wake)
        if self.rate is not None:
            try:
                at = await self._wait(self._start_waiters, self._reserve_wake)
                loop = asyncio.get_running_loop()
                if at > loop.time():
                    await asyncio.sleep(at - loop.time())
            except BaseException:
                if slot is not None:
                    self.release(slot)
                raise
        return slot

    def release(self, slot: Slot) -> None:
        """The call ended: pass its slot on, or free it (queued; this does not wait).

        A slot leased less than `REUSE` seconds ago goes to the next call here:
        one waiting, or one that comes before that age (it stays this
        worker's, under the same lease): no round trip. Older ones go back to
        the database, where the other workers' demand is served first.
        """
        since = self._claimed.get(slot)
        if since is not None:
            loop = asyncio.get_running_loop()
            left = since + REUSE - loop.time()
            if left > 0:
                if not _hand(self._slot_waiters, slot):
                    self._idle[slot] = loop.call_later(left, self._free, slot)
                return
        self._free(slot)

    def _reuse(self) -> Slot | None:
        """A slot this worker holds and no call uses (no round trip), if one is fresh.

        Its age is checked again here, not only by its timer: after the
        process was frozen (SIGSTOP) the timer may not have run yet, and the
        slot may be another worker's by now.
        """
        now = asyncio.get_running_loop().time()
        while self._idle:
            slot, timer = self._idle.popitem()
            timer.cancel()
            if now - self._claimed.get(slot, -REUSE) < REUSE:
                return slot
            self._free(slot)
        return None

    def _free(self, slot: Slot) -> None:
        self._idle.pop(slot, None)
        self._claimed.pop(slot, None)
        self._limits._release(slot)

    def _close(self) -> None:
        for timer in self._idle.values():
            timer.cancel()
        self._idle.clear()

    async def _wait(self, waiters: deque[asyncio.Future[Any]], wake: asyncio.Event) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        wake.set()
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and waiters is self._slot_waiters:
                self.release(fut.result())  # handed over just as we were cancelled
            fut.cancel()
            raise


def _live(waiters: deque[asyncio.Future[Any]]) -> int:
    while waiters and waiters[0].done():
        waiters.popleft()
    return sum(1 for f in waiters if not f.done())


def _hand(waiters: deque[asyncio.Future[Any]], value: Any) -> bool:
    while waiters:
        fut = waiters.popleft()
        if not fut.done():
            fut.set_result(value)
            return True
    return False


class ExactLimits:
    """Every exact limit of one worker session, and the tasks that serve them.

    Args:
        board: the slot and rate statements.
        run_id: the run.
        owner: the session's owner name (its slot leases carry it).
    """

    def __init__(self, board: LimitBoard, run_id: str, owner: str) -> None:
        self.board = board
        self.run_id = run_id
        self.owner = owner
        self.limits: dict[str, ExactLimit] = {}
        self._pending: list[Slot] = []
        self._release_wake = asyncio.Event()
        self._skew = _Skew()
        self.round_trips = 0
        """Statements sent (claims, releases, reservations): the cost, for benchmarks."""

    def add(self, name: str, slots: int | None, rate: Rate | None) -> ExactLimit:
        limit = self.limits[name] = ExactLimit(self, name, slots, rate)
        return limit

    async def run(self) -> None:
        """Create the run's slot and rate rows, then serve every limit (a service task)."""
        await self.board.make(
            self.run_id,
            slots={n: x.slots for n, x in self.limits.items() if x.slots},
            spacing={n: x.rate.per / x.rate.n for n, x in self.limits.items() if x.rate},
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._releaser())
            for limit in self.limits.values():
                if limit.slots:
                    tg.create_task(self._claimer(limit))
                if limit.rate is not None:
                    tg.create_task(self._reserver(limit))

    async def renew(self) -> None:
        """Renew this session's slot leases (the session's heartbeat, every quarter lease)."""
        self.round_trips += 1
        await self.board.renew(self.run_id, self.owner)

    async def aclose(self) -> None:
        """The session ends: free every slot it still holds (bounded by the caller)."""
        self._pending.clear()
        for limit in self.limits.values():
            limit._close()
        try:
            await self.board.drop(self.run_id, self.owner)
        except (StoreError, OSError):
            pass  # the leases run out by themselves

    def _release(self, slot: Slot) -> None:
        self._pending.append(slot)
        self._release_wake.set()

    async def _releaser(self) -> None:
        delay = _POLL_MIN
        while True:
            await self._release_wake.wait()
            self._release_wake.clear()
            batch, self._pending = self._pending, []
            try:
                self.round_trips += 1
                await self.board.release(self.run_id, self.owner, batch)
            except (StoreError, OSError):
                self._pending[:0] = batch  # again later; meanwhile the leases hold them
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                self._release_wake.set()
                continue
            delay = _POLL_MIN
            for name in {dep for dep, _, _ in batch}:
                limit = self.limits.get(name)
                if limit is not None and limit._slot_waiters:
                    limit._claim_wake.set()  # freed here: try again at once

    async def _claimer(self, limit: ExactLimit) -> None:
        assert limit.slots is not None
        waiters, wake = limit._slot_waiters, limit._claim_wake
        delay = _POLL_MIN
        while True:
            wanted = min(_live(waiters), limit.slots)
            if not wanted:
                wake.clear()
                await wake.wait()
                delay = _POLL_MIN
                continue
            wake.clear()
            # A StoreError (the store already retried a lost connection) ends the
            # session, as a failed chunk claim does; its guards' waits are cancelled.
            self.round_trips += 1
            got = await self.board.claim(self.run_id, limit.name, self.owner, wanted)
            now = asyncio.get_running_loop().time()
            for slot in got:
                limit._claimed[slot] = now
                if not _hand(waiters, slot):
                    limit.release(slot)  # its call was cancelled meanwhile
            if len(got) >= wanted:
                delay = _POLL_MIN
                continue
            # None free (or fewer than wanted): poll again after a jittered backoff,
            # or at once when this worker frees a slot.
            try:
                await asyncio.wait_for(wake.wait(), delay * (0.5 + random.random()))
            except TimeoutError:
                pass
            delay = min(delay * 2, _POLL_MAX)

    async def _reserver(self, limit: ExactLimit) -> None:
        waiters, wake = limit._start_waiters, limit._reserve_wake
        loop = asyncio.get_running_loop()
        while True:
            wanted = min(_live(waiters), _RESERVE_MAX)
            if not wanted:
                wake.clear()
                await wake.wait()
                continue
            self.round_trips += 1
            first, now, spacing = await self.board.reserve(self.run_id, limit.name, wanted)
            at = first + self._skew.sample(loop.time() - now)
            for i in range(wanted):
                if not _hand(waiters, at + i * spacing):
                    break  # cancelled meanwhile: its start is lost (the rate errs low)


class _Skew:
    """This loop's clock minus the database's, as late as an answer can show it.

    An answer read at loop time ``t`` says the database clock read ``now``
    before: ``t - now`` is the clocks' offset plus the answer's way back.
    The least of recent samples is still at or above the true offset, so a
    start put at ``database start + estimate`` is never early on the database
    clock, and an answer that arrives late does not make its starts late
    (and bunched with the next worker's). Recent only: clocks drift.
    """

    __slots__ = ("_samples",)

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=32)

    def sample(self, offset: float) -> float:
        self._samples.append(offset)
        return min(self._samples)


def exact_limits(
    store: PostgresStore,
    deps: Dependencies,
    names: list[str],
    *,
    run_id: str,
    owner: str,
    lease: float,
) -> ExactLimits | None:
    """Make ``names`` of ``deps`` exact for one session (None when there are none).

    Their guards then wait on the database (`ExactLimit.acquire`) instead of
    a split of the limit: the local bulkhead keeps the whole N (this worker
    never asks for more), the local rate limiter goes.
    """
    if not names:
        return None
    from asyncbatch._store._postgres_limits import LimitBoard

    limits = ExactLimits(LimitBoard(store, lease=lease), run_id, owner)
    for name in names:
        dep = deps._dependency(name)
        slots = dep.limit if dep.adaptive is None else None
        dep.exact = limits.add(name, slots, dep.rate)
        dep.rate_limiter = None
    return limits


async def forget_limits(store: PostgresStore, run_id: str) -> None:
    """Delete a finished run's slot and rate rows."""
    from asyncbatch._store._postgres_limits import LimitBoard

    await LimitBoard(store, lease=0).forget(run_id)
