"""Streaming a shared run: every worker's outcomes, read from the store by completion order.

``async with batch.stream(items) as outcomes`` on a shared run coordinates
the run as ``batch.run`` does (`coordinate`) and meanwhile reads the run's
finished jobs back from PostgreSQL in pages, in completion order (``seq``):
the coordinator's own and every worker's, each exactly once (`RunTail`
reads only up to a seq no writer can still commit below). The database is
the buffer, so memory is one page however far the reader lags; the stream
ends when the run has finished and its last page is read, and an aborted
run raises `BatchAborted` after its outcomes, as a single-process stream does.

The items of the input whose jobs an earlier invocation of the run
finished come SKIPPED as the coordinator meets them while enqueueing (as a
resumed single-process run reports them; enqueueing waits while the reader
is a page behind); those that run again (``retry_dead=True``, compensated
ones) come when they finish again.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio

from asyncbatch._errors import BatchAborted, ErrorKind
from asyncbatch._result import BatchResult, JobOutcome, JobStatus
from asyncbatch._store._common import decode

from ._options import Options, postgres_url

if TYPE_CHECKING:
    from asyncbatch._store._postgres_stream import Mark, RunTail

__all__ = ["PAGE", "SharedTail", "open_tail"]

PAGE = 500
"""Jobs read per page (the stream's memory)."""
_POLL_MIN, _POLL_MAX = 0.01, 0.2  # backoff while no new job is settled


class SharedTail:
    """The outcomes of one shared run as the store holds them, page by page.

    `drive` runs the coordinator; `next` returns the next outcome in
    completion order, None once the run ended and every job was read (it
    raises the run's `BatchAborted`, or the coordinator's error, instead).
    """

    def __init__(self, tail: RunTail, opts: Options, *, start: int) -> None:
        self._tail = tail
        self._codec = opts.result_codec
        self._cursor = start  # jobs up to it were finished by an earlier invocation
        self._horizon = 0
        self._mark: Mark | None = None
        self._mark_final = False  # the mark was taken after the run ended
        self._final = False  # the horizon is a mark taken after the run ended
        self._buffer: deque[JobOutcome[Any]] = deque()
        self._room = anyio.Event()  # set when the reader took from a full buffer
        self._ended = anyio.Event()
        self._error: BaseException | None = None
        self.result: BatchResult[Any] | None = None

    async def drive(self, run: Callable[[], Awaitable[BatchResult[Any]]]) -> None:
        """Run the coordinator (``run``); note its result or its abort."""
        try:
            self.result = await run()
        except BatchAborted as exc:
            self.result = exc.result
            self._error = exc
        except Exception as exc:
            self._error = exc
        finally:
            self._ended.set()

    async def next(self) -> JobOutcome[Any] | None:
        """The next outcome in completion order; None at the end of the run."""
        delay = _POLL_MIN
        while not self._buffer:
            read = await self._fill()
            if self._buffer or read:
                continue
            if self._final:  # the run ended and every job up to its last seq is read
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                return None
            if self._ended.is_set():  # the last writers are finishing
                await anyio.sleep(delay)
            else:
                with anyio.move_on_after(delay):
                    await self._ended.wait()
            delay = min(delay * 2, _POLL_MAX)
        outcome = self._buffer.popleft()
        if len(self._buffer) < PAGE:
            self._room.set()
        return outcome

    async def skipped(self, outcome: JobOutcome[Any]) -> None:
        """Take a SKIPPED outcome from the coordinator; waits while the reader lags."""
        while len(self._buffer) >= PAGE:
            self._room = anyio.Event()
            await self._room.wait()
        self._buffer.append(outcome)

    async def _fill(self) -> int:
        """Move the horizon on if it settled, and read the next page below it."""
        if self._mark is None:
            self._mark_final = self._ended.is_set()  # before the mark: no write after it
            self._mark = await self._tail.mark()
        if await self._tail.settled(self._mark):
            self._horizon = max(self._horizon, self._mark.seq)
            self._final = self._mark_final
            self._mark = None
        rows = await self._tail.page(self._cursor, self._horizon, PAGE)
        if rows:
            self._cursor = int(rows[-1]["seq"])
            self._buffer.extend(map(self._outcome, rows))
        return len(rows)

    def _outcome(self, row: Any) -> JobOutcome[Any]:
        stat = JobStatus(row["status"])
        result = decode(row["result"]) if row["has_result"] else None
        if self._codec is not None and row["has_result"]:
            result = self._codec.decode(result)
        kind = row["kind"]
        return JobOutcome(
            key=row["key"], status=stat, result=result, attempts=int(row["attempts"]),
            duration=float(row["duration"]),
            index=row["idx"], kind=None if kind is None else ErrorKind(kind),
        )  # fmt: skip

    def streamed(self) -> BatchResult[Any] | None:
        """The run's result without outcomes (they were streamed)."""
        return None if self.result is None else replace(self.result, outcomes=[])


@contextlib.asynccontextmanager
async def open_tail(opts: Options, run_id: str) -> AsyncIterator[SharedTail]:
    """A `SharedTail` of ``run_id`` on its own small connection pool."""
    from asyncbatch._store._postgres import PostgresStore
    from asyncbatch._store._postgres_stream import RunTail

    url = postgres_url(opts.store)
    assert url is not None
    store = await PostgresStore.open(url, pool_size=2)
    try:
        tail = RunTail(store, run_id)
        start = await tail.last_seq()  # 0 for a run not stored yet
        yield SharedTail(tail, opts, start=start)
    finally:
        with anyio.CancelScope(shield=True):
            await store.aclose()
