"""`Circuit`: the live state of one `Breaker` guarding one dependency in one run.

The state machine is aiobreaker's ``CircuitBreaker`` (closed → open → half-open
→ closed, consecutive-failure counter, listeners). asyncbatch wraps its flaws:

- aiobreaker raises ``CircuitBreakerError`` from the call that trips it; here
  outcomes are *recorded* after the call, so the caller always sees the
  original exception (and the classifier classifies that one).
- aiobreaker's half-open state admits any number of concurrent calls; here
  at most ``half_open_probes`` run at once, the others are rejected.
- aiobreaker times the open period with the wall clock (``datetime.utcnow()``
  against ``datetime.now()``: wrong by hours under a non-UTC ``TZ``). Here the
  open period is timed on the event loop's monotonic clock, so virtual time
  (looptime) drives it, and `Circuit` moves aiobreaker to half-open itself;
  aiobreaker's own timing is never consulted.

A failure-rate breaker (``Breaker(failure_rate=..., window=...)``) keeps
aiobreaker as the state machine but not as the judge: aiobreaker only counts
consecutive failures, has no sliding window, no notion of a slow call and
closes on the first successful half-open call. Here a `Window` of counted
outcomes decides, and `Circuit` moves aiobreaker with ``open()``/``close()``;
half-open admits exactly ``half_open_probes`` probes and judges their shares
together (a consecutive-failure breaker keeps "the first probe decides").

Jobs parked behind a circuit (``on_open="park"``) do not poll it: each waits
on `Circuit.wait` and is woken once, when the circuit can admit it. Closing
wakes every waiter; the end of the open period, or a probe that finishes
while the circuit stays half-open, wakes as many as there are free probe
slots; re-opening leaves them waiting for the new open period. A backstop
check every ``reset_timeout`` wakes the free slots' worth again in case a
woken job never came back to probe. While jobs wait, the circuit reports
how many with `JobsWaiting` events (at most one a second when the number
changes, and once per ``reset_timeout`` while it stays above zero).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, Literal

import aiobreaker

from asyncbatch._errors import CircuitOpen, qualname
from asyncbatch._observe._events import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerOpened,
    Event,
    JobsWaiting,
)

from ._breaker import Breaker
from ._window import Window

__all__ = ["PROBE_RECHECK", "REPORT_EVERY", "Circuit", "Ticket", "Waiter"]

Ticket = tuple[int, bool, float]
"""What `Circuit.admit` hands out: (generation, is_probe, admitted at: loop time or 0)."""


PROBE_RECHECK = 0.1
"""The ``retry_in`` hint of a call rejected while the half-open probes are busy (capped
at the breaker's ``reset_timeout``). Parked jobs do not use it: they wait on the circuit."""

REPORT_EVERY = 1.0
"""Seconds (loop clock) between two `JobsWaiting` reports of a changing number of waiters."""

# Loop timers may fire up to one clock tick early (asyncio compares against
# ``time() + clock_resolution``); a call woken at the end of the open period
# must not be rejected for that tick.
_SLACK = max(time.get_clock_info("monotonic").resolution, 1e-6)

_CLOSED = aiobreaker.CircuitBreakerState.CLOSED
_OPEN = aiobreaker.CircuitBreakerState.OPEN
_HALF_OPEN = aiobreaker.CircuitBreakerState.HALF_OPEN


def _ok() -> None:
    return None


def _replay(exc: BaseException) -> None:
    raise exc


@contextlib.contextmanager
def _quiet_utcnow() -> Iterator[None]:
    """aiobreaker stamps an opening with datetime.utcnow(), deprecated on 3.12+:
    silence exactly that warning from that module, around the calls that open."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"datetime\.datetime\.utcnow",
            category=DeprecationWarning,
            module=r"aiobreaker\b",
        )
        yield


class _Listener:
    """aiobreaker listener (duck-typed): notes state changes for `Circuit`."""

    __slots__ = ("_circuit",)

    def __init__(self, circuit: Circuit) -> None:
        self._circuit = circuit

    def before_call(self, breaker: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def success(self, breaker: Any) -> None:
        pass

    def failure(self, breaker: Any, exception: BaseException) -> None:
        pass

    def state_change(self, breaker: Any, old: Any, new: Any) -> None:
        self._circuit._changed(old.state if old is not None else None, new.state)


class Waiter:
    """One job parked on a circuit (`Circuit.wait`); `cancel` takes it off the list."""

    __slots__ = ("_circuit", "_wake", "live")

    def __init__(self, circuit: Circuit, wake: Callable[[], None]) -> None:
        self._circuit = circuit
        self._wake = wake
        self.live = True

    def cancel(self) -> None:
        """Stop waiting (the job ended otherwise: deadline, abort). Idempotent."""
        if self.live:
            self.live = False
            self._circuit._left(cancelled=True)

    def _fire(self) -> None:
        self.live = False
        self._wake()


class Circuit:
    """The live state of one `Breaker` guarding one dependency in one run.

    The guard asks `admit` before a call (it raises `CircuitOpen` or returns
    a ticket) and hands the ticket back to `record` after it. Transitions
    become `BreakerOpened` / `BreakerHalfOpen` / `BreakerClosed` events via
    ``emit``. A rejected job can `wait` to be woken once it may be admitted.

    Args:
        policy: the `Breaker`.
        dependency: the dependency's name (events and `CircuitOpen` carry it).
        run_id: the run's id, for events.
        emit: called with each event; must not block.
    """

    __slots__ = (
        "_cb",
        "_changed_since",
        "_emit",
        "_error",
        "_generation",
        "_opened_at",
        "_opening",
        "_pending",
        "_probes",
        "_report",
        "_reported",
        "_reported_at",
        "_time_open",
        "_timer",
        "_trial",
        "_waiters",
        "_waiting",
        "_window",
        "dependency",
        "policy",
        "run_id",
        "trips",
    )

    def __init__(
        self, policy: Breaker, dependency: str, *, run_id: str, emit: Callable[[Event], None]
    ) -> None:
        self.policy = policy
        self.dependency = dependency
        self.run_id = run_id
        self.trips = 0
        self._emit = emit
        self._cb = aiobreaker.CircuitBreaker(
            # A rate-only breaker never trips on consecutive failures.
            fail_max=policy.fail_max if policy.fail_max is not None else sys.maxsize,
            # Not used for timing (see the module docstring), kept for aiobreaker's repr/API.
            timeout_duration=timedelta(seconds=policy.reset_timeout),
            listeners=[_Listener(self)],
            name=policy.name or dependency,
        )
        # Bumped on every transition: outcomes of calls admitted under an older
        # generation no longer speak for the current state.
        self._generation = 0
        self._opened_at = 0.0  # loop time the circuit last opened
        self._changed_since = 0.0  # loop time it last left the closed state
        self._time_open = 0.0  # finished open/half-open periods, seconds
        self._probes = 0  # probes in flight while half-open
        self._error: BaseException | None = None  # the failure being recorded
        self._window: Window | None = None
        if policy.window is not None:
            w = policy.window
            self._window = Window(size=w) if isinstance(w, int) else Window(span=w)
        self._trial: list[tuple[bool, bool]] = []  # (failed, slow) of this half-open's probes
        self._opening: tuple[str, float | None, float | None] | None = None  # why it opens
        self._pending: list[Event] = []
        self._waiters: deque[Waiter] = deque()  # parked jobs, oldest first (some cancelled)
        self._waiting = 0  # live waiters
        self._timer: asyncio.TimerHandle | None = None  # next check for waiters to wake
        self._report: asyncio.TimerHandle | None = None  # next JobsWaiting report
        self._reported = 0  # the waiting count last reported
        self._reported_at = float("-inf")

    def __repr__(self) -> str:
        window = f" {self._window!r}" if self._window is not None else ""
        return (
            f"<Circuit {self.dependency!r} {self.state} "
            f"failures={self._cb.fail_counter}/{self.policy.fail_max}{window} trips={self.trips}>"
        )

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        """``"closed"``, ``"open"`` or ``"half_open"``."""
        current = self._cb.current_state
        if current is _CLOSED:
            return "closed"
        return "open" if current is _OPEN else "half_open"

    def time_open(self) -> float:
        """Seconds (loop clock) the circuit spent open or half-open in this run so far."""
        if self._cb.current_state is _CLOSED:
            return self._time_open
        return self._time_open + (_now() - self._changed_since)

    def retry_in(self) -> float | None:
        """Seconds until a call may be admitted, or None when one would be now.

        Raises nothing and changes nothing: a cheap check before waiting on a
        bulkhead or rate limit.
        """
        current = self._cb.current_state
        if current is _CLOSED:
            return None
        if current is _OPEN:
            remaining = self._opened_at + self.policy.reset_timeout - _now()
            if remaining > _SLACK:
                return remaining
            return None  # the open period is over: the next call may probe
        if self._probes + len(self._trial) >= self.policy.half_open_probes:
            return min(self.policy.reset_timeout, PROBE_RECHECK)
        return None

    def admit(self) -> Ticket:
        """Let a call through or reject it.

        Returns:
            The ticket to hand to `record`: (generation, is_probe).

        Raises:
            CircuitOpen: the circuit is open, or half-open with every probe
                busy; ``retry_in`` says when to ask again.
        """
        current = self._cb.current_state
        since = _now() if self.policy.slow_call is not None else 0.0
        if current is _CLOSED:
            return self._generation, False, since
        if current is _OPEN:
            remaining = self._opened_at + self.policy.reset_timeout - _now()
            if remaining > _SLACK:
                raise CircuitOpen(self.dependency, remaining)
            self._cb.half_open()
            self._flush()
        # A rate breaker judges exactly half_open_probes counted probes per half-open
        # period (judged ones included); a consecutive one only bounds them at once.
        if self._probes + len(self._trial) >= self.policy.half_open_probes:
            raise CircuitOpen(self.dependency, min(self.policy.reset_timeout, PROBE_RECHECK))
        self._probes += 1
        return self._generation, True, since

    def record(self, ticket: Ticket, error: BaseException | None, *, counts: bool) -> None:
        """Feed the outcome of an admitted call to the state machine.

        Args:
            ticket: what `admit` returned for this call.
            error: the exception the call raised, or None on success.
            counts: whether ``error`` counts as a failure of the dependency
                (False: neutral, e.g. PERMANENT or cancelled).
        """
        generation, probe, since = ticket
        if probe:
            self._probes -= 1
        if self._window is None:
            self._record(generation, error, counts)
        elif generation == self._generation and (error is None or counts):
            self._judge(error, since)
        if probe and self._waiting and self._cb.current_state is _HALF_OPEN:
            # A probe slot is free and the circuit stays half-open: let a waiter probe.
            # (A transition has already settled the waiters in _flush.)
            self._wake(self._free())

    def _record(self, generation: int, error: BaseException | None, counts: bool) -> None:
        if generation != self._generation:
            return
        if error is None:
            cb = self._cb
            # Closed with no failures counted: aiobreaker would change nothing. Skip it.
            if cb.current_state is not _CLOSED or cb.fail_counter:
                cb.call(_ok)
        elif counts:
            self._error = error
            try:
                with _quiet_utcnow():
                    self._cb.call(_replay, error)
            except aiobreaker.CircuitBreakerError:
                pass  # this call tripped the circuit; the caller raises the original error
            except Exception as replayed:
                if replayed is not error:  # a bug here must not pass as the call's failure
                    raise
            finally:
                self._error = None
        else:
            return
        self._flush()

    def _judge(self, error: BaseException | None, since: float) -> None:
        """A rate breaker counts one call: into its window (closed) or its trial (half-open)."""
        policy = self.policy
        now = _now()
        slow = policy.slow_call is not None and now - since >= policy.slow_call
        failed = error is not None or (slow and policy.slow_rate is None)
        current = self._cb.current_state
        if current is _HALF_OPEN:
            self._trial.append((failed, slow))
            if len(self._trial) < policy.half_open_probes:
                return
            n = len(self._trial)
            failure_share = sum(f for f, _ in self._trial) / n
            slow_share = sum(s for _, s in self._trial) / n
            reason = self._verdict(failure_share, slow_share)
            if reason is None:
                self._cb.close()
            else:
                self._open("probes " + reason, failure_share, slow_share, error)
            self._flush()
            return
        if current is not _CLOSED:
            return  # an open circuit: a straggler of no generation (cannot happen)
        if policy.fail_max is not None:
            self._record(self._generation, error, counts=True)  # the consecutive rule
            if self._cb.current_state is not _CLOSED:
                return
        window = self._window
        assert window is not None
        window.add(failed=failed, slow=slow, now=now)  # a time window drops old calls here
        if window.calls < policy.min_calls:
            return
        failure_share = window.failures / window.calls
        slow_share = window.slows / window.calls
        reason = self._verdict(failure_share, slow_share)
        if reason is not None:
            self._open(reason, failure_share, slow_share, error)
            self._flush()

    def _verdict(self, failure_share: float, slow_share: float) -> str | None:
        """The rule these shares break ("failure_rate", "slow_rate"), or None."""
        policy = self.policy
        if policy.failure_rate is not None and failure_share >= policy.failure_rate:
            return "failure_rate"
        if policy.slow_rate is not None and slow_share >= policy.slow_rate:
            return "slow_rate"
        return None

    def _open(
        self, reason: str, failure_share: float, slow_share: float, error: BaseException | None
    ) -> None:
        self._opening = (reason, failure_share, slow_share)
        self._error = error
        try:
            with _quiet_utcnow():
                self._cb.open()
        finally:
            self._opening = None
            self._error = None

    def _changed(self, old: Any, new: Any) -> None:
        """aiobreaker switched state (called from inside its call/open/half_open/close)."""
        self._generation += 1
        now = _now()
        self._trial.clear()
        if self._window is not None:
            self._window.clear()  # each closed period is judged on its own calls
        if new is _OPEN:
            self.trips += 1
            self._opened_at = now
            if old is _CLOSED:
                self._changed_since = now
            error = self._error
            reason, failure_share, slow_share = self._opening or (
                "probe" if old is _HALF_OPEN else "fail_max",
                None,
                None,
            )
            self._pending.append(
                BreakerOpened(
                    run_id=self.run_id,
                    dependency=self.dependency,
                    failures=self._cb.fail_counter,
                    error_type=_type_name(error) if error is not None else "",
                    reason=reason,
                    failure_rate=failure_share,
                    slow_rate=slow_share,
                )
            )
        elif new is _HALF_OPEN:
            self._pending.append(BreakerHalfOpen(run_id=self.run_id, dependency=self.dependency))
        elif new is _CLOSED:
            self._time_open += now - self._changed_since
            self._pending.append(BreakerClosed(run_id=self.run_id, dependency=self.dependency))

    def _flush(self) -> None:
        # Events are emitted after aiobreaker returns, so a raising emit can
        # never be mistaken for (or swallowed with) the call's own error.
        pending, self._pending = self._pending, []
        for event in pending:
            self._emit(event)
        if pending and self._waiting:
            self._settle()

    # ------------------------------------------------------------ waiters

    @property
    def waiting(self) -> int:
        """Jobs parked on this circuit right now."""
        return self._waiting

    def wait(self, wake: Callable[[], None]) -> Waiter:
        """Park a rejected job until the circuit can admit it.

        ``wake()`` is called once, from the event loop, when the circuit
        closes or a probe slot is free (never from inside this call).

        Returns:
            The `Waiter`; cancel it when the job stops waiting for another reason.
        """
        waiter = Waiter(self, wake)
        self._waiters.append(waiter)
        self._waiting += 1
        if self._free():
            # The circuit changed between the rejection and now: wake on the next tick.
            self._schedule(asap=True)
        elif self._timer is None:
            self._schedule()
        self._changed_waiting()
        return waiter

    def _free(self) -> int:
        """How many waiters the circuit could admit now."""
        current = self._cb.current_state
        if current is _CLOSED:
            return self._waiting
        if current is _OPEN and self._opened_at + self.policy.reset_timeout - _now() > _SLACK:
            return 0
        return max(0, self.policy.half_open_probes - self._probes - len(self._trial))

    def _wake(self, n: int) -> None:
        woken = 0
        while woken < n and self._waiters:
            waiter = self._waiters.popleft()
            if waiter.live:
                woken += 1
                self._left(cancelled=False)
                waiter._fire()

    def _left(self, *, cancelled: bool) -> None:
        """One waiter fewer (woken or cancelled)."""
        self._waiting -= 1
        if self._waiting == 0:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._waiters.clear()  # only cancelled ones are left
        elif cancelled and len(self._waiters) > 2 * self._waiting + 64:
            self._waiters = deque(w for w in self._waiters if w.live)
        self._changed_waiting()

    def _settle(self) -> None:
        """The state changed: wake whom it can admit, or wait for the next chance."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._cb.current_state is _CLOSED:
            self._wake(self._waiting)
        elif self._waiting:
            self._schedule()

    def _schedule(self, *, asap: bool = False) -> None:
        """Check again at the end of the open period, or ``reset_timeout`` from now."""
        if self._timer is not None:
            if not asap:
                return
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        now = loop.time()
        at = now if asap else now + self.policy.reset_timeout
        if not asap and self._cb.current_state is _OPEN:
            end = self._opened_at + self.policy.reset_timeout
            if end - now > _SLACK:
                at = end
        self._timer = loop.call_at(at, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._wake(self._free())
        if self._waiting:
            self._schedule()
            self._report_now()

    def _changed_waiting(self) -> None:
        """The number of waiters changed: report it (at most every `REPORT_EVERY` s)."""
        if self._waiting == 0:
            if self._report is not None:
                self._report.cancel()
                self._report = None
            if self._reported:
                self._report_now()  # the stall is over: say so at once
            return
        if self._report is not None:
            return
        loop = asyncio.get_running_loop()
        self._report = loop.call_at(
            max(loop.time(), self._reported_at + REPORT_EVERY), self._report_changed
        )

    def _report_changed(self) -> None:
        self._report = None
        if self._waiting != self._reported:
            self._report_now()

    def _report_now(self) -> None:
        if self._report is not None:
            self._report.cancel()
            self._report = None
        self._reported = self._waiting
        self._reported_at = _now()
        self._emit(
            JobsWaiting(
                run_id=self.run_id,
                dependency=self.dependency,
                waiting=self._waiting,
                state=self.state,
            )
        )


def _now() -> float:
    return asyncio.get_running_loop().time()


def _type_name(exc: BaseException) -> str:
    return qualname(type(exc))
