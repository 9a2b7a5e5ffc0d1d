"""The workers: at most ``concurrency`` loops, so a worker IS a concurrency slot.

They start as the run needs them (`_control.Control.demand`) and leave once
no work is left for them (`_ready.ReadyQueue.wait`).

Each loop takes the next entry from the ready queue, runs one attempt (its
guards, timeout, deadline and span around the job) and hands the result to
the outcome path. A job waiting out a backoff is not in a worker: it is
parked on a loop timer. `pick` chooses the leanest loop that does everything
the run needs: the plain loop is what the no-op benchmarks compare against
bare asyncio.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import anyio

from asyncbatch._context import _current
from asyncbatch._errors import CircuitOpen, DeadlineExceeded

if TYPE_CHECKING:
    from asyncbatch._observe._otel import Instrumentation

    from ._abort import Abort
    from ._entry import Entry
    from ._options import Options
    from ._outcomes import Outcomes
    from ._ready import ReadyQueue
    from ._traffic import Traffic

__all__ = ["TURN", "Loops", "Workers"]

TURN = 32
"""A worker hands the event loop a turn after this many jobs.

A job that never suspends (a cache hit, a no-op) returns without a trip
through the loop, so a worker would otherwise run job after job for as long
as there is work, starving every other task: the checkpoint writer's
continuations (commits then ran strictly after the workers filled the
backlog, never beside them), heartbeats, the live view, the caller's own
tasks. One ``sleep(0)`` per 32 jobs costs about 1/32 of a loop trip a job.
"""
_sleep = asyncio.sleep


def _nothing() -> None:
    pass


class Loops:
    """What a run's worker loops are made of; `pick` names the loop each worker runs.

    Args:
        job: the user's ``async def job(item)``.
        opts: the batch options.
        queue: where entries come from.
        outcomes: where every attempt's end goes.
        abort: collects attempts cut short by cancellation.
        inst: the run's instrumentation, or None.
        deps: the run's dependencies (guards), or None.
        traffic: the run's traffic controls (`_traffic.Traffic`), or None.
    """

    def __init__(
        self,
        job: Callable[[Any], Awaitable[Any]],
        opts: Options,
        *,
        queue: ReadyQueue,
        outcomes: Outcomes,
        abort: Abort,
        inst: Instrumentation | None,
        deps: Any,
        traffic: Traffic | None = None,
    ) -> None:
        self.job = job
        self.opts = opts
        self._queue = queue
        self._outcomes = outcomes
        self._abort = abort
        self._inst = inst
        self._deps = deps
        self._traffic = traffic
        self.arrived: Callable[[], None] = _nothing
        """Called first by every worker loop (`_control.Control.arrived`, when set)."""

    def pick(self) -> Callable[[], Coroutine[Any, Any, None]]:
        """The loop every worker of the run runs."""
        raise NotImplementedError

    def first_start(self, entry: Entry, start: float, loop: asyncio.AbstractEventLoop) -> None:
        """The job's first attempt starts (at ``start``, `time.perf_counter`).

        Its deadline runs from here, through every attempt and every wait
        (backoff, open circuit). Called when ``entry.started`` is unset, not
        on ``attempt == 1``: a call rejected by an open circuit gives its
        attempt back.
        """
        entry.started = start
        if self.opts.deadline is not None:
            entry.deadline_at = loop.time() + self.opts.deadline
        if self._traffic is not None:
            self._traffic.started(entry)


class Workers(Loops):
    """The worker loops of one run: one job per attempt (see `Loops` for the arguments)."""

    def pick(self) -> Callable[[], Coroutine[Any, Any, None]]:
        """The leanest worker loop that does everything this run needs."""
        o = self.opts
        if o.timeout or o.deadline or o.uses or self._deps is not None or self._traffic:
            return self.full
        return self.plain if self._inst is None else self.traced

    # The three loops repeat their first lines on purpose: a shared helper
    # would cost a call per job on the hottest path (measured). A for loop
    # over range(TURN) counts the turns for less than `turn += 1` and a
    # compare would. The job is set in the worker's own context (its task's)
    # and not reset: the next job's set replaces it.

    async def plain(self) -> None:
        """The hot loop: no timeouts, guards or spans to wrap the call in."""
        self.arrived()
        job = self.job
        perf = time.perf_counter
        set_job = _current.set
        next_entry, wait = self._queue.next, self._queue.wait
        outcomes = self._outcomes
        succeeded, failed, rejected = outcomes.succeeded, outcomes.failed, outcomes.rejected
        interrupted = self._abort.interrupted
        result_rules = outcomes.result_rules
        turns = range(TURN)
        while True:
            for _ in turns:
                entry = next_entry()
                if entry is None:
                    if await wait():
                        continue
                    return
                entry.attempt = attempt = entry.attempt + 1
                set_job(entry)
                start = perf()
                if attempt == 1:
                    entry.started = start
                try:
                    result = await job(entry.item)
                except Exception as exc:
                    failed(entry, exc, start)
                except BaseException:
                    interrupted.append(entry)
                    raise
                else:
                    if result_rules and rejected(entry, result, start):
                        continue
                    succeeded(entry, result)
            await _sleep(0)

    async def traced(self) -> None:
        """The hot loop with an attempt span around each call (no guards or timeouts).

        Each worker keeps one `AttemptScope` and begins it for every attempt:
        no object per attempt, and no ``with`` (~2k instructions an attempt).
        """
        self.arrived()
        inst = self._inst
        assert inst is not None
        job = self.job
        perf = time.perf_counter
        set_job = _current.set
        next_entry, wait = self._queue.next, self._queue.wait
        outcomes = self._outcomes
        succeeded, failed, rejected = outcomes.succeeded, outcomes.failed, outcomes.rejected
        interrupted = self._abort.interrupted
        result_rules = outcomes.result_rules
        metered = inst.metered
        scope = inst.attempt("", 0)  # this worker's, begun anew for each attempt
        turns = range(TURN)
        while True:
            for _ in turns:
                entry = next_entry()
                if entry is None:
                    if await wait():
                        continue
                    return
                entry.attempt = attempt = entry.attempt + 1
                set_job(entry)
                start = perf()
                if attempt == 1:
                    entry.started = start
                scope.begin(entry.key, attempt)
                if metered:
                    inst.in_flight(1)
                try:
                    result = await job(entry.item)
                except Exception as exc:
                    kind, delay = failed(entry, exc, start)
                    scope.failed(kind, exc, retry_in=delay)
                except BaseException as exc:
                    scope.escaped(exc)
                    interrupted.append(entry)
                    raise
                else:
                    if result_rules and rejected(entry, result, start, scope):
                        continue
                    succeeded(entry, result)
                finally:
                    if metered:
                        inst.in_flight(-1)
                    scope.end()
            await _sleep(0)

    async def full(self) -> None:
        """The general loop: deadline, timeout, ``uses=`` guards, attempt spans."""
        self.arrived()
        next_entry, wait = self._queue.next, self._queue.wait
        loop = asyncio.get_running_loop()
        turns = range(TURN)
        while True:
            for _ in turns:
                entry = next_entry()
                if entry is None:
                    if await wait():
                        continue
                    return
                await self._attempt(entry, loop)
            await _sleep(0)

    async def _attempt(self, entry: Entry, loop: asyncio.AbstractEventLoop) -> None:
        outcomes = self._outcomes
        inst = self._inst
        entry.attempt += 1
        token = _current.set(entry)
        start = time.perf_counter()
        if not entry.started:  # not `attempt == 1`: see `first_start`
            self.first_start(entry, start, loop)
        scope_cm: Any = (
            inst.attempt(entry.key, entry.attempt) if inst is not None else nullcontext()
        )
        try:
            with scope_cm as scope:
                if inst is not None:
                    inst.in_flight(1)
                try:
                    if self._traffic is None:
                        result = await self._call(entry, loop)
                    else:
                        result = await self._traffic.attempt(
                            lambda: self._call(entry, loop), scope
                        )
                except Exception as exc:
                    if isinstance(exc, CircuitOpen):
                        if scope is not None:
                            scope.rejected(exc.dependency)
                        await outcomes.circuit_open(entry, exc, start)
                        return
                    kind, delay = outcomes.failed(entry, exc, start)
                    if scope is not None:
                        scope.failed(kind, exc, retry_in=delay)
                except BaseException:
                    self._abort.interrupted.append(entry)
                    raise
                else:
                    if outcomes.result_rules and outcomes.rejected(entry, result, start, scope):
                        return
                    outcomes.succeeded(entry, result)
                finally:
                    if inst is not None:
                        inst.in_flight(-1)
        finally:
            _current.reset(token)

    async def _call(self, entry: Entry, loop: asyncio.AbstractEventLoop) -> Any:
        o = self.opts
        limit = o.timeout
        deadline_at = entry.deadline_at
        if deadline_at is not None:
            remaining = deadline_at - loop.time()
            if remaining <= 0:
                raise DeadlineExceeded(entry.key, o.deadline or 0.0)
            limit = remaining if limit is None else min(limit, remaining)
        guards: Any = self._deps.guard_all(o.uses) if o.uses and self._deps else None
        try:
            if guards is not None:
                async with guards:
                    return await self._timed(entry, limit)
            return await self._timed(entry, limit)
        except TimeoutError as exc:
            if deadline_at is not None and loop.time() >= deadline_at:
                raise DeadlineExceeded(entry.key, o.deadline or 0.0) from exc
            raise

    async def _timed(self, entry: Entry, limit: float | None) -> Any:
        if limit is None:
            return await self.job(entry.item)
        with anyio.fail_after(limit):
            return await self.job(entry.item)
