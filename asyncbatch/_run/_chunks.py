"""Chunked calls (``batch_size=``): many items per call, one outcome per item.

A chunk worker is a concurrency slot like any worker (`_workers`), and so
are limits and rates: they count calls, not items. The worker forms a chunk
from the ready queue (up to ``batch_size`` ready entries, waiting at most
``batch_wait`` seconds for more), makes one call ``job([item, ...])`` under
the run's guards (``uses=``), timeout (per call), deadline (the soonest of
its items') and one attempt span (attribute ``asyncbatch.chunk.size``, an
``asyncbatch.item`` event per item), and then hands every item to the
outcome path (`_outcomes.Outcomes`) on its own, as the plain workers do:

- a result: the item succeeded (a result rule may still reject it);
- ``ab.ItemError(exc)``: the item failed, classified on its own, retried
  (alone, or in a later chunk) or dead-lettered;
- the whole call raised a retryable error: every item failed one attempt
  and is parked with the chunk's one delay (the longest any item drew), so
  they come back together and re-form a chunk;
- it raised a PERMANENT error: the bad items are isolated by bisection
  (`_bisect`) and dead-lettered alone;
- FATAL (or results that do not match the items, `ChunkResultError`: a bug
  in the job): the batch aborts.

Items keep their own keys, attempts, checkpoints, DLQ entries and report
lines. A split call of a bisection is part of the same attempt: it spends
none of the items' retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import anyio

from asyncbatch._context import JobContext, _current
from asyncbatch._errors import (
    ChunkResultError,
    CircuitOpen,
    DeadlineExceeded,
    ErrorKind,
    ItemError,
)

from ._bisect import Failure, isolate
from ._workers import Loops

if TYPE_CHECKING:
    from asyncbatch._observe._otel import AttemptScope

    from ._entry import Entry

__all__ = ["Chunks", "split_results"]

_perf = time.perf_counter
_sleep = asyncio.sleep
_PERMANENT = ErrorKind.PERMANENT


class Chunks(Loops):
    """The chunk worker loop of a run with ``batch_size=`` (see `Loops` for the arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.opts.batch_size is not None
        self.size = self.opts.batch_size
        self.wait = self.opts.batch_wait

    def pick(self) -> Callable[[], Coroutine[Any, Any, None]]:
        """The worker loop (one for every chunked run), as `Workers.pick` names one."""
        return self.loop

    async def loop(self) -> None:
        """One worker: form a chunk, run it, until no work is left for it."""
        self.arrived()
        loop = asyncio.get_running_loop()
        while True:
            chunk = await self._form(loop)
            if chunk is None:
                return
            await self._run(chunk, loop)
            # A job that never suspends must not starve the loop (see `_workers.TURN`).
            await _sleep(0)

    # ------------------------------------------------------------ forming

    async def _form(self, loop: asyncio.AbstractEventLoop) -> list[Entry] | None:
        """Up to ``batch_size`` ready entries (waiting ``batch_wait`` for more), or None."""
        queue = self._queue
        entry = queue.next()
        while entry is None:
            if not await queue.wait():
                return None
            entry = queue.next()
        chunk = [entry]
        try:
            self._take(chunk)
            if len(chunk) < self.size and self.wait:
                await self._fill(chunk, loop)
        except BaseException:
            self._abort.interrupted.extend(chunk)  # cancelled while forming: ends CANCELLED
            raise
        return chunk

    def _take(self, chunk: list[Entry]) -> None:
        next_entry, size = self._queue.next, self.size
        while len(chunk) < size:
            entry = next_entry()
            if entry is None:
                return
            chunk.append(entry)

    async def _fill(self, chunk: list[Entry], loop: asyncio.AbstractEventLoop) -> None:
        """Wait up to ``batch_wait`` for more entries (retries coming due, async input)."""
        queue = self._queue
        until = loop.time() + self.wait
        while len(chunk) < self.size and queue.more_coming():
            left = until - loop.time()
            if left <= 0:
                return
            fut: asyncio.Future[None] = loop.create_future()
            queue.notify(fut)
            timer = loop.call_later(left, _resolve, fut)
            try:
                await fut
            finally:
                timer.cancel()
            self._take(chunk)

    # ------------------------------------------------------------ running

    async def _run(self, chunk: list[Entry], loop: asyncio.AbstractEventLoop) -> None:
        start = _perf()
        for entry in chunk:
            entry.attempt += 1
            if not entry.started:
                self.first_start(entry, start, loop)
        pending = set(chunk)  # entries not yet handed to the outcome path
        try:
            failure = await self._attempt(chunk, loop, pending)
            if failure is None:
                return

            def dead_letter(entry: Entry, exc: Exception, started: float) -> None:
                # A PERMANENT failure of this item's own call: the outcome path dead-letters it.
                pending.discard(entry)
                self._outcomes.failed(entry, exc, started, kind=_PERMANENT)

            if len(chunk) == 1:
                dead_letter(chunk[0], *failure)
                return
            await isolate(
                chunk,
                failure,
                lambda part: self._attempt(part, loop, pending, split=True),
                dead_letter,
            )
        except BaseException:
            # Cut short (cancelled): whatever this worker still held ends CANCELLED.
            self._abort.interrupted.extend(e for e in chunk if e in pending)
            raise

    async def _attempt(
        self,
        entries: list[Entry],
        loop: asyncio.AbstractEventLoop,
        pending: set[Entry],
        *,
        split: bool = False,
    ) -> Failure | None:
        """One call for ``entries``; a `Failure` when it failed PERMANENT as a whole.

        Otherwise every entry was handed to the outcome path (and left ``pending``).
        """
        o = self.opts
        inst = self._inst
        start = _perf()
        if o.deadline is not None:
            entries = self._unexpired(entries, loop, pending, start)
            if not entries:
                return None
        first = entries[0]
        items = [e.item for e in entries]
        token = _current.set(JobContext(first.run_id, first.key, first.attempt, items))
        scope_cm: Any = (
            inst.attempt(first.key, first.attempt) if inst is not None else nullcontext()
        )
        try:
            with scope_cm as scope:
                if scope is not None:
                    scope.chunk(len(entries))
                if inst is not None:
                    inst.in_flight(1)
                try:
                    if self._traffic is None:
                        raw = await self._call(items, entries, loop)
                    else:
                        raw = await self._traffic.attempt(
                            lambda: self._call(items, entries, loop), scope
                        )
                    results = split_results(raw, entries)
                except Exception as exc:
                    return await self._whole_failed(entries, exc, start, scope, pending, split)
                finally:
                    if inst is not None:
                        inst.in_flight(-1)
                self._settle(entries, results, start, scope, pending, loop)
                return None
        finally:
            _current.reset(token)

    def _unexpired(
        self,
        entries: list[Entry],
        loop: asyncio.AbstractEventLoop,
        pending: set[Entry],
        start: float,
    ) -> list[Entry]:
        """Entries still within their deadline; the others are dead-lettered now."""
        now = loop.time()
        live = []
        for entry in entries:
            if entry.deadline_at is not None and now >= entry.deadline_at:
                pending.discard(entry)
                exc = DeadlineExceeded(entry.key, self.opts.deadline or 0.0)
                self._outcomes.failed(entry, exc, start, kind=ErrorKind.TRANSIENT)
            else:
                live.append(entry)
        return live

    async def _call(
        self, items: list[Any], entries: list[Entry], loop: asyncio.AbstractEventLoop
    ) -> Any:
        o = self.opts
        limit = o.timeout
        if o.deadline is not None:
            soonest = min(e.deadline_at for e in entries if e.deadline_at is not None)
            remaining = soonest - loop.time()
            limit = remaining if limit is None else min(limit, remaining)
        guards: Any = self._deps.guard_all(o.uses) if o.uses and self._deps else None
        if guards is not None:
            async with guards:
                return await self._timed(items, limit)
        return await self._timed(items, limit)

    async def _timed(self, items: list[Any], limit: float | None) -> Any:
        if limit is None:
            return await self.job(items)
        with anyio.fail_after(limit):
            return await self.job(items)

    # ------------------------------------------------------------ outcomes

    def _settle(
        self,
        entries: list[Entry],
        results: Sequence[Any],
        start: float,
        scope: AttemptScope | None,
        pending: set[Entry],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """The call returned: each item's result (or `ItemError`) to the outcome path."""
        outcomes = self._outcomes
        rules = outcomes.result_rules
        failures = 0
        retried: list[tuple[Entry, float]] = []
        for entry, result in zip(entries, results, strict=True):
            pending.discard(entry)
            if isinstance(result, ItemError):
                failures += 1
                token = _current.set(entry)  # a classifier rule may look at its job
                try:
                    kind, delay = outcomes.failed(entry, result.error, start)
                finally:
                    _current.reset(token)
                if delay is not None:
                    retried.append((entry, delay))
                if scope is not None:
                    scope.item(entry.key, "failure", kind, result.error)
            elif rules and outcomes.rejected(entry, result, start):
                failures += 1
                if scope is not None:
                    scope.item(entry.key, "failure", entry.kind)
            else:
                outcomes.succeeded(entry, result)
                if scope is not None:
                    scope.item(entry.key, "success")
        if scope is not None:
            scope.items_failed(failures)
        self._together(retried, loop)

    async def _whole_failed(
        self,
        entries: list[Entry],
        exc: Exception,
        start: float,
        scope: AttemptScope | None,
        pending: set[Entry],
        split: bool,
    ) -> Failure | None:
        """The call raised for every item: park, retry together, isolate or abort."""
        outcomes = self._outcomes
        loop = asyncio.get_running_loop()
        if isinstance(exc, CircuitOpen):
            if scope is not None:
                scope.rejected(exc.dependency)
            for entry in entries:
                spent = entry.attempt
                await outcomes.circuit_open(entry, exc, start)  # a fallback may be awaited
                if split and entry.attempt < spent:
                    # Parked, its attempt given back; but the chunk's failed call did count.
                    entry.attempt = spent
                pending.discard(entry)
            return None
        kind = self._kind(exc, entries, pending)
        if kind is None:
            return None
        if kind is _PERMANENT:
            if scope is not None:
                scope.failed(kind, exc, retry_in=None)
            return exc, start
        retried: list[tuple[Entry, float]] = []
        for entry in entries:
            pending.discard(entry)
            error: Exception = exc
            item_kind = kind
            expired = entry.deadline_at is not None and loop.time() >= entry.deadline_at
            if isinstance(exc, TimeoutError) and expired:
                error = DeadlineExceeded(entry.key, self.opts.deadline or 0.0)
                item_kind = ErrorKind.TRANSIENT
            item_kind, delay = outcomes.failed(entry, error, start, kind=item_kind)
            if delay is not None:
                retried.append((entry, delay))
            if scope is not None:
                scope.item(entry.key, "failure", item_kind, error)
        if scope is not None:
            scope.failed(kind, exc, retry_in=max((d for _, d in retried), default=None))
        self._together(retried, loop)
        return None

    def _kind(self, exc: Exception, entries: list[Entry], pending: set[Entry]) -> ErrorKind | None:
        """How a whole-call failure is classified (None: the classifier broke, run stopping)."""
        if isinstance(exc, ChunkResultError):
            return ErrorKind.FATAL  # a bug in the job: no result can be trusted to its item
        if isinstance(exc, DeadlineExceeded):
            return ErrorKind.TRANSIENT
        outcomes = self._outcomes
        try:
            return outcomes.classify(exc)
        except Exception as error:
            pending.difference_update(entries)
            outcomes.handler_failed("classify", self.opts.classify, entries[0], error)
            self._abort.interrupted.extend(entries[1:])
            return None

    def _together(
        self, retried: list[tuple[Entry, float]], loop: asyncio.AbstractEventLoop
    ) -> None:
        """Items retried after one call come due together (the longest delay), as one chunk.

        Each was parked with its own jittered delay; timers due at different
        instants would bring them back one by one, as chunks of one. With one
        instant they re-enter the ready queue in the same loop turn.
        """
        if len(retried) < 2:
            return
        outcomes = self._outcomes
        delay = max(d for _, d in retried)
        when = loop.time() + delay
        for entry, _ in retried:
            if outcomes.repark(entry, when):
                entry.prev_delay = delay


def split_results(raw: Any, entries: list[Entry]) -> Sequence[Any]:
    """The results of a chunked call, one per entry in order.

    Raises:
        ChunkResultError: ``raw`` is neither a list of one result per item nor a
            mapping with exactly the chunk's keys.
    """
    size = len(entries)
    if isinstance(raw, Mapping):
        keys = [e.key for e in entries]
        missing = [k for k in keys if k not in raw]
        if missing or len(raw) != size:
            known = set(keys)
            unknown = [k for k in raw if k not in known]
            raise ChunkResultError(
                f"returned a mapping missing key(s) {_few(missing)} and with unknown "
                f"key(s) {_few(unknown)} (the mapping's keys must be the items' job keys, str)",
                size,
            )
        return [raw[k] for k in keys]
    if isinstance(raw, str | bytes | bytearray) or not isinstance(raw, Sequence):
        raise ChunkResultError(f"returned {type(raw).__qualname__}, not a list", size)
    if len(raw) != size:
        raise ChunkResultError(f"returned {len(raw)} result(s)", size)
    return raw


def _few(keys: list[Any]) -> str:
    shown = ", ".join(repr(k) for k in keys[:3])
    more = f", ... ({len(keys)} in all)" if len(keys) > 3 else ""
    return f"[{shown}{more}]"


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
