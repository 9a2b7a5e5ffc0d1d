"""The engine of one run: items → ready queue → workers → classify → retry | DLQ | abort.

Data flows one way::

    source ──(admit: key, skip finished)──► ready queue ──► worker (slot)
       ▲                                        ▲              │ attempt: guard, timeout,
       │ backpressure: bounded backlog          │              │ span, job(item)
       │                                        │ timer due    ▼
       │                               parked (loop timers) ◄─ classify ─► DLQ | abort
       │                                                       │
       └──────────────────── ack ◄── checkpoint writer ◄───────┘ finished

There are exactly ``concurrency`` workers, so a worker IS a concurrency slot.
A job waiting out its backoff (or an open circuit) is not in a worker: it sits
on a loop timer (the event loop's own heap, one handle per parked job, no
sleeping task) and re-enters the ready queue (``_ready.py``) when due. anyio
gives the structure (task groups, cancel scopes); the per-job hand-off uses
plain asyncio primitives, which measured ~10x cheaper than anyio streams.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Iterable
from contextlib import nullcontext
from typing import Any, Generic, TypeVar

import anyio

from asyncbatch._context import _current
from asyncbatch._errors import (
    AsyncBatchError,
    BatchAborted,
    CircuitOpen,
    DeadlineExceeded,
    ErrorKind,
    qualname,
)
from asyncbatch._observe._events import (
    BudgetExhausted,
    Event,
    EventDispatcher,
    JobDeadLettered,
    RetryScheduled,
    RunAborted,
    RunFinished,
    RunStarted,
)
from asyncbatch._observe._otel import Instrumentation
from asyncbatch._observe._report import ReportBuilder
from asyncbatch._policy._budget import BudgetExceeded, BudgetTracker
from asyncbatch._policy._classify import RejectedResult
from asyncbatch._policy._retry import Decision, next_delay
from asyncbatch._policy._testing_mode import testing_overrides
from asyncbatch._result import (
    AttemptRecord,
    BatchResult,
    JobOutcome,
    JobStatus,
    all_ok,
    count_statuses,
    fast_outcome,
)
from asyncbatch._store import FinishedJob, RunInfo, Store

from ._checkpoint import Checkpointer
from ._compensate import Compensation, Done, compensate_all
from ._entry import Entry
from ._options import Options
from ._ready import ReadyQueue

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
        self._sink = sink
        self._job_ref = job_ref
        self.counts = count_statuses()
        self.report = ReportBuilder(run_id)
        self._budget = BudgetTracker(opts.budget) if opts.budget is not None else None
        self._dispatcher = EventDispatcher(opts.on_event)
        self._inst: Instrumentation | None = None
        self._deps: Any = None
        self._checkpointer: Checkpointer | None = None
        self._classify = opts.classify
        self._result_rules = getattr(opts.classify, "checks_results", False)
        self._rng = opts.retry.rng()
        self._queue = ReadyQueue(
            self._admit,
            concurrency=opts.concurrency,
            backlog=backlog,
            max_backlog=max(4096, 4 * opts.concurrency),
        )
        self._parked: set[Entry] = set()
        self._interrupted: list[Entry] = []
        self._finished: dict[str, FinishedJob] = {}
        self._redrive: dict[int, tuple[int, str]] | None = None
        self._rollback_only = rollback_only
        self._done_log: list[Done] = []
        self._compensating_log = opts.compensate is not None
        self._skipped_at: dict[str, int | None] = {}
        self.compensation: Compensation | None = None
        self._report: Any = None
        self._abort_cause: BaseException | None = None
        self._work_scope: anyio.CancelScope | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._testing: tuple[bool, int | None] = (False, None)
        self.started_at = 0.0
        self.finished_at = 0.0
        self.resumed = False

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
        self._testing = testing_overrides()
        self._redrive = redrive
        loop = self._loop = asyncio.get_running_loop()
        self.started_at = time.time()
        t0 = loop.time()
        store = self.store
        if store is not None:
            prev = await store.begin_run(self._run_info())
            self.resumed = prev is not None
            if prev is not None and redrive is None:
                self._finished = await store.finished_jobs(self.run_id)
                if prev.status == "compensating" and self.opts.compensate is not None:
                    # The process died while rolling back: finish the rollback, not the batch.
                    self._rollback_only = True
                    reason = (prev.report or {}).get("aborted") or "an earlier abort"
                    self._abort_cause = AsyncBatchError(f"rollback resumed after {reason}")
                elif self._rollback_only:
                    self._abort_cause = AsyncBatchError("rollback requested")
            self._checkpointer = Checkpointer(store, self.opts.durability, self._ack)
            # New items wait while the writer falls behind (memory stays bounded).
            self._queue.watch(self._checkpointer)
        self._setup_dependencies()
        self._inst = Instrumentation.create(
            self.opts.tracer_provider, self.opts.meter_provider, self.run_id
        )
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
                    self._cancel_leftovers()
                    if self._abort_cause is not None and self.opts.compensate is not None:
                        if self._checkpointer is not None:
                            await self._checkpointer.flush()
                        await self._rollback()
                    status = "aborted" if self._abort_cause is not None else "finished"
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
        if self._abort_cause is not None:
            raise BatchAborted(result, self._abort_cause) from self._abort_cause
        return result

    def result(self, duration: float, outcomes: list[JobOutcome[R]]) -> BatchResult[R]:
        """The `BatchResult` with these outcomes (the caller orders them)."""
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
        self._report = self.report.build(
            started_at=self.started_at,
            finished_at=self.finished_at,
            breakers={k: v.to_dict() for k, v in self._deps.stats().items()}
            if self._deps
            else None,
            budget=self._budget.state() if self._budget else None,
            compensation=self.compensation.to_dict() if self.compensation else None,
            counts=self.counts,
            aborted=f"{type(self._abort_cause).__name__}: {self._abort_cause}"
            if self._abort_cause is not None
            else None,
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

    def _run_info(self) -> RunInfo:
        o = self.opts
        config = {
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
        from asyncbatch._deps._guard import Dependencies

        self._deps = Dependencies(
            run_id=self.run_id,
            limits=o.limits,
            rates=o.rates,
            breakers=o.breakers,
            classify=self._classify_exc,
            emit=self._emit,
        )

    def _emit(self, event: Event) -> None:
        self._dispatcher.emit(event)
        if self._inst is not None:
            self._inst.on_event(event)

    # ------------------------------------------------------------ the work

    async def _work(self, items: Iterable[Any] | AsyncIterable[Any]) -> None:
        deps_token = None
        if self._deps is not None:
            from asyncbatch._deps._guard import reset_dependencies, use_dependencies

            deps_token = use_dependencies(self._deps)
        try:
            with anyio.CancelScope() as self._work_scope:
                async with anyio.create_task_group() as tg:
                    async_items = self._queue.start(items)
                    if async_items is not None:
                        tg.start_soon(self._queue.feed, async_items)
                    run = self._pick_worker()
                    for _ in range(self.opts.concurrency):
                        tg.start_soon(run)
        finally:
            if deps_token is not None:
                reset_dependencies(deps_token)

    def _pick_worker(self) -> Callable[[], Coroutine[Any, Any, None]]:
        """The leanest worker loop that does everything this run needs."""
        o = self.opts
        if o.timeout or o.deadline or o.uses or self._deps is not None:
            return self._worker_full
        return self._worker_plain if self._inst is None else self._worker_traced

    def _admit(self, index: int | None, item: Any) -> Entry | None:
        """Make an entry for a new item, or acknowledge it as SKIPPED."""
        keyfn = self.opts.key
        redrive = self._redrive
        if redrive is not None and index is not None:
            dlq_id, key = redrive[index]
        elif keyfn is None:
            key = str(index)
        else:
            k = keyfn(item)
            key = k if isinstance(k, str) else str(k)
        if self._finished:
            done = self._finished.get(key)
            if done is not None and not (
                self.opts.retry_dead and done.status is JobStatus.DEAD_LETTERED
            ):
                if self.opts.compensate is not None:
                    self._skipped_at[key] = index
                self._ack(
                    JobOutcome(
                        key=key,
                        status=JobStatus.SKIPPED,
                        result=done.result,
                        attempts=done.attempts,
                        index=index,
                    )
                )
                return None
        entry = Entry(self.run_id, index, key, item)
        if redrive is not None and index is not None:
            entry.redrive_of = dlq_id
        return entry

    # The three worker loops repeat their first lines on purpose: a shared
    # helper would cost a call per job on the hottest path (measured), and the
    # plain loop is what the no-op benchmarks compare against bare asyncio.

    async def _worker_plain(self) -> None:
        """The hot loop: no timeouts, guards or spans to wrap the call in."""
        job = self.job
        perf = time.perf_counter
        set_job, reset_job = _current.set, _current.reset
        next_entry, wait = self._queue.next, self._queue.wait
        while True:
            entry = next_entry()
            if entry is None:
                if await wait():
                    continue
                return
            entry.attempt += 1
            token = set_job(entry)
            start = perf()
            if entry.attempt == 1:
                entry.started = start
            try:
                result = await job(entry.item)
            except Exception as exc:
                self._failed(entry, exc, start)
            except BaseException:
                self._interrupted.append(entry)
                raise
            else:
                if self._result_rules and self._rejected(entry, result, start):
                    continue
                self._succeeded(entry, result)
            finally:
                reset_job(token)

    async def _worker_traced(self) -> None:
        """The hot loop with an attempt span around each call (no guards or timeouts)."""
        inst = self._inst
        assert inst is not None
        job = self.job
        perf = time.perf_counter
        set_job, reset_job = _current.set, _current.reset
        next_entry, wait = self._queue.next, self._queue.wait
        metered = inst.metered
        while True:
            entry = next_entry()
            if entry is None:
                if await wait():
                    continue
                return
            entry.attempt += 1
            token = set_job(entry)
            start = perf()
            if entry.attempt == 1:
                entry.started = start
            try:
                with inst.attempt(entry.key, entry.attempt) as scope:
                    if metered:
                        inst.in_flight(1)
                    try:
                        result = await job(entry.item)
                    except Exception as exc:
                        kind, delay = self._failed(entry, exc, start)
                        scope.failed(kind, exc, retry_in=delay)
                    except BaseException:
                        self._interrupted.append(entry)
                        raise
                    else:
                        if self._result_rules and self._rejected(entry, result, start, scope):
                            continue
                        self._succeeded(entry, result)
                    finally:
                        if metered:
                            inst.in_flight(-1)
            finally:
                reset_job(token)

    async def _worker_full(self) -> None:
        """The general loop: deadline, timeout, ``uses=`` guards, attempt spans."""
        next_entry, wait = self._queue.next, self._queue.wait
        while True:
            entry = next_entry()
            if entry is None:
                if await wait():
                    continue
                return
            await self._attempt(entry)

    async def _attempt(self, entry: Entry) -> None:
        loop = self._loop
        assert loop is not None
        o = self.opts
        entry.attempt += 1
        token = _current.set(entry)
        start = time.perf_counter()
        if entry.attempt == 1:
            entry.started = start
            if o.deadline is not None:
                entry.deadline_at = loop.time() + o.deadline
        scope_cm: Any = (
            self._inst.attempt(entry.key, entry.attempt)
            if self._inst is not None
            else nullcontext()
        )
        try:
            with scope_cm as scope:
                if self._inst is not None:
                    self._inst.in_flight(1)
                try:
                    result = await self._call(entry, loop)
                except Exception as exc:
                    if isinstance(exc, CircuitOpen):
                        if scope is not None:
                            scope.rejected(exc.dependency)
                        await self._circuit_open(entry, exc, start)
                        return
                    kind, delay = self._failed(entry, exc, start)
                    if scope is not None:
                        scope.failed(kind, exc, retry_in=delay)
                except BaseException:
                    self._interrupted.append(entry)
                    raise
                else:
                    if self._result_rules and self._rejected(entry, result, start, scope):
                        return
                    self._succeeded(entry, result)
                finally:
                    if self._inst is not None:
                        self._inst.in_flight(-1)
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

    # ------------------------------------------------------------ outcomes

    def _succeeded(self, entry: Entry, result: Any) -> None:
        if entry.history:
            outcome = entry.outcome(JobStatus.SUCCEEDED, result=result)
        else:
            outcome = fast_outcome(
                entry.key,
                JobStatus.SUCCEEDED,
                result,
                entry.attempt,
                time.perf_counter() - entry.started,
                entry.index,
            )
        if self._compensating_log:
            self._done_log.append(
                Done(entry.key, entry.item, result, entry.index, JobStatus.SUCCEEDED)
            )
        if self._checkpointer is None:  # the hot path, inlined
            self._queue.finished()
            self._ack(outcome)
        else:
            self._finish(entry, outcome)

    def _finish(
        self, entry: Entry, outcome: JobOutcome[Any], exc: BaseException | None = None
    ) -> None:
        """The job is over: checkpoint it (acknowledged after commit) or acknowledge now."""
        self._queue.finished()
        cp = self._checkpointer
        if cp is None:
            self._ack(outcome)
        else:
            cp.add(
                entry.record(outcome, keep_payload=self.opts.compensate is not None, exc=exc),
                outcome,
            )

    def _rejected(self, entry: Entry, result: Any, start: float, scope: Any = None) -> bool:
        """Whether a classifier rule turns this returned value into a failure."""
        kind = self._classify.classify_result(result)  # type: ignore[attr-defined]
        if kind is None:
            return False
        error = RejectedResult(result)
        kind, delay = self._failed(entry, error, start, kind=kind)
        if scope is not None:
            scope.failed(kind, error, retry_in=delay)
        return True

    def _classify_exc(self, exc: BaseException) -> ErrorKind:
        kind = self._classify(exc)
        return kind if isinstance(kind, ErrorKind) else ErrorKind(kind)

    def _failed(
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
        now = time.time()
        if kind is None:
            kind = (
                ErrorKind.TRANSIENT
                if isinstance(exc, DeadlineExceeded)
                else self._classify_exc(exc)
            )
        entry.kind = kind
        if not entry.history:
            entry.history = []
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
            decision = self.opts.on_error(exc, entry)
        delay = self._retry_delay(entry, kind, exc, decision)
        self.report.attempt_failed(entry.key, kind, exc, now, delay is not None)
        if self._budget is not None:
            verdict = self._budget.record_attempt(kind, delay is not None)
            if verdict is not None:
                self._budget_exhausted(verdict)
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
            self._park(entry, delay)
            return kind, delay
        self._dead_letter(entry, exc, kind)
        return kind, None

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
            self._rng,
            self._testing,
        )
        if delay is None:
            return None
        entry.prev_delay = delay
        if entry.deadline_at is not None:
            assert self._loop is not None
            if self._loop.time() + delay >= entry.deadline_at:
                return None
        return delay

    async def _circuit_open(self, entry: Entry, exc: CircuitOpen, start: float) -> None:
        """A guard rejected the call: park, fail or fall back, per the breaker's policy."""
        breaker = self._deps.breaker(exc.dependency) if self._deps is not None else None
        policy = getattr(breaker, "on_open", "park")
        if policy == "park":
            entry.attempt -= 1  # a rejected call is not an attempt
            self._park(entry, max(exc.retry_in, 0.0))
            return
        if policy == "fallback" and breaker is not None and breaker.fallback is not None:
            try:
                result = await breaker.fallback(entry.item, exc)
            except Exception as fallback_error:
                # A failing fallback is this attempt's failure, handled by its kind.
                self._failed(entry, fallback_error, start)
                return
            self._finish(entry, entry.outcome(JobStatus.SUCCEEDED, result=result, fell_back=True))
            return
        # on_open="fail": dead-letter at once, naming the dependency.
        self._failed(entry, exc, start, kind=ErrorKind.RECOVERABLE)

    def _park(self, entry: Entry, delay: float) -> None:
        loop = self._loop
        assert loop is not None
        self._parked.add(entry)
        entry.timer = loop.call_later(delay, self._unpark, entry)

    def _unpark(self, entry: Entry) -> None:
        entry.timer = None
        self._parked.discard(entry)
        if self._abort_cause is not None:
            self._interrupted.append(entry)
            return
        self._queue.push(entry)

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
        self._finish(entry, outcome, exc)

    def _ack(self, outcome: JobOutcome[Any]) -> None:
        """An outcome is final (committed, when there is a store): count and deliver it."""
        self.counts[outcome.status] += 1
        self.report.job_finished(outcome)
        if self._inst is not None:
            self._inst.job_finished(outcome.status)
        if self._budget is not None:
            verdict = self._budget.record_job(outcome)
            if verdict is not None:
                self._budget_exhausted(verdict)
        if self._sink is not None:
            self._sink(outcome)
        if self._queue.held_back:
            self._queue.relieve()

    def relieve(self) -> None:
        """A stream reader took outcomes: the backlog shrank."""
        self._queue.relieve()

    # ------------------------------------------------------------ rollback

    async def _rollback(self) -> None:
        """Undo every succeeded job (earlier runs first in completion order)."""
        assert self.opts.compensate is not None
        earlier = sorted(
            (f for f in self._finished.values() if f.status is JobStatus.SUCCEEDED),
            key=lambda f: f.seq,
        )
        done = [
            Done(f.key, f.payload, f.result, self._skipped_at.get(f.key), JobStatus.SKIPPED)
            for f in earlier
        ]
        done += self._done_log
        self.compensation = Compensation(resumed=self._rollback_only)
        store = self.store
        if store is not None:
            counts = {s.value: n for s, n in self.counts.items()}
            await store.end_run(self.run_id, "compensating", counts, self._abort_report())
        await compensate_all(
            done,
            self.opts.compensate,
            run_id=self.run_id,
            store=store,
            durability=self.opts.durability,
            retry=self.opts.compensate_retry,
            rng=self._rng,
            ack=self._compensated,
            summary=self.compensation,
        )

    def _compensated(self, outcome: JobOutcome[Any], replaces: JobStatus) -> None:
        if outcome.index is not None or replaces is JobStatus.SUCCEEDED:
            self.counts[replaces] -= 1
        self._ack(outcome)

    def _abort_report(self) -> dict[str, Any]:
        cause = self._abort_cause
        return {"aborted": None if cause is None else f"{type(cause).__name__}: {cause}"}

    # --------------------------------------------------------------- abort

    def _budget_exhausted(self, verdict: BudgetExceeded) -> None:
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
            self._abort(verdict)

    def _fail_batch(self, entry: Entry, exc: BaseException, kind: ErrorKind) -> None:
        entry.kind = kind
        self._queue.finished()
        self._ack(entry.outcome(JobStatus.FAILED, error=exc))
        self._abort(exc)

    def _abort(self, cause: BaseException) -> None:
        if self._abort_cause is not None:
            return
        self._abort_cause = cause
        self._emit(
            RunAborted(run_id=self.run_id, error_type=qualname(type(cause)), message=str(cause))
        )
        self._interrupted += self._queue.stop()
        if self._work_scope is not None:
            self._work_scope.cancel()

    def _cancel_leftovers(self) -> None:
        """Jobs still admitted when the work stopped end CANCELLED (they re-run on resume)."""
        leftovers = [*self._interrupted, *self._queue.stop(), *self._parked]
        self._interrupted, self._parked = [], set()
        leftovers.sort(key=lambda e: -1 if e.index is None else e.index)
        for entry in leftovers:
            if entry.timer is not None:
                entry.timer.cancel()
            self._ack(entry.outcome(JobStatus.CANCELLED))


def unwrap_group(exc: BaseException) -> BaseException:
    """The one meaningful exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
