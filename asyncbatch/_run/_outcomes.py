"""The outcome path: every attempt's end becomes a retry, a dead letter, an abort or an ack.

A worker hands each finished attempt here. A failure is classified (the
run's classifier, an ``on_error`` decision), recorded (history, report,
budget) and then either parked on a loop timer until its retry is due, dead-
lettered, or turned into an abort. A job rejected by an open circuit
(``on_open="park"``) waits on the circuit itself and is woken when it can be
admitted. No parked job outlives its deadline: it is woken at its deadline
at the latest and dead-lettered with `DeadlineExceeded`. A finished job is
checkpointed (handed to the writer, acknowledged after its commit) or,
without a store, acknowledged at once: counted, reported, judged by the
budget, delivered.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice
from operator import attrgetter, countOf
from typing import TYPE_CHECKING, Any

from asyncbatch._errors import (
    CircuitOpen,
    DeadlineExceeded,
    ErrorKind,
    HandlerError,
    qualname,
    tame_message,
)
from asyncbatch._observe._events import Event, JobDeadLettered, RetryScheduled
from asyncbatch._observe._report_builder import DURATION_CHUNK, ReportBuilder
from asyncbatch._policy._budget import BudgetTracker
from asyncbatch._policy._classify import RejectedResult
from asyncbatch._policy._retry import Decision, next_delay
from asyncbatch._policy._testing_mode import testing_overrides
from asyncbatch._result import AttemptRecord, JobOutcome, JobStatus, count_statuses, fast_outcome

from ._compensate import Done
from ._entry import success_record

if TYPE_CHECKING:
    from asyncbatch._deps._circuit import Circuit, Waiter
    from asyncbatch._observe._otel import AttemptScope, Instrumentation
    from asyncbatch._store import JobRecord

    from ._abort import Abort
    from ._checkpoint import Checkpointer
    from ._entry import Entry
    from ._options import Options
    from ._ready import ReadyQueue
    from ._traffic import RetryGate

    Add = Callable[[JobRecord | JobOutcome[Any], JobOutcome[Any] | None], None]
    """`Checkpointer.add`."""

__all__ = ["Outcomes"]

_SUCCEEDED = JobStatus.SUCCEEDED
_STATUS, _HISTORY, _DURATION = map(attrgetter, ("status", "history", "duration"))
_perf = time.perf_counter

Sink = Callable[[JobOutcome[Any]], None]


class _OnCircuit:
    """How a job parked on a circuit is held: its place in line and its deadline timer."""

    __slots__ = ("deadline", "waiter")

    def __init__(self, waiter: Waiter, deadline: asyncio.TimerHandle | None) -> None:
        self.waiter = waiter
        self.deadline = deadline

    def cancel(self) -> None:
        self.waiter.cancel()
        if self.deadline is not None:
            self.deadline.cancel()


class Outcomes:
    """Decides what becomes of each attempt and acknowledges finished jobs.

    Attributes:
        counts: acknowledged jobs per status (this invocation).
        report: the run's `ReportBuilder`.
        parked: entries waiting out a backoff (on a loop timer) or an open
            circuit (on the circuit).
        done: succeeded jobs in completion order, kept when the batch may
            need rolling back (``compensate=``).
    """

    def __init__(
        self,
        opts: Options,
        *,
        run_id: str,
        queue: ReadyQueue,
        abort: Abort,
        emit: Callable[[Event], None],
        sink: Sink | None,
    ) -> None:
        self.opts = opts
        self.run_id = run_id
        self.counts = count_statuses()
        self.report = ReportBuilder(run_id)
        self._durations = self.report.durations_pending
        self.budget = BudgetTracker(opts.budget) if opts.budget is not None else None
        self.parked: set[Entry] = set()
        self.done: list[Done] = []
        self._keep_done = opts.compensate is not None
        self._codec = opts.result_codec
        self._queue = queue
        queue.count_successes(lambda: self.counts[JobStatus.SUCCEEDED])
        self._abort = abort
        self._emit = emit
        self.sink = sink
        self._classify = opts.classify
        self.result_rules: bool = getattr(opts.classify, "checks_results", False)
        self.rng = opts.retry.rng()
        self._testing = testing_overrides()
        self.inst: Instrumentation | None = None
        """The run's instrumentation while it records metrics (it counts finished jobs)."""
        self.deps: Any = None
        self.checkpointer: Checkpointer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.release: Callable[[str], None] | None = None
        """Told each acknowledged key (admission tracks keys in flight), when set."""
        self.retry_gate: RetryGate | None = None
        """The retry budget's gate (``retry_budget=``), when set."""
        self._lean = False
        self._plain_record = False
        self._as_outcome = False
        """A plain success goes to the checkpointer as its own record
        (`Checkpointer.takes_outcomes`)."""
        self._add: Add | None = None
        """`Checkpointer.add`, when a plain success goes to it as is (no budget to judge)."""

    # ------------------------------------------------------------ success

    def prepare(self) -> None:
        """Choose the success path, once the engine has wired the run (before any job)."""
        # A success record holds the result as is, and no payload.
        self._plain_record = self._codec is None and not self._keep_done
        self._lean = (
            self.checkpointer is None
            and not self._keep_done
            and self.budget is None
            and self.inst is None
            and self.release is None
        )
        cp = self.checkpointer
        if cp is not None and self._plain_record and self.budget is None:
            self._add = cp.add
        self._as_outcome = self._plain_record and cp is not None and cp.takes_outcomes

    def succeeded(self, entry: Entry, result: Any) -> None:
        """The attempt returned ``result`` and no rule rejected it."""
        if entry.history:
            outcome = entry.outcome(JobStatus.SUCCEEDED, result=result)
        else:
            outcome = fast_outcome(
                entry.key, _SUCCEEDED, result, entry.attempt, _perf() - entry.started, entry.index
            )
        if self._lean:
            # A run with nothing to checkpoint, judge, keep or meter: `finish`
            # and `ack` in one frame (measured: a third of the per-job
            # instructions were calls between them).
            self._queue.finished()
            self.counts[_SUCCEEDED] += 1
            if entry.history:
                self.report.job_finished(outcome)
            else:  # what job_finished does for it, without the call
                durations = self._durations
                durations.append(outcome.duration)
                if len(durations) >= DURATION_CHUNK:
                    self.report.fold_durations()
            # Callables kept on the instance are called from a local: a call
            # straight off `self` finds no method to specialise on (~0.2k a job).
            sink = self.sink
            if sink is not None:
                sink(outcome)
            return
        add = self._add
        if add is not None:
            # A plain success checkpointed as is: `finish` without its call.
            self._queue.finished()
            if self._as_outcome and entry.redrive_of is None:
                add(outcome, outcome)  # the store needs no record built
            else:
                add(success_record(entry, outcome, result), outcome)
            return
        if self._keep_done:
            self.done.append(Done(entry.key, entry.item, result, entry.index, JobStatus.SUCCEEDED))
        self.finish(entry, outcome)

    def finish(
        self, entry: Entry, outcome: JobOutcome[Any], exc: BaseException | None = None
    ) -> None:
        """The job is over: checkpoint it (acknowledged after commit) or acknowledge now.

        The error budget judges the job now, not at its acknowledgement: a
        commit may lag by a whole group, and an exhausted budget must stop
        the feed as promptly with a store as without one.
        """
        self._queue.finished()
        if self.budget is not None:
            self._judge(outcome)
        cp = self.checkpointer
        if cp is None:
            self.ack(outcome)
        elif self._plain_record and exc is None and outcome.status is _SUCCEEDED:
            # The commonest record, built directly (`Entry.record`'s checks and
            # keywords cost ~4k instructions a job, measured with callgrind),
            # or none at all when the store takes the outcome for it.
            if self._as_outcome and entry.redrive_of is None:
                cp.add(outcome, outcome)
            else:
                cp.add(success_record(entry, outcome, outcome.result), outcome)
        else:
            cp.add(
                entry.record(outcome, keep_payload=self._keep_done, exc=exc, codec=self._codec),
                outcome,
            )

    def rejected(
        self, entry: Entry, result: Any, start: float, scope: AttemptScope | None = None
    ) -> bool:
        """Whether a classifier rule turns this returned value into a failure."""
        try:
            kind = self._classify.classify_result(result)  # type: ignore[attr-defined]
        except Exception as rule_error:
            self.handler_failed("classify", self._classify, entry, rule_error)
            return True
        if kind is None:
            return False
        error = RejectedResult(result)
        kind, delay = self.failed(entry, error, start, kind=kind)
        if scope is not None:
            scope.failed(kind, error, retry_in=delay)
        return True

    # ------------------------------------------------------------ failure

    def classify(self, exc: BaseException) -> ErrorKind:
        """The run's classifier, its answer normalised to an `ErrorKind`."""
        kind = self._classify(exc)
        return kind if isinstance(kind, ErrorKind) else ErrorKind(kind)

    def failed(
        self,
        entry: Entry,
        exc: BaseException,
        start: float,
        *,
        kind: ErrorKind | None = None,
    ) -> tuple[ErrorKind, float | None]:
        """Record a failed attempt and decide: retry (park), dead-letter or abort.

        Returns the kind and the retry delay (None when not retried).
        """
        tame_message(exc)  # a message too deep to print must not crash the run
        now = time.time()
        if kind is None:
            try:
                kind = (
                    ErrorKind.TRANSIENT if isinstance(exc, DeadlineExceeded) else self.classify(exc)
                )
            except Exception as error:
                return self.handler_failed("classify", self._classify, entry, error)
        entry.kind = kind
        if not entry.history:
            entry.history = []
        elif kind is ErrorKind.TRANSIENT or kind is ErrorKind.RECOVERABLE:
            self._queue.retry_failed()  # a retry failed too: trouble for everyone?
        entry.history.append(
            AttemptRecord(
                number=entry.attempt,
                started_at=now - (time.perf_counter() - start),
                duration=time.perf_counter() - start,
                kind=kind,
                error_type=qualname(type(exc)),
                message=str(exc),
            )
        )
        decision: Decision | None = None
        if self.opts.on_error is not None:
            try:
                decision = self.opts.on_error(exc, entry)
                if decision is not None and not isinstance(decision, Decision):
                    raise TypeError(f"returned {decision!r}, not an ab.Decision or None")
            except Exception as error:
                return self.handler_failed("on_error", self.opts.on_error, entry, error)
        delay = self._retry_delay(entry, kind, exc, decision)
        self.report.attempt_failed(entry.key, kind, exc, now, delay is not None)
        if self.budget is not None:
            verdict = self.budget.record_attempt(kind, delay is not None)
            if verdict is not None:
                self._abort.budget_exhausted(verdict)
        if (decision is not None and decision.action == "abort") or (
            decision is None and kind is ErrorKind.FATAL
        ):
            self._fail_batch(entry, exc, kind)
            return kind, None
        if delay is not None:
            self._emit(
                RetryScheduled(
                    run_id=self.run_id,
                    key=entry.key,
                    attempt=entry.attempt,
                    delay=delay,
                    kind=kind.value,
                    error_type=qualname(type(exc)),
                    message=str(exc),
                )
            )
            self.park(entry, delay)
            return kind, delay
        self._dead_letter(entry, exc, kind)
        return kind, None

    def handler_failed(
        self, handler: str, fn: object, entry: Entry, error: Exception
    ) -> tuple[ErrorKind, None]:
        """A user callback raised: stop the run with a `HandlerError` (no retry, no rollback).

        The job is left unfinished (CANCELLED, run again on resume) so that
        fixing the handler and resuming handles its failure properly.
        """
        name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        self._abort.interrupted.append(entry)
        self._abort.abort(HandlerError(handler, name, entry.key, error), failed=True)
        return entry.kind or ErrorKind.FATAL, None

    def _retry_delay(
        self, entry: Entry, kind: ErrorKind, exc: BaseException, decision: Decision | None
    ) -> float | None:
        """Seconds until the next attempt, or None when the job must not retry."""
        if isinstance(exc, DeadlineExceeded | CircuitOpen):
            return None
        delay = next_delay(
            self.opts.retry,
            kind,
            entry.attempt,
            entry.prev_delay,
            exc,
            decision,
            self.rng,
            self._testing,
            key=entry.key,
        )
        if delay is None:
            return None
        entry.prev_delay = delay
        if entry.deadline_at is not None:
            assert self.loop is not None
            if self.loop.time() + delay >= entry.deadline_at:
                return None
        return delay

    async def circuit_open(self, entry: Entry, exc: CircuitOpen, start: float) -> None:
        """A guard rejected the call: park, fail or fall back, per the breaker's policy."""
        breaker = self.deps.breaker(exc.dependency) if self.deps is not None else None
        policy = getattr(breaker, "on_open", "park")
        if policy == "park":
            entry.attempt -= 1  # a rejected call is not an attempt
            circuit = self.deps.circuit(exc.dependency) if self.deps is not None else None
            if circuit is None:  # raised by the job itself: all we have is its hint
                self.park(entry, max(exc.retry_in, 0.0))
            else:
                self._park_on(entry, circuit)
            return
        if policy == "fallback" and breaker is not None and breaker.fallback is not None:
            try:
                result = await breaker.fallback(entry.item, exc)
            except Exception as fallback_error:
                # A failing fallback is this attempt's failure, handled by its kind.
                self.failed(entry, fallback_error, start)
                return
            self.finish(entry, entry.outcome(JobStatus.SUCCEEDED, result=result, fell_back=True))
            return
        # on_open="fail": dead-letter at once, naming the dependency.
        self.failed(entry, exc, start, kind=ErrorKind.RECOVERABLE)

    def park(self, entry: Entry, delay: float) -> None:
        """Hold ``entry`` on a loop timer (no worker, no slot) until its retry is due.

        The timer never outlives the job's deadline: due past it, the job is
        woken at its deadline and dead-lettered with `DeadlineExceeded`.
        """
        loop = self.loop
        assert loop is not None
        self.parked.add(entry)
        self._queue.parked_one()
        self._arm(entry, loop.time() + delay)

    def repark(self, entry: Entry, when: float) -> bool:
        """Move a job parked on a backoff timer to come due at loop time ``when``
        (or at its deadline, if that comes first). False when it is not on a
        backoff timer (a circuit or the retry budget holds it): it stays as it is."""
        timer = entry.timer
        if entry not in self.parked or not isinstance(timer, asyncio.TimerHandle):
            return False
        timer.cancel()
        self._arm(entry, when)
        return True

    def _arm(self, entry: Entry, when: float) -> None:
        """The backoff timer of a parked job: due at loop time ``when``, or at its
        deadline if that comes first (then it is dead-lettered, `_expire`)."""
        loop = self.loop
        assert loop is not None
        deadline_at = entry.deadline_at
        if deadline_at is not None and when >= deadline_at:
            entry.timer = loop.call_at(deadline_at, self._expire, entry)
        else:
            entry.timer = loop.call_at(when, self._unpark, entry)

    def _park_on(self, entry: Entry, circuit: Circuit) -> None:
        """Hold ``entry`` on the circuit until it can admit it (or until its deadline)."""
        loop = self.loop
        assert loop is not None
        self.parked.add(entry)
        self._queue.parked_one()
        deadline = None
        if entry.deadline_at is not None:
            deadline = loop.call_at(entry.deadline_at, self._expire, entry)
        entry.timer = _OnCircuit(circuit.wait(lambda: self._unpark(entry)), deadline)

    def retrying(self) -> int:
        """Parked jobs waiting to retry a failed attempt (backoff or retry budget)."""
        return sum(
            1 for e in self.parked if e.history and not isinstance(e.timer, _OnCircuit)
        )

    def let_go(self) -> None:
        """The work stopped: cancel what holds each parked job (timers, places on circuits).

        The entries stay in `parked`, for the engine to end them CANCELLED; a
        run cancelled from outside leaves nothing scheduled on the loop.
        """
        for entry in self.parked:
            timer, entry.timer = entry.timer, None
            if timer is not None:
                timer.cancel()

    def _unpark(self, entry: Entry) -> None:
        timer, entry.timer = entry.timer, None
        if timer is not None:
            timer.cancel()  # its other half: the deadline timer, or the place in line
        gate = self.retry_gate
        if gate is not None and entry.attempt and not gate.passes(entry):
            return  # a retry over the retry budget: it stays parked, the gate lets it go
        self.parked.discard(entry)
        self._queue.unparked_one()
        if self._abort.cause is not None:
            self._abort.interrupted.append(entry)
            return
        self._queue.push(entry)

    def _expire(self, entry: Entry) -> None:
        """A parked job reached its deadline: it ends DEAD_LETTERED with `DeadlineExceeded`."""
        timer, entry.timer = entry.timer, None
        if timer is not None:
            timer.cancel()
        self.parked.discard(entry)
        self._queue.unparked_one()
        if self._abort.cause is not None:
            self._abort.interrupted.append(entry)
            return
        exc = DeadlineExceeded(entry.key, self.opts.deadline or 0.0)
        # Not an attempt (nothing ran), but the report shows why the job ended.
        self.report.attempt_failed(entry.key, ErrorKind.TRANSIENT, exc, time.time(), False)
        self._dead_letter(entry, exc, ErrorKind.TRANSIENT)  # `finished` relieves held-back workers

    def _dead_letter(self, entry: Entry, exc: BaseException, kind: ErrorKind) -> None:
        entry.kind = kind
        outcome = entry.outcome(JobStatus.DEAD_LETTERED, error=exc)
        self._emit(
            JobDeadLettered(
                run_id=self.run_id,
                key=entry.key,
                attempts=entry.attempt,
                kind=kind.value,
                error_type=qualname(type(exc)),
                message=str(exc),
            )
        )
        self.finish(entry, outcome, exc)

    def _fail_batch(self, entry: Entry, exc: BaseException, kind: ErrorKind) -> None:
        entry.kind = kind
        self._queue.finished()
        outcome = entry.outcome(JobStatus.FAILED, error=exc)
        self._judge(outcome)
        self.ack(outcome)
        self._abort.abort(exc)

    def _judge(self, outcome: JobOutcome[Any]) -> None:
        """Count a finished job against the error budget (abort or alert when spent)."""
        if self.budget is not None:
            verdict = self.budget.record_job(outcome)
            if verdict is not None:
                self._abort.budget_exhausted(verdict)

    # ---------------------------------------------------------- acknowledge

    def ack(self, outcome: JobOutcome[Any]) -> None:
        """An outcome is final (committed, when there is a store): count and deliver it."""
        self.counts[outcome.status] += 1
        self.report.job_finished(outcome)
        if self.inst is not None:
            self.inst.job_finished(outcome.status)
        release, sink = self.release, self.sink
        if release is not None:
            release(outcome.key)
        if sink is not None:
            sink(outcome)

    def ack_all(self, outcomes: list[JobOutcome[Any] | None]) -> None:
        """`ack` each outcome of a committed group, in order (None: nothing to acknowledge)."""
        counts = self.counts
        job_finished = self.report.job_finished
        durations = self._durations
        inst, release, sink = self.inst, self.release, self.sink
        rest: Iterable[JobOutcome[Any] | None] = outcomes
        if inst is None and release is None:
            # A busy run's every group, first-attempt successes only: checked,
            # counted and delivered in C (`map`), no Python line per job.
            try:
                plain_group = countOf(map(_STATUS, outcomes), _SUCCEEDED) == len(outcomes) and (
                    not any(map(_HISTORY, outcomes))
                )
            except AttributeError:  # a None: a record with nothing to acknowledge
                plain_group = False
            if plain_group:
                counts[_SUCCEEDED] += len(outcomes)
                durations.extend(map(_DURATION, outcomes))
                if len(durations) >= DURATION_CHUNK:
                    self.report.fold_durations()
                if sink is not None:
                    deque(map(sink, outcomes), maxlen=0)  # type: ignore[arg-type]
                return
            # Else its leading first-attempt successes: counted once, their
            # durations appended, each delivered (~0.5k instructions a job less).
            append = durations.append
            plain = 0
            for outcome in outcomes:
                if outcome is None or outcome.status is not _SUCCEEDED or outcome.history:
                    break
                append(outcome.duration)
                if sink is not None:
                    sink(outcome)
                plain += 1
            counts[_SUCCEEDED] += plain
            if len(durations) >= DURATION_CHUNK:
                self.report.fold_durations()
            if plain == len(outcomes):
                return
            rest = islice(outcomes, plain, None)
        for outcome in rest:
            if outcome is None:
                continue
            status = outcome.status
            counts[status] += 1
            if status is _SUCCEEDED and not outcome.history:
                # What job_finished does for a first-attempt success, without the call.
                durations.append(outcome.duration)
                if len(durations) >= DURATION_CHUNK:
                    self.report.fold_durations()
            else:
                job_finished(outcome)
            if inst is not None:
                inst.job_finished(outcome.status)
            if release is not None:
                release(outcome.key)
            if sink is not None:
                sink(outcome)
