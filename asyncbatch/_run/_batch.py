"""The public entry points: `run_batch`, `Batch` (run / stream) and `redrive`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import operator
import os
import time
import warnings
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
    Sized,
)
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar, Unpack

import anyio

from asyncbatch._errors import AsyncBatchError, BatchAborted, ConfigError
from asyncbatch._policy._retry import Retry
from asyncbatch._result import BatchResult, JobOutcome, JobStatus
from asyncbatch._store import Store

from ._control import Progress
from ._engine import Engine, unwrap_group
from ._options import BatchOptions, Options, RedriveOptions, build_options

if TYPE_CHECKING:
    from ._shared_stream import SharedTail

__all__ = ["Batch", "OutcomeStream", "redrive", "rollback", "run_batch"]

T = TypeVar("T")
R = TypeVar("R")
Job = Callable[[T], Awaitable[R]]
Items = Iterable[T] | AsyncIterable[T]


def new_run_id() -> str:
    """A fresh, sortable run id such as ``run-20261129-053000-4f2a9c``."""
    return f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"


def job_ref(job: Callable[..., Any]) -> str:
    """``module:qualname`` when the job can be imported back, else ``""``."""
    module = getattr(job, "__module__", None)
    qual = getattr(job, "__qualname__", "")
    if not module or module == "__main__" or "<" in qual:
        return ""
    return f"{module}:{qual}"


def _require_asyncio() -> None:
    """Fail in one line when not on asyncio: asyncbatch's hot path is asyncio primitives."""
    try:
        asyncio.get_running_loop()
        return
    except RuntimeError:
        pass
    library = "no asyncio event loop"
    try:  # trio (and curio) ship sniffio; asyncbatch does not depend on it
        import sniffio

        library = sniffio.current_async_library()
    except Exception:  # sniffio missing, or it cannot tell either
        pass
    raise AsyncBatchError(
        f"asyncbatch needs asyncio, but this runs under {library}; "
        "HINT: asyncio.run(main()) or anyio.run(main) with the default asyncio backend"
    )


def _check_job(job: object) -> None:
    if not callable(job):
        raise ConfigError(f"job must be an async callable item -> result, got {job!r}")


@contextlib.asynccontextmanager
async def _open(opts: Options) -> AsyncIterator[Store | None]:
    if opts.store is None:
        yield None
        return
    from asyncbatch._store import as_store

    async with as_store(opts.store, durability=opts.durability) as store:
        yield store


_by_index = operator.attrgetter("index")


def _in_order(outcomes: list[JobOutcome[R]], *, aborted: bool = False) -> list[JobOutcome[R]]:
    # Every outcome of run()/redrive() has an input position; they arrive
    # nearly sorted, which Timsort handles in close to linear time.
    try:
        outcomes.sort(key=_by_index)
    except TypeError:  # a rolled-back job of an earlier run has no position here
        outcomes.sort(key=lambda o: (o.index is None, o.index or 0))
    if aborted and any(o.status is JobStatus.COMPENSATED for o in outcomes):
        # A rollback re-reports undone jobs; the sort is stable, so the later
        # (COMPENSATED) outcome of a key replaces the earlier one.
        last = {o.key: o for o in outcomes}
        outcomes = [o for o in outcomes if last[o.key] is o]
    return outcomes


class Batch(Generic[T, R]):
    """A configured batch: the job and its options, run as often as you like.

    Takes the same keywords as `run_batch`. ``await batch.run(items)`` returns
    a `BatchResult` with outcomes in input order; ``async with
    batch.stream(items) as outcomes`` yields outcomes in completion order in
    memory bounded by the concurrency, each one already checkpointed.

    While it runs (from another task), `pause`, `resume` and `resize` steer
    it and `progress` tells where it stands.
    """

    def __init__(self, job: Job[T, R], **options: Unpack[BatchOptions]) -> None:
        _check_job(job)
        self.job = job
        self.options = build_options(**options)
        self._live: list[Engine[R]] = []  # the runs of this batch in progress
        # pause/resize of the latest shared run, applied to each engine it starts
        # (a new session after its worker fenced itself starts a new one)
        self._steer: dict[str, Any] = {}

    # ------------------------------------------------------------ live control

    def pause(self) -> None:
        """Stop starting attempts: those in flight finish, then no new one starts.

        Jobs that come due meanwhile (retries, jobs released by a circuit)
        wait in the ready queue; nothing is cancelled. A paused run waits
        for `resume` even when its last jobs ended (it cannot know that the
        input has no next item without reading it).

        Raises:
            AsyncBatchError: the batch is not running.
        """
        for engine in self._running("pause"):
            engine.control.pause()
        self._steer["paused"] = True

    def resume(self) -> None:
        """Start attempts again after `pause`.

        Raises:
            AsyncBatchError: the batch is not running.
        """
        for engine in self._running("resume"):
            engine.control.resume()
        self._steer.pop("paused", None)

    def resize(self, concurrency: int) -> None:
        """Run at most ``concurrency`` attempts at once from now on.

        Growing starts new attempts at once; shrinking lets the attempts in
        flight finish and starts no new one until fewer than ``concurrency``
        run. With ``concurrency=ab.Adaptive(...)`` this moves the current
        limit (the controller adapts from there, within its bounds).

        Raises:
            AsyncBatchError: the batch is not running.
            ConfigError: ``concurrency`` is not an int >= 1.
        """
        for engine in self._running("resize"):
            engine.control.resize(concurrency)
        self._steer["size"] = concurrency

    def progress(self) -> Progress:
        """A frozen snapshot of the running batch (the latest run, if several run).

        On a shared run: this process's share (its jobs' counts and state),
        with ``total`` the whole input; `asyncbatch runs` shows the whole run.

        Raises:
            AsyncBatchError: the batch is not running.
        """
        return self._running("progress")[-1].control.progress()

    def _running(self, what: str) -> list[Engine[R]]:
        if not self._live:
            raise AsyncBatchError(
                f"Batch.{what}() needs a running batch; HINT: call it from another task "
                "while `await batch.run(items)` (or `batch.stream(items)`) is in progress"
            )
        return list(self._live)

    @contextlib.contextmanager
    def _running_as(self, engine: Engine[R], items: Items[Any]) -> Iterator[None]:
        if isinstance(items, Sized):
            engine.control.total = len(items)
        self._live.append(engine)
        try:
            yield
        finally:
            self._live.remove(engine)

    @contextlib.contextmanager
    def _steered(self, engine: Engine[R], items: Items[Any]) -> Iterator[None]:
        """`_running_as` for each session of a shared run, paused or resized as the run is."""
        if self._steer.get("paused"):
            engine.control.pause()
        if "size" in self._steer:
            engine.control.resize(self._steer["size"])
        with self._running_as(engine, items):
            yield

    def __repr__(self) -> str:
        o = self.options
        name = getattr(self.job, "__qualname__", self.job)
        return f"Batch({name!r}, concurrency={o.concurrency}, store={o.store!r})"

    def _engine(
        self,
        store: Store | None,
        sink: Callable[[JobOutcome[Any]], None] | None,
        *,
        run_id: str | None = None,
        backlog: Callable[[], int] | None = None,
    ) -> Engine[R]:
        return Engine(
            self.job,
            self.options,
            run_id=run_id or self.options.run_id or new_run_id(),
            store=store,
            sink=sink,
            job_ref=job_ref(self.job),
            backlog=backlog,
        )

    async def run(self, items: Items[T]) -> BatchResult[R]:
        """Run the job over every item and wait for the whole batch.

        Raises:
            BatchAborted: a FATAL error or the error budget stopped the run;
                ``.result`` holds the partial result (outcomes in input order).
        """
        _require_asyncio()
        shared = self.options.shared
        if shared is not None:  # many workers: see _coordinator
            from ._coordinator import coordinate

            self._steer = {}
            return await coordinate(
                self.job, items, self.options, shared=shared,
                run_id=self.options.run_id or new_run_id(), job_ref=job_ref(self.job),
                on_engine=functools.partial(self._steered, items=items),
            )  # fmt: skip
        outcomes: list[JobOutcome[R]] = []
        async with _open(self.options) as store:
            engine = self._engine(store, outcomes.append)
            try:
                with self._running_as(engine, items):
                    result = await engine.execute(items)
            except BatchAborted as exc:
                exc.result = replace(exc.result, outcomes=_in_order(outcomes, aborted=True))
                raise
        return replace(result, outcomes=_in_order(outcomes))

    @contextlib.asynccontextmanager
    async def stream(self, items: Items[T]) -> AsyncIterator[OutcomeStream[R]]:
        """Run the batch while yielding outcomes as they complete.

        The run lives exactly as long as the ``async with`` block: leaving it
        early cancels the remaining work (it stays resumable). A shared run
        streams the whole run's outcomes (every worker's) from the store in
        completion order, page by page (see `_shared_stream`).
        """
        _require_asyncio()
        if self.options.shared is not None:  # many workers: outcomes read from the store
            async with self._shared_stream(items) as shared_stream:
                yield shared_stream
            return
        async with _open(self.options) as store:
            stream: OutcomeStream[R] = OutcomeStream()
            engine = self._engine(store, stream._push, backlog=stream.__len__)
            stream._engine = engine
            with self._running_as(engine, items):
                async with _driving(stream, stream._drive, engine, items):
                    yield stream

    @contextlib.asynccontextmanager
    async def _shared_stream(self, items: Items[T]) -> AsyncIterator[OutcomeStream[R]]:
        from ._coordinator import coordinate
        from ._shared_stream import open_tail

        opts, shared = self.options, self.options.shared
        assert shared is not None
        run_id = opts.run_id or new_run_id()
        async with open_tail(opts, run_id) as tail:
            stream: OutcomeStream[R] = OutcomeStream()
            stream._tail = tail

            async def run() -> BatchResult[Any]:
                return await coordinate(
                    self.job, items, opts, shared=shared, run_id=run_id,
                    job_ref=job_ref(self.job), outcomes=False, on_skip=tail.skipped,
                    on_engine=functools.partial(self._steered, items=items),
                )  # fmt: skip

            self._steer = {}
            async with _driving(stream, tail.drive, run):
                yield stream


@contextlib.asynccontextmanager
async def _driving(
    stream: OutcomeStream[Any], drive: Callable[..., Coroutine[Any, Any, Any]], *args: Any
) -> AsyncIterator[None]:
    """Run ``drive(*args)`` (what feeds ``stream``) beside the caller's block.

    Leaving the block before the stream finished cancels it; an error from
    either side is raised as itself, not wrapped in an exception group.
    """
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(drive, *args)
            try:
                yield
            finally:
                if not stream.finished:
                    tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        inner = unwrap_group(group)
        if inner is group:
            raise
        raise inner from inner.__cause__


class OutcomeStream(Generic[R]):
    """Outcomes of a streaming run in completion order (``async for``).

    After the iteration ends, `result` holds the run's `BatchResult` (with
    an empty ``outcomes`` list: the outcomes were streamed).
    """

    def __init__(self) -> None:
        self._buffer: deque[JobOutcome[R]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._engine: Engine[R] | None = None
        self._error: BaseException | None = None
        self.finished = False
        self.result: BatchResult[R] | None = None
        self._tail: SharedTail | None = None  # a shared run: outcomes read from the store

    def __len__(self) -> int:
        return len(self._buffer)

    def __aiter__(self) -> OutcomeStream[R]:
        return self

    async def __anext__(self) -> JobOutcome[R]:
        if self._tail is not None:
            return await self._next_shared(self._tail)
        while not self._buffer:
            if self.finished:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        outcome = self._buffer.popleft()
        if self._engine is not None and len(self._buffer) < 64:
            self._engine.relieve()
        return outcome

    async def _next_shared(self, tail: SharedTail) -> JobOutcome[R]:
        try:
            outcome = await tail.next()
        except BaseException:
            self.finished = True
            self.result = tail.streamed()
            raise
        if outcome is None:
            self.finished = True
            self.result = tail.streamed()
            raise StopAsyncIteration
        return outcome

    def _push(self, outcome: JobOutcome[Any]) -> None:
        self._buffer.append(outcome)
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _drive(self, engine: Engine[R], items: Items[Any]) -> None:
        try:
            self.result = await engine.execute(items)
        except BatchAborted as exc:
            self.result = exc.result
            self._error = exc
        except Exception as exc:
            if exc is not engine.input_error:
                raise
            # The reader gets every outcome committed before the bad input, then the error.
            self._error = exc
        finally:
            self.finished = True
            self._wake()


async def run_batch(
    job: Job[T, R], items: Items[T], **options: Unpack[BatchOptions]
) -> BatchResult[R]:
    """Run ``job`` over ``items`` with bounded concurrency, retries and checkpoints.

    Args:
        job: ``async def job(item) -> result``.
        items: an iterable or async iterable of items, read lazily.
        **options: see `Batch` and the README's configuration reference:
            ``concurrency``, ``key``, ``run_id``, ``store``, ``retry_dead``,
            ``durability``, ``classify``, ``retry``, ``on_error``, ``timeout``,
            ``deadline``, ``limits``, ``rates``, ``breakers``, ``uses``,
            ``budget``, ``retry_budget``, ``hedge``, ``compensate``,
            ``on_event``, ``tracer_provider``, ``meter_provider``.

    Returns:
        The `BatchResult`: outcomes in input order, counts, the error report.

    Raises:
        BatchAborted: a FATAL error or an exhausted error budget stopped the run.
        ConfigError: an option has a value that cannot work.
    """
    return await Batch(job, **options).run(items)


async def redrive(
    job: Job[Any, R],
    *,
    store: Store | str,
    run_id: str,
    ids: Sequence[int] | None = None,
    **options: Unpack[RedriveOptions],
) -> BatchResult[R]:
    """Run dead-lettered jobs of ``run_id`` again from their stored payloads.

    Entries that now succeed become ``"resolved"``; those that fail again stay
    ``"dead"`` with the new attempts appended to their history and their
    ``redrive_count`` raised. Each entry changes only when its job's outcome
    is committed, so a redrive that is interrupted or killed midway is
    resumed by redriving again: what did not finish is still ``"dead"``.
    The run is owned by the redrive while it runs (`RunOwned` otherwise).

    Args:
        job: the job coroutine function (usually the one that failed).
        store: the store (URL, path or `Store`) holding the DLQ.
        run_id: the run whose dead letters to redrive.
        ids: only these DLQ entry ids (default: every ``"dead"`` entry of the run).
        **options: batch options as for `run_batch` (not ``store``/``run_id``/``key``).
    """
    _require_asyncio()
    _check_job(job)
    for fixed in ("store", "run_id", "key"):
        if fixed in options:
            raise ConfigError(f"redrive() sets {fixed}= itself; remove it from the options")
    batch: Batch[Any, R] = Batch(job, store=store, run_id=run_id, **options)
    async with _open(batch.options) as st:
        assert st is not None
        run = await st.get_run(run_id)
        if "batch_size" not in options and run.config.get("batch_size"):
            # A chunked run's job takes lists: its dead letters go back as chunks.
            batch.options = replace(batch.options, batch_size=run.config["batch_size"])
        entries = await st.dlq.list(run_id=run_id, status="dead")
        if ids is not None:
            wanted = set(ids)
            entries = [e for e in entries if e.id in wanted]
        skipped = [e for e in entries if e.payload_is_repr]
        if skipped:
            warnings.warn(
                f"asyncbatch: {len(skipped)} dead letter(s) of run {run_id!r} kept only the "
                "repr of their payload and cannot be redriven",
                RuntimeWarning,
                stacklevel=2,
            )
        entries = [e for e in entries if not e.payload_is_repr]
        # Entries stay "dead" until their job's outcome commits (resolved, or
        # dead again with redrive_count + 1): a redrive that dies strands none.
        outcomes: list[JobOutcome[R]] = []
        engine = batch._engine(st, outcomes.append, run_id=run_id)
        plan = {i: (e.id, e.key) for i, e in enumerate(entries)}
        result = await engine.execute([e.payload for e in entries], redrive=plan)
    return replace(result, outcomes=_in_order(outcomes))


async def rollback(
    compensate: Callable[[Any, Any], Awaitable[Any]],
    *,
    store: Store | str,
    run_id: str,
    retry: Retry | None = None,
) -> BatchResult[Any]:
    """Undo a finished run on request: compensate its succeeded jobs, newest first.

    The run must have been made with ``compensate=`` set (so the store kept
    each succeeded job's item). Progress is checkpointed like an abort's
    rollback: if this is interrupted, running it again continues it.

    Args:
        compensate: ``async def undo(item, result)``.
        store: the store (URL, path or `Store`) holding the run.
        run_id: the run to roll back.
        retry: attempts and backoff of each compensation (default 3 attempts).

    Returns:
        A `BatchResult` whose outcomes are the COMPENSATED jobs (jobs whose
        undo failed for good are listed in ``report.compensation``).
    """
    _require_asyncio()
    if not callable(compensate):
        raise ConfigError(f"compensate must be an async def undo(item, result), got {compensate!r}")
    opts = build_options(store=store, run_id=run_id, compensate=compensate, compensate_retry=retry)
    outcomes: list[JobOutcome[Any]] = []
    async with _open(opts) as st:
        assert st is not None
        run = await st.get_run(run_id)
        if run.config.get("compensate") is False:
            raise ConfigError(
                f"run {run_id!r} was made without compensate=, so its items were not kept "
                "and cannot be undone; roll it back by hand, or pass compensate= to the "
                "batch next time"
            )
        engine: Engine[Any] = Engine(
            _never, opts, run_id=run_id, store=st, sink=outcomes.append, rollback_only=True
        )
        try:
            await engine.execute(())
        except BatchAborted as exc:
            return replace(exc.result, outcomes=_in_order(outcomes, aborted=True))
    raise AssertionError("a rollback always ends the run as aborted")  # pragma: no cover


async def _never(item: Any) -> Any:  # pragma: no cover - rollback runs no jobs
    raise AssertionError("rollback() does not run jobs")
