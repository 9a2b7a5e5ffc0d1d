"""Stopping a run: aborts (FATAL or budget), leftovers, and the saga rollback.

An abort is decided once: the first cause wins, `RunAborted` is emitted, the
ready queue stops admitting and the work scope is cancelled, so in-flight
attempts end (they re-run on resume). Jobs still admitted when the work
stops end CANCELLED. With ``compensate=``, the engine then rolls back every
succeeded job, newest first (`_compensate`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from asyncbatch._errors import qualname
from asyncbatch._observe._events import BudgetExhausted, Event, RunAborted
from asyncbatch._result import JobOutcome, JobStatus

from ._compensate import Compensation, Done, compensate_all

if TYPE_CHECKING:
    import random

    from asyncbatch._policy._budget import BudgetExceeded
    from asyncbatch._store import FinishedJob, Store

    from ._entry import Entry
    from ._options import Options
    from ._ready import ReadyQueue

__all__ = ["Abort"]

Ack = Callable[[JobOutcome[Any]], None]


class Abort:
    """The run's stop switch and what happens after it is thrown.

    Attributes:
        cause: why the run aborted (the fatal exception or the budget
            verdict), or None while it has not.
        interrupted: entries whose attempt was cut short (cancelled) or that
            came due after the abort; they end CANCELLED.
        work_scope: the cancel scope around the workers, set by the engine.
        failed: the cause is a failure of the run itself (a `HandlerError`),
            not a decision to abort: the run ends ``"failed"``, nothing is
            rolled back and the cause is raised as it is.
    """

    __slots__ = ("_emit", "_queue", "cause", "failed", "interrupted", "run_id", "work_scope")

    def __init__(self, run_id: str, queue: ReadyQueue, emit: Callable[[Event], None]) -> None:
        self.run_id = run_id
        self._queue = queue
        self._emit = emit
        self.cause: BaseException | None = None
        self.interrupted: list[Entry] = []
        self.work_scope: anyio.CancelScope | None = None
        self.failed = False

    def abort(self, cause: BaseException, *, failed: bool = False) -> None:
        """Stop the run for ``cause`` (only the first call counts); see ``failed``."""
        if self.cause is not None:
            return
        self.cause = cause
        self.failed = failed
        self._emit(
            RunAborted(run_id=self.run_id, error_type=qualname(type(cause)), message=str(cause))
        )
        self.interrupted += self._queue.stop()
        if self.work_scope is not None:
            self.work_scope.cancel()

    def budget_exhausted(self, verdict: BudgetExceeded) -> None:
        """The error budget is spent: tell the hooks, and abort when the budget says so."""
        self._emit(
            BudgetExhausted(
                run_id=self.run_id,
                action=verdict.action,
                reason=str(verdict),
                failures=verdict.failures,
                jobs=verdict.jobs,
            )
        )
        if verdict.action == "abort":
            self.abort(verdict)

    def cancel_leftovers(self, parked: set[Entry], ack: Ack) -> None:
        """Jobs still admitted when the work stopped end CANCELLED (they re-run on resume)."""
        leftovers = [*self.interrupted, *self._queue.stop(), *parked]
        self.interrupted.clear()  # in place: worker loops hold a reference to it
        parked.clear()
        leftovers.sort(key=lambda e: -1 if e.index is None else e.index)
        for entry in leftovers:
            if entry.timer is not None:
                entry.timer.cancel()
            ack(entry.outcome(JobStatus.CANCELLED))

    def report(self) -> str | None:
        """The cause as the report states it (``"Type: message"``), or None."""
        cause = self.cause
        return None if cause is None else f"{type(cause).__name__}: {cause}"


class Rollback:
    """Undoes a run's succeeded jobs, earlier invocations' first, newest first overall.

    Args:
        opts: the batch options (``compensate``, ``compensate_retry``, ``durability``).
        run_id: the run.
        store: where progress is checkpointed (None: in memory only).
        counts: the run's live counts; undone jobs move to COMPENSATED.
        ack: acknowledges each COMPENSATED outcome.
    """

    def __init__(
        self,
        opts: Options,
        run_id: str,
        store: Store | None,
        counts: dict[JobStatus, int],
        ack: Ack,
    ) -> None:
        self._opts = opts
        self._run_id = run_id
        self._store = store
        self._counts = counts
        self._ack = ack
        self.summary: Compensation | None = None

    async def run(
        self,
        *,
        earlier: list[FinishedJob],
        skipped_at: dict[str, int | None],
        done: list[Done],
        resumed: bool,
        report: dict[str, Any],
        rng: random.Random,
    ) -> None:
        """Compensate ``earlier`` (stored, from earlier invocations) and ``done`` (this one)."""
        opts = self._opts
        assert opts.compensate is not None
        older = sorted((f for f in earlier if f.status is JobStatus.SUCCEEDED), key=lambda f: f.seq)
        codec = opts.result_codec
        todo = [
            Done(
                f.key,
                f.payload,
                f.result if codec is None else codec.decode(f.result),
                skipped_at.get(f.key, f.index),
                JobStatus.SKIPPED if f.key in skipped_at else None,
            )
            for f in older
        ]
        todo += done
        self.summary = Compensation(resumed=resumed)
        store = self._store
        if store is not None:
            counts = {s.value: n for s, n in self._counts.items()}
            await store.end_run(self._run_id, "compensating", counts, report)
        await compensate_all(
            todo,
            opts.compensate,
            run_id=self._run_id,
            store=store,
            durability=opts.durability,
            retry=opts.compensate_retry,
            rng=rng,
            ack=self._compensated,
            summary=self.summary,
        )

    def _compensated(self, outcome: JobOutcome[Any], replaces: JobStatus | None) -> None:
        if replaces is not None:
            self._counts[replaces] -= 1
        self._ack(outcome)
