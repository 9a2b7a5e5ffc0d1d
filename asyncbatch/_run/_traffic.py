"""Traffic control inside one run: the retry budget's gate and the adaptive concurrency limit.

The engine builds a `Traffic` only when the run asks for one of its controls
(``retry_budget=``, ``concurrency=ab.Adaptive(...)``), and `Workers.pick` then
runs the general ``full`` loop, which tells it when a job starts and runs
each attempt through `Traffic.attempt`; runs without these options never
touch this module, so their hot path is unchanged.

The adaptive limit (`AdaptiveLimit`, algorithm in `ab.Adaptive`) learns from
every attempt that succeeds or fails with an overload signal, and moves the
run's workers through `Control.limit_to`: a lower limit lets the attempts in
flight finish and starts no new one until fewer run.

The retry gate sits where a parked retry comes due (``Outcomes._unpark``):
a retry over the budget is *held* there, still parked (no worker, no slot),
in the order it came due, until the budget has room: when a new job starts
(a call adds to the budget) or when old retries leave the sliding window (a
timer set for that moment). Its deadline keeps running while it is held.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from asyncbatch._deps._adaptive import AdaptiveLimit, overloaded
from asyncbatch._observe._events import ConcurrencyChanged, Event
from asyncbatch._policy._retry_budget import RetryAllowance, RetryBudget

if TYPE_CHECKING:
    from asyncbatch._observe._otel import AttemptScope

    from ._control import Control
    from ._entry import Entry
    from ._hedge import Hedging

__all__ = ["RetryGate", "Traffic"]


class _Hold:
    """What holds a retry at the gate: its place in line and its deadline timer."""

    __slots__ = ("deadline", "entry", "gate")

    def __init__(self, gate: RetryGate, entry: Entry, deadline: asyncio.TimerHandle | None) -> None:
        self.gate = gate
        self.entry = entry
        self.deadline = deadline

    def cancel(self) -> None:
        self.gate._held.pop(self.entry, None)
        if self.deadline is not None:
            self.deadline.cancel()


class RetryGate:
    """Lets retries go while the `RetryBudget` has room; holds the others parked.

    Args:
        policy: the budget.
        loop: the run's loop (its clock times the window).
        release: hands a retry that may go back to the outcome path
            (``Outcomes._unpark``), which asks `passes` again and gets True.
        expire: ends a held retry at its deadline (``Outcomes._expire``).
    """

    __slots__ = ("_cleared", "_expire", "_held", "_loop", "_release", "_timer", "allowance")

    def __init__(
        self,
        policy: RetryBudget,
        loop: asyncio.AbstractEventLoop,
        *,
        release: Callable[[Entry], None],
        expire: Callable[[Entry], None],
    ) -> None:
        self.allowance = RetryAllowance(policy)
        self._loop = loop
        self._release = release
        self._expire = expire
        self._held: dict[Entry, None] = {}  # insertion order: the order they came due
        self._cleared: set[Entry] = set()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def held(self) -> int:
        """Retries held at the gate right now."""
        return len(self._held)

    def called(self) -> None:
        """A job started its first attempt: the budget grows, a held retry may go."""
        self.allowance.called(self._loop.time())
        if self._held:
            self._let_go()

    def passes(self, entry: Entry) -> bool:
        """A retry came due: True when it may go now, False when the gate holds it.

        A held retry's ``entry.timer`` becomes its place at the gate (cancel
        it to take the retry out, as for any parked job).
        """
        if entry in self._cleared:
            self._cleared.discard(entry)
            return True
        now = self._loop.time()
        allowance = self.allowance
        if not self._held and allowance.allows(now):
            allowance.spend(now)
            return True
        allowance.total["held"] += 1
        deadline = None
        if entry.deadline_at is not None:
            deadline = self._loop.call_at(entry.deadline_at, self._expire, entry)
        self._held[entry] = None
        entry.timer = _Hold(self, entry, deadline)
        self._schedule(now)
        return False

    def close(self) -> None:
        """The run's work stopped: no more timers (held entries are let go by the engine)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def state(self) -> dict[str, Any]:
        """The budget's whole-run counts, for the report."""
        return self.allowance.state()

    def _let_go(self) -> None:
        now = self._loop.time()
        allowance = self.allowance
        while self._held and allowance.allows(now):
            entry = next(iter(self._held))
            del self._held[entry]
            allowance.spend(now)
            self._cleared.add(entry)
            self._release(entry)
        if self._held:
            self._schedule(now)

    def _schedule(self, now: float) -> None:
        if self._timer is None:
            self._timer = self._loop.call_at(self.allowance.next_room(now), self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._held:
            self._let_go()


class Traffic:
    """The traffic controls of one run (built by the engine when any is asked for).

    Args:
        loop: the run's loop.
        retry_gate: the retry budget's gate, or None.
        adaptive: the run's adaptive concurrency limit, or None.
        hedging: the run's hedging (``hedge=``), or None.
        control: the run's live controls (an adaptive limit moves its workers).
        emit: where `ConcurrencyChanged` events go.
        run_id: the run's id, for events.
    """

    __slots__ = (
        "_emit",
        "_loop",
        "_reported",
        "_reported_at",
        "adaptive",
        "control",
        "hedging",
        "in_flight",
        "retry_gate",
        "run_id",
    )

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        retry_gate: RetryGate | None,
        adaptive: AdaptiveLimit | None,
        hedging: Hedging | None = None,
        control: Control,
        emit: Callable[[Event], None],
        run_id: str,
    ) -> None:
        self._loop = loop
        self.retry_gate = retry_gate
        self.adaptive = adaptive
        self.hedging = hedging
        self.control = control
        self._emit = emit
        self.run_id = run_id
        self.in_flight = 0
        self._reported = adaptive.current if adaptive is not None else 0
        self._reported_at = -math.inf
        if adaptive is not None:
            control.on_resize = self._resized

    def started(self, entry: Entry) -> None:
        """A job is admitted to its first attempt (called once per job, by the full loop)."""
        if self.retry_gate is not None:
            self.retry_gate.called()

    async def attempt(
        self, call: Callable[[], Awaitable[Any]], scope: AttemptScope | None = None
    ) -> Any:
        """Run one attempt's ``call()`` (hedged, with ``hedge=``); an adaptive limit
        learns from how it ended."""
        if self.hedging is not None:
            call = functools.partial(self.hedging.run, call, self._loop.time, scope)
        adaptive = self.adaptive
        if adaptive is None:
            return await call()
        loop = self._loop
        self.in_flight += 1
        start = loop.time()
        overload: bool | None = None
        try:
            result = await call()
            overload = False
            return result
        except Exception as exc:
            if overloaded(exc):
                overload = True
            raise  # other failures say nothing about load: no sample
        finally:
            in_flight = self.in_flight
            self.in_flight -= 1
            if overload is not None:
                now = loop.time()
                changed = adaptive.sample(
                    now - start, overload=overload, in_flight=in_flight, now=now
                )
                if changed is not None:
                    self._moved(*changed, now)

    def _moved(self, limit: int, reason: str, now: float) -> None:
        self.control.limit_to(limit)
        if reason != "grow" or now - self._reported_at >= 1.0:
            self._reported_at = now
            previous, self._reported = self._reported, limit
            self._emit(
                ConcurrencyChanged(
                    run_id=self.run_id, dependency="", limit=limit, previous=previous, reason=reason
                )
            )

    def _resized(self, n: int) -> None:
        """``Batch.resize(n)``: the adaptive limit starts again from there."""
        assert self.adaptive is not None
        self.adaptive.set(n)
        self.control.limit_to(self.adaptive.current)

    def close(self) -> None:
        """The work stopped."""
        if self.retry_gate is not None:
            self.retry_gate.close()

    def state(self) -> dict[str, Any]:
        """What the report shows under ``traffic``."""
        out: dict[str, Any] = {}
        if self.retry_gate is not None:
            out["retry_budget"] = self.retry_gate.state()
        if self.adaptive is not None:
            out["concurrency"] = self.adaptive.state()
        if self.hedging is not None:
            out["hedge"] = self.hedging.state()
        return out
