"""The coordinator of a shared run, and the loop every worker process runs.

`coordinate` is ``run_batch(..., shared=True)``: it takes the run's lease
(one coordinator per run), stores the job reference and the policy every
worker applies, writes the input as chunks while it works on them too
(`enqueue`, `work_run`), and when every chunk is done finishes the run by
compare-and-swap and returns the whole run's `BatchResult`, read back from
the database. After an abort decided anywhere it waits for the workers to
stop, then rolls the whole run back (newest first, crash-safe: an
interrupted rollback is finished by running the coordinator again).

`work_run` is what `asyncbatch worker` runs for one run: sessions one after
another (`_shared.run_session`) until the run has nothing left, ended, or
was aborted; a session that fenced itself, or lost the database, is
followed by a new one once the database answers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sized
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio

from asyncbatch._deps._global import exact_names, forget_limits
from asyncbatch._errors import AsyncBatchError, BatchAborted, ConfigError, StoreError, UnknownRun
from asyncbatch._result import BatchResult, JobOutcome
from asyncbatch._store import RunInfo

from . import _shared_resume as _resume
from ._engine import Engine
from ._identity import callable_name, key_spec
from ._lease import Lease
from ._options import Options, postgres_url
from ._shared import (
    OnEngine,
    policy_config,
    run_session,
    wait_for_quiet,
    wait_for_workers,
    whole_report,
)
from ._shared_enqueue import Skipped, enqueue
from ._shared_run import SharedRun

if TYPE_CHECKING:
    from asyncbatch._store._postgres import PostgresStore
    from asyncbatch._store._postgres_shared import RunState, SharedBoard

__all__ = ["coordinate", "open_shared_store", "work", "work_run"]

def session_settings(lease: float) -> dict[str, str]:
    """Server settings of a shared run's connections: nothing may hang past a lease."""
    ms = str(int(max(lease, 1.0) * 1000))
    return {"idle_in_transaction_session_timeout": ms, "statement_timeout": ms}


async def open_shared_store(url: str, *, lease: float, durability: Any = "normal") -> PostgresStore:
    """A PostgreSQL store for a shared run: its sessions time out, its pool is larger."""
    from asyncbatch._store._postgres import PostgresStore

    return await PostgresStore.open(
        url,
        durability=durability,
        pool_size=6,
        server_settings=session_settings(lease),
        command_timeout=max(lease, 1.0),
    )


def _config(job: Callable[..., Any], opts: Options, shared: SharedRun) -> dict[str, Any]:
    try:
        policy: str | None = policy_config(opts)
    except ConfigError:
        if not opts.shared_auto:
            raise
        policy = None  # shared by default: this process works it alone (workers cannot join)
    return {
        **opts.run_config,
        "concurrency": opts.concurrency,
        "timeout": opts.timeout,
        "deadline": opts.deadline,
        "durability": opts.durability,
        "uses": list(opts.uses),
        "retry_dead": opts.retry_dead,
        "compensate": opts.compensate is not None,
        "result_codec": "json" if opts.result_codec is None else opts.result_codec.name,
        "key": key_spec(opts.key),
        "job": callable_name(job),
        "batch_size": opts.batch_size,  # None: shared runs call one item at a time
        "shared": {
            "chunk_size": shared.chunk_size,
            "lease": shared.lease,
            "exact_limits": shared.exact_limits,
            "policy": policy,
        },
    }


async def coordinate(
    job: Callable[[Any], Awaitable[Any]],
    items: Iterable[Any] | AsyncIterable[Any],
    opts: Options,
    *,
    shared: SharedRun,
    run_id: str,
    job_ref: str,
    outcomes: bool = True,
    on_skip: Skipped | None = None,
    on_engine: OnEngine | None = None,
) -> BatchResult[Any]:
    """Run ``items`` as a shared run: enqueue, work, finish; the whole run's result.

    With ``outcomes=False`` the result's outcomes stay empty (a stream reads
    them from the store instead of loading the whole run at once, and gets
    the SKIPPED ones, found while enqueueing, from ``on_skip``).
    ``on_engine(engine)``: a context manager around each of this process's
    sessions (`Batch`'s live controls steer its engine).

    Raises:
        BatchAborted: the run was aborted (anywhere); ``.result`` is the whole
            run as stored after the rollback.
        ConfigError: the job cannot be imported by workers, an option cannot
            be sent to them, or the store is not PostgreSQL.
    """
    if not job_ref and not opts.shared_auto:
        raise ConfigError(
            "a shared run's job must be importable by the workers: define it at module "
            "level of an importable module (not __main__ or a closure)"
        )
    url = postgres_url(opts.store)
    if url is None:
        raise ConfigError("shared= needs a PostgreSQL store: store='postgresql://user@host/db'")
    if shared.exact_limits:  # a name without a limit, an adaptive one: say so before starting
        exact_names(shared.exact_limits, opts.limits, opts.rates)
    t0 = time.monotonic()
    now = time.time()
    config = _config(job, opts, shared)
    if isinstance(items, Sized):  # the dashboard's progress bar, as a single-process run
        config.setdefault("total", len(items))
    info = RunInfo(run_id=run_id, job=job_ref, config=config, created_at=now, updated_at=now)
    from asyncbatch._store._postgres_shared import SharedBoard

    store = await open_shared_store(url, lease=shared.lease, durability=opts.durability)
    try:
        board = SharedBoard(store, lease=shared.lease)
        lease = Lease(store, run_id)
        prev, seq0 = await _resume.begin(store, lease, info, opts)
        skips = _resume.Skips(keep=outcomes, forward=on_skip)
        if prev is not None and prev.status == "compensating":
            return await _abort_end(
                store, board, lease, opts, run_id, shared, t0, AsyncBatchError(
                    "rollback resumed after "
                    + ((prev.report or {}).get("aborted") or "an earlier abort")
                ), outcomes=outcomes, seq0=seq0, skips=skips,
            )  # fmt: skip
        await board.share(run_id)
        failed: list[Exception] = []
        causes: list[BaseException] = []  # an abort decided here: its own exception
        mine: list[JobOutcome[Any]] = []  # the outcomes of the jobs this process ran
        lost: list[int] = []  # chunks this process's sessions lost (their records dropped)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lease.run)
                tg.start_soon(
                    _enqueue_safely, board, run_id, items, opts, shared,
                    None if prev is None else seq0, skips, failed,
                )  # fmt: skip
                state = await work_run(
                    job, opts, board, run_id, shared=shared, job_ref=job_ref,
                    keep_items=opts.compensate is not None, causes=causes,
                    sink=mine.append if outcomes else None, on_engine=on_engine, lost=lost,
                )  # fmt: skip
                tg.cancel_scope.cancel()
        except BaseException:
            # Cancelled (a stream left early, Ctrl-C) or broken: the run stays resumable
            # at once, as a single-process run does (no wait for its lease to expire).
            with anyio.CancelScope(shield=True), anyio.move_on_after(shared.lease):
                await lease.end("interrupted", await board.run_counts(run_id), None)
            raise
        if state.abort_reason is not None:
            # The abort decided here (its reason is the one that stands) keeps its exception.
            ours = [c for c in causes if f"{type(c).__name__}: {c}" == state.abort_reason]
            cause = ours[0] if ours else AsyncBatchError(
                f"the run was aborted: {state.abort_reason}"
            )  # fmt: skip
            return await _abort_end(
                store, board, lease, opts, run_id, shared, t0, cause, outcomes=outcomes,
                seq0=seq0, skips=skips, mine=mine,
            )  # fmt: skip
        if failed:
            counts = await board.run_counts(run_id)
            await lease.end("interrupted", counts, None)
            raise failed[0]
        # Workers stop at their next poll: wait (briefly) for their reports to merge them.
        with anyio.move_on_after(1.0):
            await wait_for_workers(board, run_id, shared.lease)
        earlier = [prev.report] if prev is not None and prev.report else []

        def whole(reports: list[dict[str, Any]], counts: dict[str, int]) -> dict[str, Any]:
            return whole_report(earlier + reports, counts)  # the earlier invocations' too

        if await board.finish(run_id, whole) and shared.exact_limits:
            await forget_limits(store, run_id)
        run = await store.get_run(run_id)
        await lease.end("finished", run.counts, run.report)
        return await _result(
            store, run, opts, t0, seq0=seq0, skips=skips, outcomes=outcomes, mine=mine,
            whole=not lost,
        )  # fmt: skip
    finally:
        with anyio.CancelScope(shield=True):
            await store.aclose()


async def _abort_end(
    store: PostgresStore,
    board: SharedBoard,
    lease: Lease,
    opts: Options,
    run_id: str,
    shared: SharedRun,
    t0: float,
    cause: BaseException,
    *,
    outcomes: bool,
    seq0: int,
    skips: _resume.Skips,
    mine: list[JobOutcome[Any]] | None = None,
) -> BatchResult[Any]:
    """After an abort: wait for every worker to stop, roll the whole run back, raise."""
    await wait_for_quiet(board, run_id, shared.lease)
    # A worker may still commit what it had in flight when it saw the abort: its
    # worker row says when it stopped (bounded: a dead worker never says so).
    with anyio.move_on_after(shared.lease):
        await wait_for_workers(board, run_id, shared.lease)
    counts = await board.run_counts(run_id)
    rolled: list[JobOutcome[Any]] = []  # the jobs the rollback compensated (or failed to)
    if opts.compensate is not None:
        # The rollback engine takes the run itself (its checkpoints are crash-safe as today).
        lease.stop()
        await lease.end("aborted", counts, None)
        rollback_opts = replace(opts, budget=None, store=None, run_id=run_id)
        engine: Engine[Any] = Engine(
            _never, rollback_opts, run_id=run_id, store=store, sink=rolled.append,
            rollback_only=True,
        )
        try:
            await engine.execute(())
        except BatchAborted:
            pass
    else:
        await lease.end("aborted", counts, None)
    run = await store.get_run(run_id)
    counts = await board.run_counts(run_id)
    report = whole_report([run.report] if run.report else [], counts)
    await board.close(run_id, counts, report)
    run = await store.get_run(run_id)
    result = await _result(
        store, run, opts, t0, seq0=seq0, skips=skips, outcomes=outcomes, mine=mine,
        rolled=rolled,
    )  # fmt: skip
    raise BatchAborted(result, cause) from cause


async def _result(
    store: PostgresStore,
    run: RunInfo,
    opts: Options,
    t0: float,
    *,
    seq0: int,
    skips: _resume.Skips,
    outcomes: bool,
    mine: list[JobOutcome[Any]] | None = None,
    whole: bool = False,
    rolled: list[JobOutcome[Any]] | None = None,
) -> BatchResult[Any]:
    """This invocation's result (outcomes loaded unless a stream reads them).

    The jobs this process ran keep their own outcomes (the very result
    objects, errors and histories), the others' are read from the store.
    ``whole``: this process lost no chunk, so every outcome in ``mine`` was
    committed; when they are as many as the invocation's stored jobs, they
    are those jobs (one row per key), and nothing is read back.
    ``rolled``: the outcomes of an abort's rollback (they replace the
    earlier outcome of each job it undid, as in one process).
    """
    duration = time.monotonic() - t0
    if not outcomes:
        counts = await _resume.invocation_counts(store, run.run_id, seq0=seq0, skips=skips)
        return _resume.invocation_result(
            run.run_id, [], run, duration, opts, seq0=seq0, skips=skips, counts=counts
        )
    if whole and mine is not None:
        counts = await _resume.invocation_counts(store, run.run_id, seq0=seq0, skips=skips)
        if sum(counts.values()) - skips.n == len(mine):  # no other worker finished a job
            return _resume.invocation_result(
                run.run_id, None, run, duration, opts, seq0=seq0, skips=skips, counts=counts,
                mine=mine,
            )  # fmt: skip
    jobs = await store.jobs(run.run_id)
    return _resume.invocation_result(
        run.run_id, jobs, run, duration, opts, seq0=seq0, skips=skips, mine=mine,
        rolled=rolled,
    )  # fmt: skip


async def _never(item: Any) -> Any:  # pragma: no cover - a rollback runs no jobs
    raise AssertionError("a rollback runs no jobs")


# ------------------------------------------------------------------ enqueue


async def _enqueue_safely(
    board: SharedBoard,
    run_id: str,
    items: Iterable[Any] | AsyncIterable[Any],
    opts: Options,
    shared: SharedRun,
    seq0: int | None,
    on_skip: Skipped,
    failed: list[Exception],
) -> None:
    """`enqueue`, noting an input that raised (the run then ends ``interrupted``)."""
    try:
        await enqueue(board, run_id, items, opts, shared, seq0=seq0, on_skip=on_skip)
    except Exception as exc:
        failed.append(exc)
    await board.input_done(run_id)


# ------------------------------------------------------------------ working


async def work_run(
    job: Callable[[Any], Awaitable[Any]],
    opts: Options,
    board: SharedBoard,
    run_id: str,
    *,
    shared: SharedRun,
    job_ref: str = "",
    keep_items: bool = False,
    tally: dict[str, int] | None = None,
    causes: list[BaseException] | None = None,
    sink: Callable[[JobOutcome[Any]], None] | None = None,
    on_engine: OnEngine | None = None,
    lost: list[int] | None = None,
) -> RunState:
    """Work the run in sessions until nothing is left, it ended or was aborted.

    Returns the run's state as last seen; ``tally`` (if given) adds up the
    jobs per status this process finished; ``causes`` (if given) gets the
    exception of an abort decided in this process; ``sink`` the outcomes of
    the jobs this process finished. A session that fenced itself or
    lost the database is followed by a new one, with backoff, once the
    database answers again: a worker never exits over an outage.
    """
    delay = 0.05
    while True:
        try:
            state = await board.state(run_id)
        except StoreError:
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        if state.status != "running" or state.abort_reason is not None:
            return state
        if state.input_done and state.open == 0:
            return state
        try:
            session = await run_session(
                job, opts, board, run_id, lease=shared.lease, chunk_size=shared.chunk_size,
                keep_items=keep_items, job_ref=job_ref, exact_limits=shared.exact_limits,
                sink=sink, on_engine=on_engine,
            )  # fmt: skip
        except (StoreError, UnknownRun):
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        engine = session.engine
        cause = engine._abort.cause if engine is not None else None
        if cause is not None and not session.fenced:
            # An abort this session decided (a FATAL error, its budget verdict) may end it
            # before its heartbeat posts it: post it now, or a new session would claim on.
            with anyio.CancelScope(shield=True), anyio.move_on_after(shared.lease):
                try:
                    await board.abort(run_id, f"{type(cause).__name__}: {cause}")
                except StoreError:
                    pass  # the next state read finds the database away: retried below
        if causes is not None and cause is not None:
            causes.append(cause)
        if lost is not None and (session.lost or session.fenced):
            lost.append(session.lost or 1)
        if tally is not None and session.engine is not None and not session.fenced:
            for status, n in session.engine.counts.items():
                tally[status.value] = tally.get(status.value, 0) + n
        if session.fenced:
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)
        else:
            delay = 0.05


async def work(
    job: Callable[[Any], Awaitable[Any]],
    *,
    job_ref: str,
    url: str,
    run_id: str | None = None,
    concurrency: int | None = None,
    wait: float = 30.0,
) -> list[tuple[str, str, dict[str, int]]]:
    """`asyncbatch worker`: work one shared run (``run_id``) or every open one of the job.

    Args:
        job: the job, imported by the caller from ``job_ref``.
        job_ref: ``module:function``; must be the run's stored job.
        url: the PostgreSQL store.
        run_id: the run to join (waited for up to ``wait`` seconds: workers
            may start before the coordinator); None: every running shared run
            of this job with work left, one after another, until none has any.
        concurrency: this worker's concurrency (default: the run's).

    Returns:
        ``(run id, status as last seen, jobs per status this worker finished)`` per run.

    Raises:
        UnknownRun: ``run_id`` did not appear within ``wait`` seconds.
        ConfigError: the run is not shared, or runs another job.
    """
    from asyncbatch._store._postgres import PostgresStore
    from asyncbatch._store._postgres_shared import SharedBoard

    from ._shared import worker_options

    done: list[tuple[str, str, dict[str, int]]] = []
    async with await PostgresStore.open(url) as probe:
        board = SharedBoard(probe, lease=15.0)
        if run_id is not None:
            deadline = time.monotonic() + wait
            while True:
                try:
                    await probe.get_run(run_id)
                    break
                except UnknownRun:
                    if time.monotonic() >= deadline:
                        raise
                    await anyio.sleep(0.2)
            todo = [run_id]
        else:
            todo = await board.open_runs(job_ref)
        seen: set[str] = set()
        while todo:
            rid = todo.pop(0)
            seen.add(rid)
            run = await probe.get_run(rid)
            shared = run.config.get("shared")
            if not shared:
                raise ConfigError(
                    f"run {rid!r} is not a shared run: start it with "
                    "run_batch(..., store='postgresql://...', shared=True)"
                )
            if not run.job or not shared.get("policy"):
                raise ConfigError(
                    f"run {rid!r} cannot be joined: its job or options cannot be sent to "
                    "other processes; HINT: define the job, classifiers and handlers at "
                    "module level of an importable module (not __main__, a closure or a lambda)"
                )
            if run.job != job_ref:
                raise ConfigError(f"run {rid!r} runs {run.job or 'another job'}, not {job_ref}")
            opts = worker_options(run.config, concurrency=concurrency)
            spec = SharedRun(
                chunk_size=int(shared["chunk_size"]), lease=float(shared["lease"]),
                exact_limits=shared.get("exact_limits") or False,
            )  # fmt: skip
            tally: dict[str, int] = {}
            store = await open_shared_store(url, lease=spec.lease, durability=opts.durability)
            try:
                state = await work_run(
                    job, opts, SharedBoard(store, lease=spec.lease), rid, shared=spec,
                    job_ref=job_ref, keep_items=bool(run.config.get("compensate")), tally=tally,
                )  # fmt: skip
            finally:
                with anyio.CancelScope(shield=True):
                    await store.aclose()
            status = "aborted" if state.abort_reason is not None else state.status
            if status == "running" and state.input_done and state.open == 0:
                status = "done"  # the coordinator finishes the run
            done.append((rid, status, tally))
            if run_id is None and not todo:
                todo = [r for r in await board.open_runs(job_ref) if r not in seen]
    return done
