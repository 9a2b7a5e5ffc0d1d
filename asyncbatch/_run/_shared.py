"""Shared runs: many worker processes, on many machines, work one run on PostgreSQL.

The coordinator (``run_batch(..., store="postgresql://...", shared=True)``)
writes its input as leased chunks and works on them too; ``asyncbatch
worker`` processes join from anywhere (`_worker.work`). Each process runs
*sessions*: one ordinary `Engine` whose input is the chunks this process
claims (`Session.items`, a `KeyedSource`: keys and positions come from the
chunk) and whose store is a `SessionStore` that fences every group commit
(`SharedBoard.commit`: leases renewed where owner and epoch match, records
of lost chunks dropped, in the same transaction). So retries, dead letters,
classification, breakers and the checkpoint writer are exactly the
single-process ones.

A session's heartbeat (`Session.beat`, every `BEAT` seconds) renews its
leases, writes its counts, reads the run row and acts on it: an abort
decided anywhere (one compare-and-swap on the run row) stops the engine
here within a beat; the error budget is judged on every worker's counts
summed. A session that cannot renew its leases for a whole lease *fences
itself*: it stops starting attempts and ends (its chunks went, or will go,
to other workers; what it commits later is dropped by the fencing). The
process then joins again, in a new session, once the database answers.

What is per process: breakers (``fail_max`` counts this process's
failures), event hooks and OpenTelemetry (the process's own). Bulkheads and
rate limits are split among the live workers, recomputed on the heartbeat
(`Dependencies.share`), unless ``SharedRun(exact_limits=...)`` makes them
exact: then the database holds them (`_deps._global`), and the heartbeat
renews the session's slot leases with its chunks'.
"""

from __future__ import annotations

import asyncio
import base64
import os
import pickle
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc

from asyncbatch._errors import AsyncBatchError, BatchAborted, ConfigError, ErrorKind, StoreError
from asyncbatch._observe._report import ErrorReport, merge_reports
from asyncbatch._policy._budget import BudgetTracker
from asyncbatch._result import AttemptRecord, BatchResult, JobOutcome, JobStatus
from asyncbatch._store import FinishedJob, JobRecord, RunInfo, RunStatus
from asyncbatch._store._codec import stored_result

from ._admission import Ahead, KeyedSource
from ._engine import Engine, unwrap_group
from ._entry import Entry
from ._options import Options, build_options
from ._shared_budget import RunWideTracker

if TYPE_CHECKING:
    from asyncbatch._deps._global import ExactLimits
    from asyncbatch._store._postgres import PostgresStore
    from asyncbatch._store._postgres_shared import Chunk, Retry, RunState, SharedBoard

    from ._ready import ReadyQueue

__all__ = [
    "BEAT",
    "OnEngine",
    "Session",
    "SessionStore",
    "finished_statuses",
    "new_owner",
    "policy_config",
    "result_from_store",
    "run_session",
    "wait_for_quiet",
    "wait_for_workers",
    "whole_report",
    "worker_options",
]

OnEngine = Callable[[Engine[Any]], AbstractContextManager[object]]
"""A context manager around each session's engine run (a `Batch` steers it meanwhile)."""

BEAT = 0.1
"""Seconds between a session's heartbeats: how soon it sees an abort decided elsewhere."""
_POLL_MIN, _POLL_MAX = 0.02, 0.25  # backoff while nothing can be claimed


def new_owner() -> str:
    """``host:pid:token``, as a run's lease owner is named."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


# ------------------------------------------------------------------ policy

_POLICY_FIELDS = (
    "classify", "retry", "on_error", "timeout", "deadline", "limits", "rates", "breakers",
    "uses", "budget", "result_codec", "retry_dead", "durability", "adaptive",
    "retry_budget", "hedge",
)  # fmt: skip


def policy_config(opts: Options) -> str:
    """The options every worker applies, pickled for the run config.

    Raises:
        ConfigError: an option cannot be sent to other processes (a lambda,
            a closure): define it at module level.
    """
    policy = {name: getattr(opts, name) for name in _POLICY_FIELDS}
    try:
        data = pickle.dumps(policy)
    except Exception as exc:
        raise ConfigError(
            f"a shared run sends its options to every worker, and one cannot be pickled "
            f"({type(exc).__name__}: {exc}); HINT: define classifiers, predicates and "
            "handlers at module level, not as lambdas or closures"
        ) from None
    return base64.b64encode(data).decode("ascii")


def worker_options(config: dict[str, Any], *, concurrency: int | None) -> Options:
    """The options a worker runs with: the stored policy, its own concurrency.

    The stored policy is unpickled: only join runs of a database you trust
    (as you trust the job module you import).
    """
    shared = config.get("shared") or {}
    policy = pickle.loads(base64.b64decode(shared["policy"]))
    opts = build_options(concurrency=concurrency or int(config.get("concurrency") or 100))
    if concurrency is not None:
        policy["adaptive"] = None  # --concurrency N: this worker runs exactly N at once
    return replace(opts, **policy)


# ------------------------------------------------------------------ one session


class Session:
    """One engine's share of a shared run: claims chunks, fences commits, beats.

    Args:
        board: the shared-run statements over the open store.
        run_id: the run.
        owner: this session's owner name (``host:pid:token``).
        lease: seconds a claim holds.
        claim: chunks claimed at once.
        finished: statuses whose jobs are not run again (succeeded, dead
            unless ``retry_dead``, never compensated).
        budget: the run's error budget (judged on every worker's counts).
    """

    def __init__(
        self,
        board: SharedBoard,
        run_id: str,
        *,
        owner: str,
        lease: float,
        claim: int,
        finished: Sequence[str],
        budget: Any = None,
    ) -> None:
        self.board = board
        self.run_id = run_id
        self.owner = owner
        self.lease = lease
        self._claim_n = max(1, claim)
        self._finished = list(finished)
        self.held: dict[int, int] = {}
        """Chunks this session holds → their epoch."""
        self._left: dict[int, int] = {}
        """Chunks held → keys not committed yet."""
        self._chunk_of: dict[str, int] = {}
        """Keys in flight → their chunk."""
        self.lost = 0
        """Chunks lost to another worker (their records dropped)."""
        self.fenced = False
        self.engine: Engine[Any] | None = None
        self.counter: BudgetTracker | None = None
        self._budget = budget
        self._judge = BudgetTracker(budget) if budget is not None else None
        self._renewed = time.monotonic()
        self._renew_at = 0.0
        self._counted_at = 0.0
        self._among = 1  # workers the bulkheads and rate limits are split among
        self._posted_abort = False
        self._written: dict[str, Any] = {}
        self.state: RunState | None = None
        self._stop = False
        self._handoffs: list[Retry] = []
        """Retries handed back to the run, written by the next (fenced) commit."""
        self.handed_off = 0
        self._lock = asyncio.Lock()  # commits' chunk bookkeeping must not interleave
        self.limits: ExactLimits | None = None  # exact limits: slot leases renewed by beat

    # -------------------------------------------------------------- input

    def source(self) -> KeyedSource:
        """The engine's input: items of the chunks this session claims."""
        ahead: deque[Ahead] = deque()
        return KeyedSource(self._items(ahead), ahead)

    async def _items(self, ahead: deque[Ahead]) -> AsyncIterator[Any]:
        delay = _POLL_MIN
        while not self._stop:
            chunks = await self.board.claim(self.run_id, self.owner, self._claim_n, self._finished)
            if not chunks:
                state = await self.board.state(self.run_id)
                self.state = state
                if state.status != "running" or state.abort_reason is not None:
                    return
                if state.input_done and state.open == 0:
                    return
                if state.held and await self.board.free_gone(self.run_id):
                    continue  # a holder killed on this host: its chunks are claimable now
                await anyio.sleep(delay)
                delay = min(delay * 2, _POLL_MAX)
                continue
            delay = _POLL_MIN
            empty: dict[int, int] = {}
            work: list[tuple[Chunk, list[tuple[int, str, Any]]]] = []
            chunk_of = self._chunk_of
            for chunk in chunks:
                self.held[chunk.no] = chunk.epoch
                todo = []
                mine: set[str] = set()
                for idx, key, item in zip(chunk.idxs, chunk.keys, chunk.items, strict=True):
                    # A key finished before, or in flight here from another chunk or this
                    # one (a key the input holds twice): one job, run once by this worker.
                    if key in chunk.done or key in mine or chunk_of.get(key, chunk.no) != chunk.no:
                        continue
                    mine.add(key)
                    chunk_of[key] = chunk.no
                    todo.append((idx, key, item))
                self._left[chunk.no] = len(todo)
                if not todo:
                    empty[chunk.no] = chunk.epoch
                work.append((chunk, todo))
            if empty:  # nothing of theirs left to run: just mark them done
                await self._commit([], also=list(empty))
            for chunk, todo in work:
                restore = _restorer(chunk.retry) if chunk.retry is not None else None
                for idx, key, item in todo:
                    if self._stop:
                        return
                    ahead.append((idx, key) if restore is None else (idx, key, restore))
                    yield item

    # -------------------------------------------------------------- commits

    async def _commit(self, records: Sequence[JobRecord], also: Sequence[int] = ()) -> None:
        """The fenced group commit of ``records`` (``also``: chunks found all done).

        It also writes the retries handed back to the run since the last one.
        """
        async with self._lock:
            handoffs, self._handoffs = self._handoffs, []
            try:
                await self._commit_locked(records, also, handoffs)
            except BaseException:
                self._handoffs[:0] = handoffs  # the next commit writes them
                raise

    async def _commit_locked(
        self, records: Sequence[JobRecord], also: Sequence[int], handoffs: list[Retry]
    ) -> None:
        per_chunk: dict[int, int] = dict.fromkeys(also, 0)
        chunk_of = self._chunk_of
        for r in records:
            no = chunk_of.get(r.key)
            if no is not None:
                per_chunk[no] = per_chunk.get(no, 0) + 1
        for h in handoffs:
            per_chunk[h.chunk] = per_chunk.get(h.chunk, 0) + 1
        left, held = self._left, self.held
        fence = {
            no: (held[no], left.get(no, 1) - n <= 0) for no, n in per_chunk.items() if no in held
        }
        kept = await self.board.commit(
            records,
            run_id=self.run_id,
            owner=self.owner,
            fence=fence,
            chunk_of=lambda r: chunk_of.get(r.key),
            retries=handoffs,
        )
        for r in records:
            chunk_of.pop(r.key, None)
        for h in handoffs:
            chunk_of.pop(h.key, None)
        for no, (_, finished) in fence.items():
            if no not in kept:
                self._lose(no)
            elif finished:
                held.pop(no, None)
                left.pop(no, None)
            else:
                left[no] -= per_chunk[no]

    def park_hook(
        self, park: Callable[[Entry, float], None], queue: ReadyQueue
    ) -> Callable[[Entry, float], None]:
        """The outcome path's ``park``, handing retries longer than half a lease back to the run.

        A short backoff stays on this worker's timer. A longer one would hold
        its chunk's lease for nothing (and be lost with this worker): the job
        leaves this worker and becomes a row that any worker claims when it
        is due, with its attempts so far.
        """
        from asyncbatch._store._postgres_shared import Retry

        def hand_off(entry: Entry, delay: float) -> None:
            chunk = self._chunk_of.get(entry.key)
            if (
                delay <= self.lease / 2 or chunk is None or entry.index is None
                or chunk in self.board.local  # its item stays in this process
            ):  # fmt: skip
                park(entry, delay)
                return
            queue.finished()  # it ends here; the run keeps it as a due-at row
            self.handed_off += 1
            state = {
                "attempt": entry.attempt,
                "history": [a.to_dict() for a in entry.history],
                "prev_delay": entry.prev_delay,
                "kind": None if entry.kind is None else entry.kind.value,
            }
            no = -((entry.attempt << 40) + entry.index + 1)
            self._handoffs.append(
                Retry(chunk=chunk, no=no, key=entry.key, index=entry.index, item=entry.item,
                      delay=delay, state=state)
            )  # fmt: skip

        return hand_off

    def _lose(self, no: int) -> None:
        if self.held.pop(no, None) is not None:
            self.lost += 1
        self._left.pop(no, None)

    # -------------------------------------------------------------- heartbeat

    async def beat(self) -> None:
        """Renew, count, read the run row and act on it, every `BEAT` s (a service task)."""
        while True:
            await anyio.sleep(BEAT)
            started = time.monotonic()
            # Shielded (a transaction is never cut in the middle), bounded instead.
            with anyio.CancelScope(shield=True):
                try:
                    with anyio.fail_after(max(self.lease / 3, BEAT)):
                        await self._beat_once(started)
                except (StoreError, TimeoutError, OSError):
                    pass
            if time.monotonic() - self._renewed > self.lease:
                self._fence()
                return

    async def _beat_once(self, started: float) -> None:
        board = self.board
        if started >= self._renew_at:
            held = dict(self.held)
            kept = await board.renew(self.run_id, self.owner, held)
            for no in held:
                if no not in kept:
                    self._lose(no)
            if self.limits is not None:  # its slot leases: renewed with its chunks
                await self.limits.renew()
            self._renewed = started
            self._renew_at = started + self.lease / 4
        if self.counter is not None or started >= self._counted_at:
            # With a budget, every beat: the run-wide verdict is as fresh as the counts.
            self._counted_at = started + self.lease / 4
            counts = self.counter.totals() if self.counter is not None else {}
            await board.beat(self.run_id, self.owner, counts)
            self._written = counts  # what the run-wide sums hold of this worker
            deps = self.engine._deps if self.engine is not None else None
            if deps is not None:  # bulkheads and rate limits: split among live workers
                workers = max(1, await board.live_workers(self.run_id, self.lease))
                if workers != self._among:
                    self._among = workers
                    deps.share(workers)
        if self._handoffs:
            await self._commit([])
        state = self.state = await board.state(self.run_id)
        if not self.held:  # nothing to lose: reaching the database is enough
            self._renewed = max(self._renewed, started)
        engine = self.engine
        if engine is None or self._posted_abort:
            return
        abort = engine._abort
        if state.abort_reason is not None:
            self._posted_abort = True
            if abort.cause is None:
                abort.abort(AsyncBatchError(f"the run was aborted: {state.abort_reason}"))
            return
        if self._judge is not None and abort.cause is None:
            verdict = await self._judge_budget()
            if verdict is not None:
                abort.budget_exhausted(verdict)
        cause = abort.cause
        if cause is not None and not self.fenced:  # decided here: one CAS tells every worker
            self._posted_abort = True
            await board.abort(self.run_id, f"{type(cause).__name__}: {cause}")

    async def _judge_budget(self) -> Any:
        assert self._judge is not None
        total: dict[str, Any] = {"jobs": 0, "failures": 0, "retries": 0, "by_kind": {}}
        for counts in await self.board.worker_counts(self.run_id):
            for name in ("jobs", "failures", "retries"):
                total[name] += int(counts.get(name, 0))
            for kind, n in (counts.get("by_kind") or {}).items():
                total["by_kind"][kind] = total["by_kind"].get(kind, 0) + int(n)
        if isinstance(self.counter, RunWideTracker):
            self.counter.seen(total, self._written)
        return self._judge.judge_totals(**total)

    def _fence(self) -> None:
        """No renewal for a whole lease: start no attempt more, end the session."""
        self.fenced = True
        self._stop = True
        engine = self.engine
        if engine is not None:
            engine._queue.stop()
            scope = engine._abort.work_scope
            if scope is not None:
                scope.cancel()

    def stop(self) -> None:
        """Claim nothing more (the run ended, or the process is told to stop)."""
        self._stop = True

    async def release(self) -> None:
        """Let the chunks still held go at once (the session ends)."""
        held, self.held = dict(self.held), {}
        if held and not self.fenced:
            with anyio.move_on_after(self.lease / 2):
                try:
                    await self.board.release(self.run_id, self.owner, held)
                except StoreError:
                    pass


class SessionStore:
    """The store as a session's engine sees it: commits fenced, the run joined, not owned.

    Many sessions work one run at once, so a session neither takes nor
    releases the run's lease (the coordinator holds it); its "end of run"
    is its worker row's report.
    """

    def __init__(self, store: PostgresStore, session: Session) -> None:
        self._store = store
        self._session = session
        self.dlq = store.dlq
        self.url = store.url

    async def begin_run(self, run: RunInfo, *, owner: str | None = None, lease: float = 0) -> None:
        """Join the run: nothing to take (the engine then treats it as new)."""

    async def heartbeat(self, run_id: str, owner: str) -> None:
        """The session's own heartbeat renews its leases (`Session.beat`)."""

    async def end_run(
        self,
        run_id: str,
        status: RunStatus,
        counts: dict[str, int],
        report: dict[str, Any] | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        """Store this session's report on its worker row."""
        s = self._session
        if s.fenced:
            return
        totals = s.counter.totals() if s.counter is not None else {}
        with anyio.move_on_after(s.lease):
            await s.board.beat(s.run_id, s.owner, totals, report=report, stopped=True)

    async def commit(
        self, records: Sequence[JobRecord], *, durability: Literal["normal", "full"] = "normal"
    ) -> None:
        """The fenced group commit (see `SharedBoard.commit`)."""
        await self._session._commit(records)

    async def get_run(self, run_id: str) -> RunInfo:
        return await self._store.get_run(run_id)

    async def list_runs(self) -> list[RunInfo]:
        return await self._store.list_runs()

    async def finished_jobs(self, run_id: str) -> dict[str, FinishedJob]:
        return await self._store.finished_jobs(run_id)

    async def lookup(self, run_id: str, keys: Sequence[str]) -> dict[str, FinishedJob]:
        return await self._store.lookup(run_id, keys)

    async def last_seq(self, run_id: str) -> int:
        return await self._store.last_seq(run_id)

    async def count_jobs(self, run_id: str) -> dict[str, int]:
        return await self._store.count_jobs(run_id)

    async def jobs(self, run_id: str) -> list[FinishedJob]:
        return await self._store.jobs(run_id)

    async def aclose(self) -> None:
        """The session does not own the store."""


class _Forget(list[Any]):
    """A list that keeps nothing: a worker's succeeded jobs are undone from the store."""

    def append(self, item: Any) -> None:
        pass


def _restorer(state: dict[str, Any]) -> Callable[[Entry], None]:
    """Puts a handed-back retry's attempts so far onto its new entry."""
    history = [AttemptRecord.from_dict(a) for a in state.get("history") or ()]
    kind = state.get("kind")

    def restore(entry: Entry) -> None:
        entry.attempt = int(state.get("attempt") or 0)
        entry.history = list(history)
        entry.prev_delay = float(state.get("prev_delay") or 0.0)
        entry.kind = None if kind is None else ErrorKind(kind)
        entry.started = time.perf_counter()

    return restore


def finished_statuses(retry_dead: bool) -> list[str]:
    """Statuses whose jobs a claim does not run again."""
    done = [JobStatus.SUCCEEDED.value]
    if not retry_dead:
        done.append(JobStatus.DEAD_LETTERED.value)
    return done


async def run_session(
    job: Callable[[Any], Awaitable[Any]],
    opts: Options,
    board: SharedBoard,
    run_id: str,
    *,
    lease: float,
    chunk_size: int,
    keep_items: bool,
    job_ref: str = "",
    sink: Callable[[JobOutcome[Any]], None] | None = None,
    exact_limits: bool | Collection[str] = False,
    on_engine: OnEngine | None = None,
) -> Session:
    """Work the run until nothing is left to claim, it ends, or the session fences itself.

    Returns the session (``fenced``, ``lost``, its engine's counts); a run-wide
    abort seen here ends it too (`BatchAborted` is not raised: the caller reads
    the run row).
    """
    budget = opts.budget
    session = Session(
        board,
        run_id,
        owner=new_owner(),
        lease=lease,
        claim=min(100, max(1, -(-opts.concurrency // chunk_size))),
        finished=finished_statuses(opts.retry_dead),
        budget=budget,
    )
    local = replace(opts, budget=None, compensate=None, store=None, run_id=run_id)
    # A job gets its row once (claims skip keys that have one), so commits take the
    # plain INSERT; a row met after all (retry_dead=) makes the store redo with upserts.
    board.store._fresh.add(run_id)
    store = SessionStore(board.store, session)
    engine: Engine[Any] = Engine(
        job,
        local,
        run_id=run_id,
        store=store,
        sink=sink,  # the coordinator keeps its own jobs' outcomes (run(): its result)
        job_ref=job_ref,
    )
    session.engine = engine
    engine._queue.read_ahead = chunk_size  # a claimed chunk's items are in memory anyway
    outcomes = engine._outcomes
    if budget is not None:
        session.counter = outcomes.budget = RunWideTracker(budget)  # judged as jobs finish
    if keep_items:
        outcomes._keep_done = True  # a rollback (the coordinator's) needs the items stored
        outcomes.done = _Forget()  # ...from the store: this process rolls nothing back
    outcomes.park = session.park_hook(outcomes.park, engine._queue)  # type: ignore[method-assign,assignment]
    try:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(session.beat)
                if exact_limits:
                    _exact(engine, session, opts, exact_limits, tg)
                try:
                    with on_engine(engine) if on_engine is not None else nullcontext():
                        await engine.execute(session.source())
                except BatchAborted:
                    pass
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The task group wraps what its body raised: a lost database (a
            # statement cancelled while this process was stopped, say) must
            # reach the caller as the StoreError it is, which starts a new session.
            inner = unwrap_group(group)
            if isinstance(inner, StoreError):
                raise inner from None
            raise
    except StoreError:
        if not session.fenced:
            raise
    finally:
        with anyio.CancelScope(shield=True):
            await session.release()
            if session.limits is not None and not session.fenced:
                with anyio.move_on_after(lease / 2):
                    await session.limits.aclose()
    return session


def _exact(
    engine: Engine[Any],
    session: Session,
    opts: Options,
    spec: bool | Collection[str],
    tg: anyio.abc.TaskGroup,
) -> None:
    """Make the session's limits exact (``SharedRun(exact_limits=...)``) once its engine has them.

    The engine builds its dependencies when it starts executing: they are made
    exact right then, and their database task is started in ``tg``.
    """
    from asyncbatch._deps._global import exact_limits, exact_names

    names = exact_names(spec, opts.limits, opts.rates)
    setup = engine._setup_dependencies

    def setup_exact() -> None:
        setup()
        limits = exact_limits(
            session.board.store, engine._deps, names, run_id=session.run_id,
            owner=session.owner, lease=session.lease,
        )  # fmt: skip
        if limits is not None:
            session.limits = limits
            tg.start_soon(limits.run)

    engine._setup_dependencies = setup_exact  # type: ignore[method-assign]


# ------------------------------------------------------------------ helpers


def whole_report(reports: list[dict[str, Any]], counts: dict[str, int]) -> dict[str, Any]:
    """The run's report: every worker's report merged, counts from SQL."""
    merged: ErrorReport | None = None
    for d in reports:
        r = ErrorReport.from_dict(d)
        merged = r if merged is None else merge_reports(merged, r)
    if merged is None:
        merged = ErrorReport.from_dict({})
    dead = counts.get(JobStatus.DEAD_LETTERED.value, 0)
    return replace(merged, counts=counts, dead_lettered=dead).to_dict()


def result_from_store(
    run_id: str, jobs: list[FinishedJob], run: RunInfo, duration: float, codec: Any
) -> BatchResult[Any]:
    """The whole run's `BatchResult`, read back from the store (outcomes in input order)."""
    outcomes: list[JobOutcome[Any]] = []
    for j in sorted(jobs, key=lambda j: (j.index is None, j.index or 0)):
        outcomes.append(
            JobOutcome(key=j.key, status=j.status, result=stored_result(j, codec),
                       attempts=j.attempts, index=j.index)
        )  # fmt: skip
    counts = dict.fromkeys(JobStatus, 0)
    for name, n in run.counts.items():
        counts[JobStatus(name)] = n
    report = ErrorReport.from_dict(run.report or {})
    return BatchResult(
        run_id=run_id, outcomes=outcomes, counts=counts, report=report, duration=duration
    )


async def wait_for_quiet(board: SharedBoard, run_id: str, lease: float) -> None:
    """Wait until no chunk of the run is held under a live lease (every worker stopped)."""
    deadline = time.monotonic() + lease + 2 * BEAT
    while time.monotonic() < deadline:
        if (await board.state(run_id)).held == 0:
            return
        await asyncio.sleep(BEAT / 2)


async def wait_for_workers(board: SharedBoard, run_id: str, lease: float) -> None:
    """Wait until no worker of the run beats without having stopped (bound it by a scope)."""
    while True:
        if await board.live_workers(run_id, lease) == 0:
            return
        await asyncio.sleep(BEAT / 2)
