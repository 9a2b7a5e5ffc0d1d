"""The checkpoint writer: group commit, then acknowledge.

Workers hand finished jobs to `Checkpointer.add` and move on. One writer task
takes everything pending, commits it in ONE store transaction, and only then
acknowledges each outcome (counts it, yields it). While a commit is in
flight the next group accumulates, so the cost of a durable commit is shared
by every job that finished meanwhile. A store that can take a group while it
commits the one before (`SQLiteStore.send`, its writer process) gets it at
once: two groups in flight, acknowledged in the order sent.

The writer is shielded from cancellation: a cancelled run (Ctrl-C, a
cancelled stream reader, an abort) still commits every job that finished,
and the writer stops only when the engine closes it. If a commit fails
(disk full, read-only file) the writer records the error and stops; `flush`
then returns at once instead of waiting for commits that will never come,
and the engine raises that error.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio

from asyncbatch._result import JobOutcome
from asyncbatch._store import JobRecord, Store
from asyncbatch._store._common import mark_seen

__all__ = ["Checkpointer"]

AckAll = Callable[[list[JobOutcome[Any] | None]], None]
Send = Callable[..., Awaitable["asyncio.Future[None]"]]
"""A store's `send` (`SQLiteStore.send`): a commit in two steps."""


class Checkpointer:
    """Group-commits `JobRecord`s to a store and acknowledges after commit.

    Attributes:
        error: the exception that stopped the writer, or None.
    """

    __slots__ = (
        "_ack",
        "_closed",
        "_commit",
        "_durability",
        "_idle",
        "_in_commit",
        "_outcomes",
        "_records",
        "_send",
        "_store",
        "_taken",
        "_wake",
        "_woken",
        "error",
        "pending",
        "takes_outcomes",
    )

    def __init__(
        self,
        store: Store,
        durability: Any,
        ack: AckAll,
        taken: Callable[[], None] | None = None,
        run_id: str | None = None,
    ) -> None:
        self.takes_outcomes: bool = run_id is not None and getattr(
            type(store), "takes_outcomes", False
        )
        """Whether `add` may take a plain success of ``run_id`` as its outcome, for its
        record: the store commits it without a `JobRecord` (`SQLiteStore.commit`)."""
        self._commit: Callable[..., Awaitable[None]] = (
            partial(store.commit, run_id=run_id)  # type: ignore[call-arg]
            if self.takes_outcomes
            else store.commit
        )
        self._store = store
        self._send: Send | None = None
        if hasattr(type(store), "send"):
            send = store.send  # type: ignore[attr-defined]
            self._send = partial(send, run_id=run_id) if self.takes_outcomes else send
        self._taken = taken
        self._durability = durability
        self._ack = ack
        # Two parallel lists, kept (not replaced) across groups, so that `pending`
        # can be their length as a bound C method: the ready queue asks it before
        # every new item.
        self._records: list[JobRecord | JobOutcome[Any]] = []
        self._outcomes: list[JobOutcome[Any] | None] = []
        self.pending: Callable[[], int] = self._records.__len__
        """How many records wait for the next commit (the groups in flight are not
        counted).

        New items wait while this reaches the engine's cap (`_engine.backlog_cap`,
        ``max(group_size, 2 x concurrency)``). Not counting the group in flight
        lets the workers go on while it commits, so execution and commits overlap;
        what a crash can lose stays bounded by the jobs in flight plus two
        groups (the one in flight and the next), three where the store takes a
        group while it commits the one before (`SQLiteStore.send`: counting
        that one as waiting held the workers back until both had committed,
        0.46x instead of 0.58x of the run without a store, measured). A smaller
        cap bounds that tighter but throttles every store whose commit has a
        fixed cost (measured: a cap of 256 halved checkpointed throughput on
        SQLite and PostgreSQL).
        """
        self._woken = False
        self._in_commit = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self.error: BaseException | None = None

    def add(self, record: JobRecord | JobOutcome[Any], outcome: JobOutcome[Any] | None) -> None:
        """Queue a record; ``outcome`` (if any) is acknowledged once it is committed.

        ``record`` is ``outcome`` itself for a plain success, when `takes_outcomes`.
        """
        self._records.append(record)
        self._outcomes.append(outcome)
        if not self._woken:
            self._woken = True
            self._idle.clear()
            self._wake.set()

    async def run(self) -> None:
        """Commit groups until closed and drained (shielded: a cancelled run still commits)."""
        with anyio.CancelScope(shield=True):
            try:
                await self._commit_until_closed()
            except BaseException as exc:
                self.error = exc
                self._idle.set()
                raise

    async def _commit_until_closed(self) -> None:
        if self._send is not None:
            await self._send_until_closed(self._send)
            return
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._woken = False
            records, outcomes = self._records, self._outcomes
            while records:
                group, acks = records.copy(), outcomes.copy()
                records.clear()
                outcomes.clear()
                self._in_commit = len(group)
                if self._taken is not None:
                    self._taken()  # the backlog just emptied: held-back workers may go on
                try:
                    await self._commit(group, durability=self._durability)
                finally:
                    self._in_commit = 0
                self._ack(acks)
            self._idle.set()
            if self._closed:
                return

    async def _send_until_closed(self, send: Send) -> None:
        """`_commit_until_closed` for a store that can take a group while it commits the one
        before (`send`): two groups in flight, so it never waits for this loop.

        What is pending goes as soon as fewer than two groups are in flight;
        with none in flight, in two halves, so the store has the second while
        it commits the first. A crash may then lose one group more: the one
        sent behind the group being committed (see `pending`).
        """
        records, outcomes = self._records, self._outcomes
        flight: deque[tuple[asyncio.Future[None], list[JobOutcome[Any] | None], int]] = deque()
        try:
            while True:
                if records and len(flight) < 2:
                    self._wake.clear()
                    self._woken = False
                    taken, acks = records.copy(), outcomes.copy()
                    records.clear()
                    outcomes.clear()
                    n = len(taken)
                    self._in_commit += n
                    # Halves only where the store takes one while it commits the other.
                    ahead = self._store.sends_ahead  # type: ignore[attr-defined]
                    cuts = [n // 2, n] if not flight and ahead and n >= 2 * ahead else [n]
                    start = 0
                    for end in cuts:
                        committed = await send(taken[start:end], durability=self._durability)
                        flight.append((committed, acks[start:end], end - start))
                        start = end
                    if self._taken is not None:
                        self._taken()  # the backlog just shrank: held-back workers may go on
                    continue
                if flight:
                    committed, acks, size = flight[0]
                    await committed
                    flight.popleft()
                    self._in_commit -= size
                    self._ack(acks)
                    continue
                self._idle.set()
                if self._closed:
                    return
                await self._wake.wait()
        finally:
            for committed, _, _ in flight:
                committed.add_done_callback(mark_seen)  # failed before it: not awaited
            self._in_commit = 0

    async def flush(self) -> None:
        """Wait until everything added so far is committed and acknowledged.

        Returns at once when the writer has failed (see `error`).
        """
        while (self._records or self._in_commit) and self.error is None:
            await self._idle.wait()
            if self._records and self.error is None:
                self._idle.clear()
                self._wake.set()

    def close(self) -> None:
        """Let `run` return once what is pending has been committed."""
        self._closed = True
        self._wake.set()
