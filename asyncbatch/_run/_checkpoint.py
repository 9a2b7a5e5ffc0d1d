"""The checkpoint writer: group commit, then acknowledge.

Workers hand finished jobs to `Checkpointer.add` and move on. One writer task
takes everything pending, commits it in ONE store transaction, and only then
acknowledges each outcome (counts it, yields it). While a commit is in
flight the next group accumulates, so the cost of a durable commit is shared
by every job that finished meanwhile.

The writer is shielded from cancellation: a cancelled run (Ctrl-C, a
cancelled stream reader, an abort) still commits every job that finished,
and the writer stops only when the engine closes it. If a commit fails
(disk full, read-only file) the writer records the error and stops; `flush`
then returns at once instead of waiting for commits that will never come,
and the engine raises that error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio

from asyncbatch._result import JobOutcome
from asyncbatch._store import JobRecord, Store

__all__ = ["Checkpointer"]

AckAll = Callable[[list[JobOutcome[Any] | None]], None]


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
        self._taken = taken
        self._durability = durability
        self._ack = ack
        # Two parallel lists, kept (not replaced) across groups, so that `pending`
        # can be their length as a bound C method: the ready queue asks it before
        # every new item.
        self._records: list[JobRecord | JobOutcome[Any]] = []
        self._outcomes: list[JobOutcome[Any] | None] = []
        self.pending: Callable[[], int] = self._records.__len__
        """How many records wait for the next commit (the group being committed is
        not counted).

        New items wait while this reaches the engine's cap (`_engine.backlog_cap`,
        ``max(group_size, 2 x concurrency)``). Not counting the group in flight
        lets the workers go on while it commits, so execution and commits overlap;
        what a crash can lose stays bounded by the jobs in flight plus two
        groups (the one in flight and the next). A smaller cap bounds that
        tighter but throttles every store whose commit has a fixed cost
        (measured: a cap of 256 halved checkpointed throughput on SQLite and
        PostgreSQL).
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
