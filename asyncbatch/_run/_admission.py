"""Admission: an input item becomes a job of the run, is skipped as finished, or is refused.

Every item gets its key (input position, ``key=``, or the DLQ entry it is
redriven from). On resume, a key that an earlier invocation finished is not
run again: it is acknowledged SKIPPED with its stored result (dead-lettered
ones run again with ``retry_dead=True``; compensated ones always do).

What a resume needs from the store is asked in bounded batches: `source`
wraps the input so that every chunk of up to `LOOKUP_CHUNK` items is looked
up with one `Store.lookup` before its items are admitted. Memory stays
bounded by the concurrency and the chunk, however many jobs the run
finished before (a million finished keys are never loaded at once).

A key used by two items of one run is refused (`DuplicateKey`): the second
item is the input error. Keys in flight are known (they are live here until
acknowledged), keys committed earlier in this invocation are found by the
same lookup (their completion order is newer than the run's at start).
Positions cannot collide, so runs keyed by position skip all of this when
nothing is stored yet; runs without a store check custom keys in memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from itertools import count, repeat
from typing import Any

from asyncbatch._errors import DuplicateKey
from asyncbatch._result import JobOutcome, JobStatus, fast_outcome
from asyncbatch._store import FinishedJob, Store, storable_key

from ._entry import Entry
from ._options import Options

__all__ = ["LOOKUP_CHUNK", "Admission", "KeyedSource"]

Ahead = tuple[int, str] | tuple[int, str, Callable[[Entry], None]]
"""Where the next admitted item stands (and, from a `KeyedSource`, how to restore it)."""

LOOKUP_CHUNK = 500
"""Items read ahead and looked up in the store at once while resuming."""


class KeyedSource:
    """An input whose items come with their keys and positions (a shared run's chunks).

    The source appends ``(position, key)`` to `ahead` before it yields each
    item; admission takes them from there instead of making keys itself.
    ``(position, key, restore)`` also calls ``restore(entry)`` on the new
    entry (a retry handed over by another worker: its attempts so far).
    """

    def __init__(self, items: AsyncIterable[Any], ahead: deque[Ahead] | None = None) -> None:
        self.items = items
        self.ahead: deque[Ahead] = deque() if ahead is None else ahead

    def __aiter__(self) -> AsyncIterator[Any]:
        return aiter(self.items)


class Admission:
    """Keys items and decides which of them run.

    Attributes:
        redrive: for `ab.redrive`: input position → (DLQ entry id, job key).
        skipped_at: input positions of skipped jobs (kept for a rollback).
        live: keys admitted and not yet acknowledged → input position (only
            while duplicates are checked against the store).
    """

    def __init__(self, opts: Options, run_id: str) -> None:
        self._opts = opts
        self._run_id = run_id
        self.ack: Callable[[JobOutcome[Any]], None] = _unset
        """Acknowledges a SKIPPED outcome (the outcome path's, bound by the engine)."""
        self.redrive: dict[int, tuple[int, str]] | None = None
        self.skipped_at: dict[str, int | None] = {}
        self.live: dict[str, int | None] | None = None
        self._ahead: deque[Ahead] | None = None
        self.room: Callable[[], Awaitable[None]] | None = None
        """Waits while outcomes back up (set by the engine; bounds skipped outcomes too)."""
        self._seen: dict[str, int | None] | None = None
        self._skipped: set[int] = set()

    def source(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        store: Store | None,
        resumed: bool,
        seq0: int,
    ) -> Iterable[Any] | AsyncIterable[Any]:
        """The input as admission must read it: as is, or looked up in chunks first.

        Args:
            items: the batch's input.
            store: the run's store (None: nothing stored, nothing to look up).
            resumed: whether the run existed before this invocation.
            seq0: the run's last completion order before this invocation;
                stored jobs with a newer one finished in this invocation.
        """
        if self.redrive is not None:
            return items  # keys come from the DLQ, one entry each
        if isinstance(items, KeyedSource):  # keys and positions come with the items
            self._ahead = items.ahead
            return items
        custom = self._opts.key is not None
        if store is None:
            if custom:
                self._seen = {}
            return items
        if not resumed and not custom:
            return items  # positions cannot collide and nothing is stored yet
        self._ahead = deque()
        if custom:
            self.live = {}
        return self._prefetch(items, store, seq0)

    async def _prefetch(
        self, items: Iterable[Any] | AsyncIterable[Any], store: Store, seq0: int
    ) -> AsyncIterator[Any]:
        """Yield the items that must run; acknowledge the finished ones SKIPPED here.

        Without duplicate checks (keys by position), the next chunk is read and
        looked up while this one is admitted, so the store's thread and the
        event loop overlap. With them, a chunk is looked up only once every
        earlier item is admitted (see `_look_up`).
        """
        ahead = self._ahead
        assert ahead is not None
        overlap = self.live is None
        # Each key is made as its item is read: a bad item is reported where it is.
        chunks = _chunks(items, LOOKUP_CHUNK, self._key)
        index = 0
        chunk: list[tuple[Any, str]] | None = await anext(chunks, None)
        lookup = self._start(chunk, index, store, seq0) if overlap else None
        try:
            while chunk is not None:
                if lookup is not None:
                    verdicts = await lookup
                else:
                    verdicts = await self._look_up([k for _, k in chunk], index, store, seq0)
                start, index = index, index + len(chunk)
                current, failed = chunk, None
                try:
                    chunk = await anext(chunks, None)
                except Exception as exc:  # the input broke: admit what came before, then raise
                    chunk, failed = None, exc
                lookup = self._start(chunk, index, store, seq0) if overlap else None
                for position, ((item, key), done) in enumerate(
                    zip(current, verdicts, strict=True), start
                ):
                    if done is not None and self._skips(done):
                        self._skip(position, key, done)
                    else:
                        ahead.append((position, key))
                        yield item
                if failed is not None:
                    raise failed
                if self.room is not None:
                    await self.room()  # skipped outcomes wait for the reader like any other
        finally:
            if lookup is not None and not lookup.done():
                lookup.cancel()

    def _start(
        self, chunk: list[tuple[Any, str]] | None, start: int, store: Store, seq0: int
    ) -> asyncio.Future[list[FinishedJob | None]] | None:
        if chunk is None:
            return None
        return asyncio.ensure_future(self._look_up([k for _, k in chunk], start, store, seq0))

    async def _look_up(
        self, keys: list[str], start: int, store: Store, seq0: int
    ) -> list[FinishedJob | None]:
        live = self.live
        # Taken before the lookup: a key acknowledged meanwhile is committed, so found.
        in_flight = {k: live[k] for k in keys if k in live} if live is not None else {}
        found = await store.lookup(self._run_id, list(dict.fromkeys(keys)))
        if live is None:
            return [found.get(k) for k in keys]
        verdicts: list[FinishedJob | None] = []
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            position = start + i
            if key in first:
                raise DuplicateKey(key, first[key], position)
            if key in in_flight:
                raise DuplicateKey(key, in_flight[key], position)
            first[key] = position
            done = found.get(key)
            if done is not None:
                if done.seq > seq0:  # committed by this invocation: an earlier item had it
                    raise DuplicateKey(key, done.index, position)
                if self._skips(done):
                    # Skipped twice in one invocation would hand one item another's
                    # result. A hash per skipped key (not the key) bounds the memory.
                    h = hash(key)
                    if h in self._skipped:
                        raise DuplicateKey(key, None, position)
                    self._skipped.add(h)
            verdicts.append(done)
        return verdicts

    def _key(self, index: int | None, item: Any) -> str:
        keyfn = self._opts.key
        if keyfn is None:
            return str(index)
        k = keyfn(item)
        # Stored and looked up in the same form (lone surrogates escaped).
        return storable_key(k if isinstance(k, str) else str(k))

    def __call__(self, index: int | None, item: Any) -> Entry | None:
        """Make an entry for a new item (None: it was acknowledged SKIPPED instead)."""
        redrive = self.redrive
        restore = None
        if self._ahead is not None:
            ahead = self._ahead.popleft()  # looked up (and positioned) by _prefetch
            index, key = ahead[0], ahead[1]
            if len(ahead) > 2:  # a KeyedSource's job that ran before elsewhere
                restore = ahead[2]
        elif redrive is not None and index is not None:
            key = redrive[index][1]
        elif self._opts.key is None:
            key = str(index)
        else:
            key = self._key(index, item)
            seen = self._seen
            if seen is not None:
                if key in seen:
                    raise DuplicateKey(key, seen[key], index)
                seen[key] = index
        if self.live is not None:
            self.live[key] = index
        entry = Entry(self._run_id, index, key, item)
        if redrive is not None and index is not None:
            entry.redrive_of = redrive[index][0]
        if restore is not None:
            restore(entry)
        return entry

    def entries(self) -> Callable[[Iterable[Any]], Iterator[Entry]] | None:
        """For a run keyed by position with nothing to look up or track, what
        makes a sync input's entries without a Python call per item: `Entry`
        itself, mapped over the positions and items (None for any other run:
        then every item goes through `__call__`)."""
        if (
            self._ahead is not None
            or self.redrive is not None
            or self._opts.key is not None
            or self.live is not None
        ):
            return None
        run_id = self._run_id

        def entries(items: Iterable[Any]) -> Iterator[Entry]:
            return map(Entry, repeat(run_id), count(), map(str, count()), items)

        return entries

    def _skip(self, index: int, key: str, done: FinishedJob) -> None:
        codec = self._opts.result_codec
        if self._opts.compensate is not None:
            self.skipped_at[key] = index
        result = done.result if codec is None else codec.decode(done.result)
        self.ack(fast_outcome(key, JobStatus.SKIPPED, result, done.attempts, 0.0, index))

    def release(self, key: str) -> None:
        """A job was acknowledged: its key is no longer in flight."""
        if self.live is not None:
            self.live.pop(key, None)

    def _skips(self, done: FinishedJob) -> bool:
        """Whether a job an earlier invocation finished is skipped now.

        Succeeded jobs are; dead-lettered ones unless ``retry_dead=True``;
        compensated ones never: a rollback undid them, so they run again
        (reporting them SKIPPED would claim success over undone work).
        """
        status = done.status
        if status is JobStatus.COMPENSATED:
            return False
        return not (status is JobStatus.DEAD_LETTERED and self._opts.retry_dead)


def _unset(outcome: JobOutcome[Any]) -> None:
    raise AssertionError("Admission.ack was not bound")


async def _chunks(
    items: Iterable[Any] | AsyncIterable[Any],
    size: int,
    key: Callable[[int, Any], str],
) -> AsyncIterator[list[tuple[Any, str]]]:
    """``(item, key)`` pairs in lists of up to ``size``, read lazily (sync or async input).

    When the input (or making a key) raises, the items read before it are
    yielded first, and the error is raised on the next step: every item
    before a bad one is admitted.
    """
    chunk: list[tuple[Any, str]] = []
    index = 0
    try:
        if isinstance(items, AsyncIterable):
            async for item in items:
                chunk.append((item, key(index, item)))
                index += 1
                if len(chunk) >= size:
                    yield chunk
                    chunk = []
        else:
            for item in items:
                chunk.append((item, key(index, item)))
                index += 1
                if len(chunk) >= size:
                    yield chunk
                    chunk = []
    except Exception:
        if chunk:
            yield chunk
        raise
    if chunk:
        yield chunk
