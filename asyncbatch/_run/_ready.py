"""The ready queue: how admitted jobs reach the workers.

A sync input is pulled by the workers themselves, one item whenever one is
free, so nothing is read ahead. An async input is read by one feeder task
into the ready deque, at most ``concurrency`` items ahead. Retries that come
due (and jobs released by an open circuit) are pushed to the same deque and
served before new items. No new item is admitted while the checkpoint writer
or a stream reader is ``max_backlog`` outcomes behind, nor while
``max_parked`` jobs are parked (waiting out a backoff or an open circuit):
memory grows with the concurrency and the parked cap, never with the number
of items.

An outage for everyone is told apart from items that fail on their own by
their retries: the *strain* is a moving share (weight 1/16) of failed
retries among failed retries and succeeded jobs. Items that fail once and
then succeed add nothing to it; an outage, where retries fail too, drives it
towards 1. At `STRAIN_ON`, while jobs are parked, new items wait while
``concurrency`` jobs are alive (running, ready or parked): freed slots no
longer start new items that would burn their attempts during the outage, so
it costs no more attempts than a retry loop holding a semaphore. Successes
bring it down again (below `STRAIN_OFF` only the parked cap applies). Only a
circuit breaker spends no attempts at all during an outage.

When the input itself raises (a malformed line), admission stops there: the
jobs already admitted run to their end, and the engine raises the error
after they are committed (`input_error`).

Measured before choosing: a deque plus futures hands an item to a worker about
10x faster than an anyio memory object stream here (see ``benchmarks/``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from itertools import count
from typing import TYPE_CHECKING, Any, Protocol

from ._entry import Entry

if TYPE_CHECKING:
    from ._control import Control

__all__ = ["STRAIN_OFF", "STRAIN_ON", "ReadyQueue"]

STRAIN_ON = 0.75
"""Strain (the recent share of failed retries among failed retries and succeeded jobs)
at which admission holds the alive jobs at ``concurrency`` while any are parked."""
STRAIN_OFF = 0.5
"""...and below which it lets new items in freely again (hysteresis)."""
_KEEP = 15 / 16  # what the strain keeps of its value at each failed retry or success

Admit = Callable[[int | None, Any], "Entry | None"]
Entries = Callable[[Iterable[Any]], Iterator["Entry | None"]]
"""What makes the entries of a sync input (None: an item admitted earlier, skipped)."""


class _Backlogged(Protocol):
    @property
    def pending(self) -> Callable[[], int]: ...


class ReadyQueue:
    """Hands entries to workers; knows when the run has no work left.

    Args:
        admit: makes an entry from ``(index, item)``, or returns None when the
            item needs no run (already finished in an earlier run).
        concurrency: the number of workers (the feeder's read-ahead).
        backlog: how many outcomes wait for the writer or reader, if anyone
            can fall behind.
        max_backlog: above this backlog, new items wait.
        max_parked: while this many jobs are parked, new items wait
            (default ``max(1000, 10 * concurrency)``).
    """

    __slots__ = (
        "_admit",
        "_backlog",
        "_blocked",
        "_concurrency",
        "_control",
        "_credit",
        "_ended",
        "_entries",
        "_feeder_wait",
        "_gated",
        "_growing",
        "_max_backlog",
        "_max_parked",
        "_ready",
        "_source",
        "_source_done",
        "_stopped",
        "_strained",
        "_successes",
        "_successes_seen",
        "_waiters",
        "_watching",
        "input_error",
        "live",
        "parked",
        "read_ahead",
        "strain",
        "workers",
    )

    def __init__(
        self,
        admit: Admit,
        *,
        concurrency: int,
        backlog: Callable[[], int] | None,
        max_backlog: int,
        max_parked: int | None = None,
    ) -> None:
        self._admit = admit
        self._concurrency = concurrency
        self.read_ahead = 0
        """Entries an async input's feeder admits beyond the concurrency (a shared
        run's claimed chunk is in memory anyway): workers then drain a stretch
        of ready entries without waiting for the feeder after every job."""
        self._backlog = backlog
        self._max_backlog = max_backlog
        self._max_parked = max_parked if max_parked is not None else max(1000, 10 * concurrency)
        self._ready: deque[Entry] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._entries: Entries | None = None
        self._source: Iterator[Entry | None] | None = None
        self._source_done = True
        self._feeder_wait: asyncio.Future[None] | None = None
        self._blocked = False
        self._watching = True
        """Whether `finished` has more to do than count: the input is done, or
        workers or the feeder are held back (kept by `_rewatch`)."""
        self._stopped = False  # next() hands out nothing: stopped, or workers must hold
        self._ended = False  # stopped for good (`stop`)
        self._control: Control | None = None
        self._growing = False  # more workers may start (`Control` keeps it): see `next`
        self.live = 0
        """Jobs admitted and not finished: running, ready or parked."""
        self.workers = concurrency
        """Worker loops still running (the engine sets how many it starts)."""
        self.parked = 0
        """Jobs parked: waiting out a backoff or an open circuit."""
        self.strain = 0.0
        """Recent share of failed retries among failed retries and succeeded jobs (0..1)."""
        self._strained = False
        self._successes: Callable[[], int] = _none
        self._successes_seen = 0
        # Whether any hold on new items may apply: one check per new item on the hot path.
        self._gated = backlog is not None
        self._credit = 0
        """New items that may start before `next` looks at what could hold them (`_hold_new`)."""
        self.input_error: Exception | None = None
        """What the input raised, if it did (admission stopped there)."""

    def admit_with(self, admit: Admit, entries: Entries | None = None) -> None:
        """Admit items with ``admit`` from now on (the engine's choice once the input is known).

        ``entries``, when given, makes a sync input's entries itself (``admit``
        then serves an async input only): see `Admission.entries`.
        """
        self._admit = admit
        self._entries = entries

    def watch(self, writer: _Backlogged) -> None:
        """Also hold new items back while ``writer`` (the checkpointer) falls behind."""
        reader = self._backlog
        pending = writer.pending
        if reader is None:
            self._backlog = pending
        else:
            self._backlog = lambda: pending() + reader()
        self._gated = True
        self._credit = 0

    def start(self, items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterable[Any] | None:
        """Take the input; returns it back when it is async (run `feed` on it)."""
        self._source_done = False
        self._rewatch()
        if isinstance(items, AsyncIterable):
            return items
        entries = self._entries
        self._source = entries(items) if entries is not None else map(self._admit, count(), items)
        return None

    async def feed(self, items: AsyncIterable[Any]) -> None:
        """The feeder task of an async input."""
        loop = asyncio.get_running_loop()
        admit = self._admit
        index = 0
        try:
            async for item in items:
                entry = admit(index, item)
                index += 1
                if entry is None:
                    continue
                self.live += 1
                while len(self._ready) >= self._concurrency + self.read_ahead or self._behind():
                    self._feeder_wait = loop.create_future()
                    self._watching = True
                    await self._feeder_wait
                self._ready.append(entry)
                self._wake_one()
        except Exception as exc:
            self._input_failed(exc)
            return
        self._source_done = self._watching = True
        if self.live == 0:
            self._wake_all()

    async def room(self) -> None:
        """Wait while the writer or the reader is behind (new admissions would wait too)."""
        if not self._behind():
            return
        loop = asyncio.get_running_loop()
        while self._behind() and not self._ended:
            self._feeder_wait = loop.create_future()
            self._watching = True
            await self._feeder_wait

    def next(self) -> Entry | None:
        """The next entry to run, or None (then `wait`)."""
        if self._stopped:
            return None
        if self._ready:
            entry = self._ready.popleft()
            if self._feeder_wait is not None:
                self._release_feeder()
            if self._growing and not self._waiters:
                self._control.demand()  # type: ignore[union-attr]
            return entry
        source = self._source
        if source is None:
            return None
        if self._gated:
            if self._credit:
                self._credit -= 1
            elif self._hold_new():
                self._blocked = self._watching = True
                return None
        try:
            for admitted in source:
                if admitted is not None:
                    self.live += 1
                    if self._growing and not self._waiters:
                        self._control.demand()  # type: ignore[union-attr]
                    return admitted
        except Exception as exc:
            self._input_failed(exc)
            return None
        self._source = None
        self._source_done = self._watching = True
        return None

    def _input_failed(self, exc: Exception) -> None:
        """The input (or keying an item) raised: admit nothing more, let admitted jobs end."""
        self.input_error = exc
        self._source = None
        self._source_done = self._watching = True
        if self.live == 0:
            self._wake_all()

    async def wait(self) -> bool:
        """Wait for work; False when there is none left for this worker.

        Once the input is exhausted, a worker with nothing ready leaves as soon
        as the others outnumber the jobs still alive: each of those holds a
        worker or may come back (a retry, a job on a circuit) to at most one.
        So workers end with their last job instead of waiting to be woken
        together at the end (10,000 wake-ups at concurrency 10,000). A worker
        that must hold (the run is paused or resized, see `_control`) waits
        in `Control.hold` instead, until it may work again or the run is over.
        """
        control = self._control
        held = self._stopped and not self._ended and control is not None and not self.over()
        if held and await control.hold():  # type: ignore[union-attr]
            return True
        if self._stopped or (self._source_done and not self._ready and self.workers > self.live):
            self.workers -= 1
            if self._control is not None:
                self._control.left()
            if self.live == 0:
                self._wake_all()
            return False
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut
        return True

    # ------------------------------------------------ chunk forming (_chunks)

    def notify(self, fut: asyncio.Future[None]) -> None:
        """Resolve ``fut`` when the next entry becomes ready (a chunk waits to fill)."""
        self._waiters.append(fut)

    def more_coming(self) -> bool:
        """Whether an entry may still become ready: input left, or jobs parked."""
        return not self._stopped and (not self._source_done or self.parked > 0)

    def push(self, entry: Entry) -> None:
        """An admitted entry is ready again (a retry came due)."""
        self._ready.append(entry)
        self._wake_one()

    def parked_one(self) -> None:
        """A job was parked (backoff or open circuit)."""
        self.parked += 1
        if self.parked >= self._max_parked:
            self._gated = True
            self._credit = 0

    def unparked_one(self) -> None:
        """A parked job came due, or ended at its deadline."""
        self.parked -= 1
        self._regate()
        if (self._blocked or self._feeder_wait is not None) and self.parked < self._max_parked:
            self.relieve()

    def count_successes(self, successes: Callable[[], int]) -> None:
        """Where the strain reads how many jobs succeeded (read lazily, off the hot path)."""
        self._successes = successes

    def retry_failed(self) -> None:
        """A retry (attempt 2 or later) failed with a TRANSIENT/RECOVERABLE error."""
        self._settle_strain()
        self.strain = self.strain * _KEEP + (1.0 - _KEEP)
        if self.strain >= STRAIN_ON:
            self._strained = True
            self._gated = True
            self._credit = 0

    def _settle_strain(self) -> bool:
        """Count the successes since the last look; whether the run is still strained."""
        done = self._successes()
        new = done - self._successes_seen
        if new:
            self._successes_seen = done
            self.strain *= _KEEP ** min(new, 1000)
            if self._strained and self.strain < STRAIN_OFF:
                self._strained = False
                self._regate()
        return self._strained

    def finished(self) -> None:
        """An admitted job ended for good (one fewer alive: held-back items may go on)."""
        self.live -= 1
        if self._watching:
            if self.live == 0 and self._source_done:
                self._wake_all()
            if self._blocked or self._feeder_wait is not None:
                self.relieve()

    def relieve(self) -> None:
        """The backlog shrank: let held-back workers and the feeder go on."""
        if self._blocked and not self._behind(self._max_backlog // 2):
            self._blocked = False
            self._rewatch()
            self._wake_all()
        if self._feeder_wait is not None and not self._behind():
            self._release_feeder()

    def stop(self) -> list[Entry]:
        """Admit nothing more; returns the entries that were ready, not started."""
        self._stopped = self._ended = True
        leftovers, self._ready = list(self._ready), deque()
        return leftovers

    # ------------------------------------------------------ live control (_control)

    def controlled_by(self, control: Control) -> None:
        """Send workers that must hold to ``control`` (pause/resize) instead of ending them."""
        self._control = control

    def hold(self, holding: bool) -> None:
        """Raise (or lower) the flag that makes `next` hand out nothing (workers hold)."""
        if not self._ended:
            self._stopped = holding

    def growing(self, more: bool) -> None:
        """Whether more workers may start: `next` and `push` then ask `Control.demand`
        whenever they hand out work with no worker idle."""
        self._growing = more

    def resized(self, concurrency: int) -> None:
        """The number of workers changed: the feeder's read-ahead and strain cap follow."""
        self._concurrency = concurrency

    def over(self) -> bool:
        """No work is left for any worker: stopped, or every job finished."""
        return self._ended or (self._source_done and self.live == 0 and not self._ready)

    def _hold_new(self) -> bool:
        """Whether a new item must wait now (`next`, once its credit is spent).

        Credit: with no strain and the parked cap not reached, only the backlog
        can hold new items, and it grows by at most one record per job. So
        ``max_backlog - backlog`` new items may start before it needs a look
        again: one look per stretch instead of one per item. (It may then run
        over the cap by the jobs in flight, as it could when looked at before
        every item: those finish after their admission.)
        """
        if self._strained or self.parked >= self._max_parked:
            return self._behind()  # no credit: every new item looks again
        backlog = self._backlog
        if backlog is None:
            return False
        room = self._max_backlog - backlog()
        if room <= 0:
            return True
        self._credit = room - 1  # this item takes one
        return False

    def _regate(self) -> None:
        self._gated = self._backlog is not None or self._strained or self.parked >= self._max_parked

    def _behind(self, limit: int | None = None) -> bool:
        if self.parked >= self._max_parked:
            return True
        if (
            self._strained
            and self.parked
            and self.live >= self._concurrency
            and self._settle_strain()
        ):
            return True
        backlog = self._backlog
        return backlog is not None and backlog() >= (limit or self._max_backlog)

    def _release_feeder(self) -> None:
        fut = self._feeder_wait
        if fut is not None and len(self._ready) < self._concurrency:
            self._feeder_wait = None
            self._rewatch()
            if not fut.done():
                fut.set_result(None)

    def _rewatch(self) -> None:
        self._watching = self._source_done or self._blocked or self._feeder_wait is not None

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        if self._growing:
            self._control.demand()  # type: ignore[union-attr]  # nobody idle: start one

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, deque()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        if self._control is not None:
            self._control.poke()  # holding workers look again (the run may be over)


def _none() -> int:
    return 0
