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
hand-off to workers), `_workers` (the attempt loops; `_chunks` with
``batch_size=``), `_outcomes` (classify → retry | dead letter | abort →
ack), `_abort` (stopping and rolling back),
`_checkpoint` (group commit). The engine owns their lifetime: it opens the
run in the store, starts the services (event hooks, the checkpoint writer)
and the workers, and at the end commits what is pending, builds the report
and records the run's status. anyio gives the structure (task groups,
cancel scopes); the per-job hand-off uses plain asyncio primitives, which
measured ~10x cheaper than anyio streams.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sized
from contextlib import nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio

from asyncbatch._errors import AsyncBatchError, BatchAborted, ConfigError, StoreError, UnknownRun
from asyncbatch._observe._events import Event, EventDispatcher, RunFinished, RunStarted
from asyncbatch._observe._otel import Instrumentation
from asyncbatch._observe._report import ErrorReport, merge_reports
from asyncbatch._result import BatchResult, JobOutcome, JobStatus, all_ok
from asyncbatch._store import DEFAULT_GROUP, RunInfo, Store
from asyncbatch._store._codec import new_run_warnings

from ._abort import Abort, Rollback
from ._admission import Admission
from ._checkpoint import Checkpointer
from ._collector import collector_tuned
from ._control import Control
from ._identity import callable_name, check_identity, key_spec
from ._lease import Lease
from ._options import Options
from ._outcomes import Outcomes
from ._ready import ReadyQueue
from ._workers import Loops, Workers

if TYPE_CHECKING:
    from ._traffic import Traffic

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
        self._total: int | None = None  # len(items) when known: the dashboard's progress bar
        self._dispatcher = EventDispatcher(opts.on_event)
        self._inst: Instrumentation | None = None
        self._deps: Any = None
        self._traffic: Traffic | None = None
        self._checkpointer: Checkpointer | None = None
        self._lease: Lease | None = None
        self._rollback_only = rollback_only
        self._admission = Admission(opts, run_id)
        # Chunked calls (batch_size=): read-ahead and backlog count items, a worker holds a chunk.
        items_in_flight = opts.concurrency * (opts.batch_size or 1)
        self._queue = ReadyQueue(
            self._admission,
            concurrency=items_in_flight,
            backlog=backlog,
            max_backlog=backlog_cap(store, items_in_flight),
        )
        self._abort = Abort(run_id, self._queue, self._emit)
        self._outcomes = Outcomes(
            opts, run_id=run_id, queue=self._queue, abort=self._abort, emit=self._emit, sink=sink
        )
        self._admission.ack = self._outcomes.ack  # the queue needed admission first
        self.control = Control(
            self._queue, self._outcomes, concurrency=opts.concurrency, run_id=run_id
        )
        self._queue.controlled_by(self.control)
        self.control.items_per_call = opts.batch_size or 1
        self._rollback: Rollback | None = None
        self._report: ErrorReport | None = None
        self._prev: RunInfo | None = None
        self._seq0 = 0  # the run's last completion order before this invocation
        self.started_at = 0.0
        self.finished_at = 0.0
        self.resumed = False

    @property
    def counts(self) -> dict[JobStatus, int]:
        """Acknowledged jobs per status in this invocation."""
        return self._outcomes.counts

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
        if redrive is None and isinstance(items, Sized):
            self._total = len(items)
        loop = asyncio.get_running_loop()
        self._outcomes.loop = loop
        self.started_at = time.time()
        t0 = loop.time()
        await self._open_run(redrive is not None)
        self._setup_dependencies()
        self._inst = Instrumentation.create(
            self.opts.tracer_provider, self.opts.meter_provider, self.run_id
        )
        # The outcome path only counts finished jobs in metrics (spans are the workers').
        inst = self._inst
        self._outcomes.inst = inst if inst is not None and inst.metered else None
        self._setup_traffic(loop)
        abort = self._abort
        status = "interrupted"
        try:
            async with anyio.create_task_group() as services:
                if self._dispatcher:
                    services.start_soon(self._dispatcher.run)
                if self._checkpointer is not None:
                    services.start_soon(self._checkpointer.run)
                if self._lease is not None:
                    services.start_soon(self._lease.run)
                self._emit(RunStarted(run_id=self.run_id, resumed=self.resumed))
                try:
                    span = self._inst.run_span(self._span_attrs()) if self._inst else nullcontext()
                    with span:
                        if not self._rollback_only:
                            await self._work(items)
                    abort.cancel_leftovers(self._outcomes.parked, self._outcomes.ack)
                    rolls_back = abort.cause is not None and not abort.failed
                    if rolls_back and self.opts.compensate is not None:
                        if self._checkpointer is not None:
                            await self._checkpointer.flush()
                        await self._roll_back()
                    if abort.cause is not None:  # "failed": a handler broke, see Abort.failed
                        status = "failed" if abort.failed else "aborted"
                    else:
                        status = "finished"
                    if self.input_error is not None and abort.cause is None:
                        status = "interrupted"  # the input stopped early: resume it
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
        if self.input_error is not None:
            # Raised only now: the jobs admitted before it ran to their end and were committed.
            raise self.input_error
        return result

    @property
    def input_error(self) -> Exception | None:
        """What the input raised, if it did: admission stopped there."""
        return self._queue.input_error

    async def _open_run(self, redriving: bool) -> None:
        """Begin (or resume) the run in the store and set up its checkpoint writer.

        Raises:
            ConfigError: the stored run was made with other keys or another
                job, or it was rolling back and no ``compensate=`` is given.
        """
        store = self.store
        if store is None:
            return
        new_run_warnings(self.run_id)
        info = fresh = self._run_info()
        try:
            stored = await store.get_run(self.run_id)
        except UnknownRun:
            stored = None
        if stored is not None and redriving:
            # A redrive runs the stored payloads, usually with a fixed job: it
            # neither checks nor replaces the identity a resume is held to.
            info = replace(info, job=stored.job, config=stored.config)
        elif stored is not None and not self.opts.force_resume:
            # The run keeps the identity it was made with (checked below).
            kept: dict[str, Any] = {
                f: stored.config[f] for f in ("key", "job", "batch_size") if f in stored.config
            }
            info = replace(info, config={**info.config, **kept})
        self._lease = Lease(store, self.run_id)
        prev = self._prev = await self._lease.begin(info)  # RunOwned first: it is the reason
        if prev is not None and not redriving and not self._rollback_only:
            try:
                self._check_resume(prev, fresh)
            except ConfigError:
                # Refused: leave the run as it was (status, counts, report) and let it go.
                await self._lease.end(prev.status, prev.counts, prev.report)
                raise
        self.resumed = prev is not None
        if prev is not None:
            self._seq0 = await store.last_seq(self.run_id)
        if prev is not None and not redriving:
            if prev.status == "compensating" and self.opts.compensate is not None:
                # The process died while rolling back: finish the rollback, not the batch.
                self._rollback_only = True
                reason = (prev.report or {}).get("aborted") or "an earlier abort"
                self._abort.cause = AsyncBatchError(f"rollback resumed after {reason}")
            elif self._rollback_only:
                self._abort.cause = AsyncBatchError("rollback requested")
        self._checkpointer = Checkpointer(
            store,
            self.opts.durability,
            self._outcomes.ack_all,
            taken=self._queue.relieve,
            run_id=self.run_id,
        )
        self._outcomes.checkpointer = self._checkpointer
        # New items wait while the writer falls behind (memory stays bounded).
        self._queue.watch(self._checkpointer)

    def _check_resume(self, prev: RunInfo, fresh: RunInfo) -> None:
        """Refuse a resume pairing stored outcomes with the wrong items, or dropping a rollback."""
        if not self.opts.force_resume:
            check_identity(self.run_id, prev.config, fresh.config)
        if prev.status == "compensating" and self.opts.compensate is None:
            raise ConfigError(
                f"run {self.run_id!r} was rolling back when it stopped; pass the same "
                "compensate= to finish the rollback (or call ab.rollback(undo, ...))"
            )

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
        cp = self._checkpointer
        lease = self._lease
        if lease is not None:
            lease.stop()
        if cp is not None:
            cp.close()
            with anyio.move_on_after(60):
                await cp.flush()
        outcomes = self._outcomes
        # Every outcome is delivered. The run's internals hold one another in
        # cycles; without this, they would hold the caller's outcome list too,
        # and a dropped result would wait for the cyclic collector (which then
        # walks every outcome) instead of being freed at once.
        outcomes.sink = None
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
            traffic=self._traffic_state(),
        )
        counts = {s.value: n for s, n in self.counts.items()}
        if lease is not None:  # there is a store
            try:
                await self._end_run(status, counts)
            except StoreError:
                if cp is None or cp.error is None:
                    raise
                # The commit's own error is the one to report; this is its echo.
        ok = status == "finished" and all_ok(self.counts)
        self._emit(RunFinished(run_id=self.run_id, counts=counts, duration=duration, ok=ok))
        self._dispatcher.close()

    async def _end_run(self, status: str, counts: dict[str, int]) -> None:
        """Store the run's status, whole-run counts and whole-run report."""
        assert self.store is not None
        assert self._report is not None
        stored = counts
        report = self._report
        if self.resumed:
            stored = await self._whole_run_counts()
            earlier = self._prev.report if self._prev is not None else None
            whole = replace(
                report, counts=stored, dead_lettered=stored.get(JobStatus.DEAD_LETTERED.value, 0)
            )
            report = merge_reports(ErrorReport.from_dict(earlier), whole) if earlier else whole
        assert self._lease is not None
        await self._lease.end(status, stored, report.to_dict())  # type: ignore[arg-type]

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
        self._rollback = Rollback(
            self.opts, self.run_id, self.store, self.counts, self._outcomes.ack
        )
        earlier = []
        if self.store is not None and self.resumed:
            # Stored before this invocation; this one's successes are in `done`.
            earlier = [j for j in await self.store.jobs(self.run_id) if j.seq <= self._seq0]
        await self._rollback.run(
            earlier=earlier,
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
            "compensate": o.compensate is not None,
            "result_codec": "json" if o.result_codec is None else o.result_codec.name,
            "key": key_spec(o.key),
            "job": callable_name(self.job),
            "batch_size": o.batch_size,
        }
        if self._total is not None:
            config.setdefault("total", self._total)
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

    def _traffic_state(self) -> dict[str, Any] | None:
        state = self._traffic.state() if self._traffic is not None else {}
        limits = self._deps.adaptive_state() if self._deps else {}
        if limits:
            state["limits"] = limits
        return state or None

    def _setup_traffic(self, loop: asyncio.AbstractEventLoop) -> None:
        o = self.opts
        if o.retry_budget is None and o.adaptive is None and o.hedge is None:
            return
        from asyncbatch._deps import AdaptiveLimit

        from ._hedge import Hedging
        from ._traffic import RetryGate, Traffic

        outcomes = self._outcomes
        gate = None
        if o.retry_budget is not None:
            gate = RetryGate(
                o.retry_budget, loop, release=outcomes._unpark, expire=outcomes._expire
            )
            outcomes.retry_gate = gate
        self._traffic = Traffic(
            loop=loop,
            retry_gate=gate,
            adaptive=AdaptiveLimit(o.adaptive) if o.adaptive is not None else None,
            hedging=Hedging(o.hedge) if o.hedge is not None else None,
            control=self.control,
            emit=self._emit,
            run_id=self.run_id,
        )

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
        kind: type[Loops] = Workers
        if self.opts.batch_size is not None:
            from ._chunks import Chunks  # the chunk worker loop (``batch_size=``)

            kind = Chunks
        loops = kind(
            self.job,
            self.opts,
            queue=self._queue,
            outcomes=self._outcomes,
            abort=self._abort,
            inst=self._inst,
            deps=self._deps,
            traffic=self._traffic,
        )
        admission = self._admission
        # No more workers than a sized input has items, whatever the concurrency
        # (now or after a resize): a worker only ever runs admitted jobs.
        most_workers = _workers_needed(items, sys.maxsize)
        items = admission.source(items, store=self.store, resumed=self.resumed, seq0=self._seq0)
        if admission.live is not None:
            self._outcomes.release = admission.release
        self._queue.admit_with(admission, admission.entries())
        adaptive = self.opts.adaptive
        most_slots = adaptive.max if adaptive is not None else self.opts.concurrency
        self._outcomes.prepare()
        admission.room = self._queue.room
        try:
            with collector_tuned(most_slots), anyio.CancelScope() as self._abort.work_scope:
                async with anyio.create_task_group() as tg:
                    async_items = self._queue.start(items)
                    if async_items is not None:
                        tg.start_soon(self._queue.feed, async_items)
                    # The workers are plain asyncio tasks under the anyio cancel scope
                    # (an abort cancels this task, and the TaskGroup its children):
                    # anyio's start_soon costs several times more per task, which
                    # showed at concurrency 10,000 (measured in benchmarks/bench_core.py).
                    # `Control` starts them (and more on a resize), at most most_workers.
                    run = loops.pick()
                    loops.arrived = self.control.arrived
                    self._queue.workers = 0
                    async with asyncio.TaskGroup() as pool:
                        self.control.start(
                            lambda fn: pool.create_task(fn()), run, cap=most_workers
                        )
        finally:
            if self._traffic is not None:
                self._traffic.close()
            self._outcomes.let_go()
            if deps_token is not None:
                reset_dependencies(deps_token)

    def relieve(self) -> None:
        """A stream reader took outcomes: the backlog shrank."""
        self._queue.relieve()


def backlog_cap(store: Store | None, concurrency: int) -> int:
    """How many finished jobs may wait for the next group commit before new items wait.

    ``max(group_size, 2 x concurrency)``: a store may name the group it
    commits best (``group_size``, default `DEFAULT_GROUP`); PostgreSQL pays
    round trips and a WAL flush per commit, so it takes bigger groups.
    """
    return max(getattr(store, "group_size", DEFAULT_GROUP), 2 * concurrency)


def _workers_needed(items: object, concurrency: int) -> int:
    """At most one worker per slot, and no more than a sized input has items (100 items
    at concurrency 10,000 start 100 workers: a worker only ever runs admitted
    jobs, and a run never has more of them alive than it has items)."""
    if isinstance(items, Sized):
        return max(1, min(concurrency, len(items)))
    return concurrency


def unwrap_group(exc: BaseException) -> BaseException:
    """The one meaningful exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
