"""The engine of one run: sets the parts up, runs them, and records how the run ended.

Data flows one way::

    source ──(admission: key, skip finished)──► ready queue ──► worker (slot)
       ▲                                        ▲              │ attempt: guard, timeout,
       │ backpressure: bounded backlog          │              │ span, job(item)
       │                                        │ timer due    ▼
       │                               parked (loop timers) ◄─ outcome path ─► DLQ | abort
       │                                                       │
       └──────────────────── ack ◄── checkpoint writer ◄───────┘ finished

The parts, one module each: `_admission` (keys, resume), `_ready` (the
hand-off to workers), `_workers` (the attempt loops), `_outcomes` (classify
→ retry | dead letter | abort → ack), `_abort` (stopping and rolling back),
`_checkpoint` (group commit). The engine owns their lifetime: it opens the
run in the store, starts the services (event hooks, the checkpoint writer)
and the workers, and at the end commits what is pending, builds the report
and records the run's status. anyio gives the structure (task groups,
cancel scopes); the per-job hand-off uses plain asyncio primitives, which
measured ~10x cheaper than anyio streams.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from contextlib import nullcontext
from typing import Any, Generic, TypeVar

import anyio

from asyncbatch._errors import AsyncBatchError, BatchAborted
from asyncbatch._observe._events import Event, EventDispatcher, RunFinished, RunStarted
from asyncbatch._observe._otel import Instrumentation
from asyncbatch._observe._report import ErrorReport
from asyncbatch._result import BatchResult, JobOutcome, JobStatus, all_ok
from asyncbatch._store import RunInfo, Store

from ._abort import Abort, Rollback
from ._admission import Admission
from ._checkpoint import Checkpointer
from ._options import Options
from ._outcomes import Outcomes
from ._ready import ReadyQueue
from ._workers import Workers

__all__ = ["Engine", "unwrap_group"]

R = TypeVar("R")
Sink = Callable[[JobOutcome[Any]], None]


class Engine(Generic[R]):
    """Runs one batch. Build, `await execute(...)`, read the result."""

    def __init__(
        self,
        job: Callable[[Any], Awaitable[R]],
        opts: Options,
        *,
        run_id: str,
        store: Store | None,
        sink: Sink | None,
        job_ref: str = "",
        backlog: Callable[[], int] | None = None,
        rollback_only: bool = False,
    ) -> None:
        self.job = job
        self.opts = opts
        self.run_id = run_id
        self.store = store
        self._job_ref = job_ref
        self._dispatcher = EventDispatcher(opts.on_event)
        self._inst: Instrumentation | None = None
        self._deps: Any = None
        self._checkpointer: Checkpointer | None = None
        self._rollback_only = rollback_only
        self._admission = Admission(opts, run_id, self._ack)
        self._queue = ReadyQueue(
            self._admission,
            concurrency=opts.concurrency,
            backlog=backlog,
            max_backlog=max(4096, 4 * opts.concurrency),
        )
        self._abort = Abort(run_id, self._queue, self._emit)
        self._outcomes = Outcomes(
            opts, run_id=run_id, queue=self._queue, abort=self._abort, emit=self._emit, sink=sink
        )
        self._rollback: Rollback | None = None
        self._report: ErrorReport | None = None
        self.started_at = 0.0
        self.finished_at = 0.0
        self.resumed = False

    @property
    def counts(self) -> dict[JobStatus, int]:
        """Acknowledged jobs per status in this invocation."""
        return self._outcomes.counts

    def _ack(self, outcome: JobOutcome[Any]) -> None:
        self._outcomes.ack(outcome)

    # ------------------------------------------------------------------ run

    async def execute(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        redrive: dict[int, tuple[int, str]] | None = None,
    ) -> BatchResult[R]:
        """Run every item; returns the result or raises `BatchAborted`.

        Args:
            items: the input (sync or async iterable).
            redrive: for `ab.redrive`: input position → (DLQ entry id, job key).
        """
        self._admission.redrive = redrive
        loop = asyncio.get_running_loop()
        self._outcomes.loop = loop
        self.started_at = time.time()
        t0 = loop.time()
        await self._open_run(redrive is not None)
        self._setup_dependencies()
        self._inst = Instrumentation.create(
            self.opts.tracer_provider, self.opts.meter_provider, self.run_id
        )
        self._outcomes.inst = self._inst
        abort = self._abort
        status = "interrupted"
        try:
            async with anyio.create_task_group() as services:
                if self._dispatcher:
                    services.start_soon(self._dispatcher.run)
                if self._checkpointer is not None:
                    services.start_soon(self._checkpointer.run)
                self._emit(RunStarted(run_id=self.run_id, resumed=self.resumed))
                try:
                    span = self._inst.run_span(self._span_attrs()) if self._inst else nullcontext()
                    with span:
                        if not self._rollback_only:
                            await self._work(items)
                    abort.cancel_leftovers(self._outcomes.parked, self._ack)
                    rolls_back = abort.cause is not None and not abort.failed
                    if rolls_back and self.opts.compensate is not None:
                        if self._checkpointer is not None:
                            await self._checkpointer.flush()
                        await self._roll_back()
                    if abort.cause is not None:  # "failed": a handler broke, see Abort.failed
                        status = "failed" if abort.failed else "aborted"
                    else:
                        status = "finished"
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._close(status, loop.time() - t0)
        except BaseExceptionGroup as group:
            # A failed commit or a crashing hook surfaces as a group; raise the error itself.
            inner = unwrap_group(group)
            if inner is group:
                raise
            raise inner from None
        result = self.result(loop.time() - t0, outcomes=[])
        if abort.cause is not None:
            if abort.failed:
                raise abort.cause  # a HandlerError; its __cause__ is the handler's own error
            raise BatchAborted(result, abort.cause) from abort.cause
        return result

    async def _open_run(self, redriving: bool) -> None:
        """Begin (or resume) the run in the store and set up its checkpoint writer."""
        store = self.store
        if store is None:
            return
        prev = await store.begin_run(self._run_info())
        self.resumed = prev is not None
        if prev is not None and not redriving:
            self._admission.finished = await store.finished_jobs(self.run_id)
            if prev.status == "compensating" and self.opts.compensate is not None:
                # The process died while rolling back: finish the rollback, not the batch.
                self._rollback_only = True
                reason = (prev.report or {}).get("aborted") or "an earlier abort"
                self._abort.cause = AsyncBatchError(f"rollback resumed after {reason}")
            elif self._rollback_only:
                self._abort.cause = AsyncBatchError("rollback requested")
        self._checkpointer = Checkpointer(store, self.opts.durability, self._ack)
        self._outcomes.checkpointer = self._checkpointer
        # New items wait while the writer falls behind (memory stays bounded).
        self._queue.watch(self._checkpointer)

    def result(self, duration: float, outcomes: list[JobOutcome[R]]) -> BatchResult[R]:
        """The `BatchResult` with these outcomes (the caller orders them)."""
        assert self._report is not None
        return BatchResult(
            run_id=self.run_id,
            outcomes=outcomes,
            counts=dict(self.counts),
            report=self._report,
            duration=duration,
        )

    async def _close(self, status: str, duration: float) -> None:
        """Commit what is pending, record how the run ended, deliver final events."""
        self.finished_at = time.time()
        if self._checkpointer is not None:
            self._checkpointer.close()
            with anyio.move_on_after(60):
                await self._checkpointer.flush()
        outcomes = self._outcomes
        summary = self._rollback.summary if self._rollback is not None else None
        self._report = outcomes.report.build(
            started_at=self.started_at,
            finished_at=self.finished_at,
            breakers={k: v.to_dict() for k, v in self._deps.stats().items()}
            if self._deps
            else None,
            budget=outcomes.budget.state() if outcomes.budget else None,
            compensation=summary.to_dict() if summary else None,
            counts=self.counts,
            aborted=self._abort.report(),
        )
        counts = {s.value: n for s, n in self.counts.items()}
        if self.store is not None:
            stored = await self._whole_run_counts() if self.resumed else counts
            await self.store.end_run(self.run_id, status, stored, self._report.to_dict())  # type: ignore[arg-type]
        ok = status == "finished" and all_ok(self.counts)
        self._emit(RunFinished(run_id=self.run_id, counts=counts, duration=duration, ok=ok))
        self._dispatcher.close()

    async def _whole_run_counts(self) -> dict[str, int]:
        """Counts of every job of a resumed (or redriven) run, not just this invocation's.

        Finished jobs come from the store; FAILED and CANCELLED ones are not
        stored (they run again on resume), so they come from this invocation.
        """
        assert self.store is not None
        whole = await self.store.count_jobs(self.run_id)
        for status in (JobStatus.FAILED, JobStatus.CANCELLED):
            whole[status.value] += self.counts[status]
        return whole

    async def _roll_back(self) -> None:
        """Undo every succeeded job (earlier runs first in completion order)."""
        self._rollback = Rollback(self.opts, self.run_id, self.store, self.counts, self._ack)
        await self._rollback.run(
            earlier=list(self._admission.finished.values()),
            skipped_at=self._admission.skipped_at,
            done=self._outcomes.done,
            resumed=self._rollback_only,
            report={"aborted": self._abort.report()},
            rng=self._outcomes.rng,
        )

    def _run_info(self) -> RunInfo:
        o = self.opts
        config = {
            **o.run_config,
            "concurrency": o.concurrency,
            "timeout": o.timeout,
            "deadline": o.deadline,
            "durability": o.durability,
            "uses": list(o.uses),
            "retry_dead": o.retry_dead,
        }
        now = time.time()
        return RunInfo(
            run_id=self.run_id, job=self._job_ref, config=config, created_at=now, updated_at=now
        )

    def _span_attrs(self) -> dict[str, Any]:
        return {"asyncbatch.run.id": self.run_id, "asyncbatch.concurrency": self.opts.concurrency}

    def _setup_dependencies(self) -> None:
        o = self.opts
        if not (o.limits or o.rates or o.breakers or o.uses):
            return
        from asyncbatch._deps import Dependencies

        self._deps = Dependencies(
            run_id=self.run_id,
            limits=o.limits,
            rates=o.rates,
            breakers=o.breakers,
            classify=self._outcomes.classify,
            emit=self._emit,
        )
        self._outcomes.deps = self._deps

    def _emit(self, event: Event) -> None:
        self._dispatcher.emit(event)
        if self._inst is not None:
            self._inst.on_event(event)

    # ------------------------------------------------------------ the work

    async def _work(self, items: Iterable[Any] | AsyncIterable[Any]) -> None:
        deps_token = None
        if self._deps is not None:
            from asyncbatch._deps import reset_dependencies, use_dependencies

            deps_token = use_dependencies(self._deps)
        workers = Workers(
            self.job,
            self.opts,
            queue=self._queue,
            outcomes=self._outcomes,
            abort=self._abort,
            inst=self._inst,
            deps=self._deps,
        )
        try:
            with anyio.CancelScope() as self._abort.work_scope:
                async with anyio.create_task_group() as tg:
                    async_items = self._queue.start(items)
                    if async_items is not None:
                        tg.start_soon(self._queue.feed, async_items)
                    run = workers.pick()
                    for _ in range(self.opts.concurrency):
                        tg.start_soon(run)
        finally:
            if deps_token is not None:
                reset_dependencies(deps_token)

    def relieve(self) -> None:
        """A stream reader took outcomes: the backlog shrank."""
        self._queue.relieve()


def unwrap_group(exc: BaseException) -> BaseException:
    """The one meaningful exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
