"""Shared runs on PostgreSQL: leased chunks, fenced group commits, run-wide state.

One run, many worker processes on any machines. The coordinator writes the
input as *chunk* rows (`SharedBoard.enqueue`); every worker claims chunks
with one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)``
that also takes chunks whose lease ran out (`SharedBoard.claim`), so a dead
worker's chunks need no reaper. Each claim raises the chunk's *epoch*: the
fencing token. `SharedBoard.commit` is the group commit of a worker: in ONE
transaction it first renews the leases of the chunks it writes records of,
where owner and epoch still match (and the lease has not run out), marking
those whose every key now has its row as done; drops the records of every
chunk it lost; and writes the rest with the store's own statements. (The
worker's heartbeat renews every chunk it holds, every quarter lease.) A worker
that was paused past its lease (SIGSTOP, a partition) therefore writes nothing
when it wakes: its epoch is no longer the chunk's.

The run row carries the run-wide decisions, each one compare-and-swap: an
abort (`SharedBoard.abort`, the first reason wins) and the finish
(`SharedBoard.finish`: input all enqueued, every chunk done, no abort),
whose winner writes the counts from SQL aggregates and the merged report,
and deletes the run's chunks (its jobs stay). Every statement is in
``sql/postgres_shared.sql``. Leases are on the database clock.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asyncbatch._errors import UnknownRun

from ._chunk_items import LOCAL, Unsendable, items_of, items_text
from ._common import decode, encode, zero_counts
from ._ownership import owner_is_gone
from ._postgres_plan import plan
from ._postgres_sql import load_named
from ._protocol import JobRecord

if TYPE_CHECKING:
    import asyncpg

    from ._postgres import PostgresStore

__all__ = ["Chunk", "Retry", "RunState", "SharedBoard", "SharedQueries"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedQueries:
    """The statements of ``postgres_shared.sql``, by name."""

    run_share: str
    run_state: str
    runs_shared_open: str
    run_input_done: str
    run_abort: str
    run_finish: str
    run_close: str
    run_counts: str
    chunks_add: str
    chunks_claim: str
    chunks_positions: str
    chunks_renew: str
    chunks_fence: str
    chunks_retry: str
    chunks_release: str
    chunks_holders: str
    chunks_free: str
    chunks_forget: str
    workers_forget: str
    worker_beat: str
    workers_counts: str
    workers_reports: str
    workers_live: str


S = load_named("postgres_shared.sql", SharedQueries)


@dataclass(slots=True)
class Chunk:
    """A claimed chunk: its items, and the epoch this worker's writes must carry.

    Attributes:
        no: the input position of its first item (the chunk's name).
        epoch: the fencing token of this claim.
        keys: the job keys, in input order.
        idxs: their input positions.
        items: the items (decoded payloads).
        done: keys that already have a finished row (a reclaimed chunk): not run again.
        retry: for a retry handed back to the run, the job's state so far
            (``attempt``, ``history``, ``prev_delay``, ``kind``), else None.
    """

    no: int
    epoch: int
    keys: list[str]
    idxs: list[int]
    items: list[Any]
    done: set[str]
    retry: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """A job's retry handed back to the run: claimable by any worker after ``delay`` s.

    Attributes:
        chunk: the chunk the job came from (the retry is written only while
            this worker still holds it).
        no: the retry row's name (below zero, unique per key and attempt).
        key: the job key.
        index: its input position.
        item: the item.
        delay: seconds until it is due (database clock).
        state: the job's attempts so far, as `Chunk.retry` returns them.
    """

    chunk: int
    no: int
    key: str
    index: int
    item: Any
    delay: float
    state: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunState:
    """A shared run as a worker's heartbeat sees it."""

    status: str
    shared: bool
    input_done: bool
    abort_reason: str | None
    job: str
    config: dict[str, Any]
    open: int
    """Chunks not done yet."""
    held: int
    """Chunks claimed under a lease that has not run out."""


class SharedBoard:
    """The shared-run statements over one `PostgresStore` (its pool and its commit).

    Args:
        store: the open store.
        lease: seconds a claim (or renewal) holds a chunk.
    """

    def __init__(self, store: PostgresStore, *, lease: float) -> None:
        self.store = store
        self.lease = float(lease)
        self.local: dict[int, list[Any]] = {}
        """Chunks whose items stay in this process (the coordinator's) → the items."""

    async def _run(self, sql: str, *args: Any) -> str:
        async def body(conn: asyncpg.Connection) -> str:
            return str(await conn.execute(sql, *args))

        return await self.store._db.write(body)

    async def _rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self.store._fetch(sql, *args)

    # ----------------------------------------------------------- the run

    async def share(self, run_id: str) -> None:
        """Mark the run shared (the coordinator, before it enqueues)."""
        await self._run(S.run_share, run_id)

    async def state(self, run_id: str) -> RunState:
        """The run's status and run-wide decisions; raises `UnknownRun`."""
        rows = await self._rows(S.run_state, run_id)
        if not rows:
            raise UnknownRun(run_id)
        r = rows[0]
        return RunState(
            status=r["status"],
            shared=r["shared"],
            input_done=r["input_done"],
            abort_reason=r["abort_reason"],
            job=r["job"],
            config=decode(r["config"]) or {},
            open=int(r["open"]),
            held=int(r["held"]),
        )

    async def open_runs(self, job: str) -> list[str]:
        """Running shared runs of ``job`` with chunks left, oldest first."""
        return [r[0] for r in await self._rows(S.runs_shared_open, job)]

    async def enqueue(
        self,
        run_id: str,
        chunks: Sequence[tuple[int, list[str], list[int], list[Any]]],
        *,
        lookup: bool,
        pin: bool = False,
    ) -> None:
        """Write chunks ``(first position, keys, positions, items)``; existing ones stay.

        Args:
            lookup: their keys may have finished in an earlier invocation
                (a resumed coordinator): claims look them up.
            pin: a chunk with an item that cannot be sent stays in this
                process (`local`: only this board claims it); else raise.

        Raises:
            Unsendable: an item cannot be sent and ``pin`` is false.
        """
        rows = []
        for no, keys, idxs, items in chunks:
            try:
                text = items_text(items)  # JSON, or pickled where JSON would change an item
            except Unsendable:
                if not pin:
                    raise
                text = LOCAL
                self.local[no] = items
            rows.append((run_id, no, keys, idxs, text, lookup))

        async def body(conn: asyncpg.Connection) -> None:
            await conn.executemany(S.chunks_add, rows)

        await self.store._db.write(body)

    async def positions_of(self, run_id: str, keys: list[str]) -> dict[str, int]:
        """The first input position of each of ``keys`` in the run's chunks (if any)."""
        return {r[0]: int(r[1]) for r in await self._rows(S.chunks_positions, run_id, keys)}

    async def input_done(self, run_id: str) -> None:
        """The coordinator has enqueued its whole input."""
        await self._run(S.run_input_done, run_id)

    async def abort(self, run_id: str, reason: str) -> str:
        """Abort the run (compare-and-swap): returns the reason that stands (the first)."""

        async def body(conn: asyncpg.Connection) -> str:
            return str(await conn.fetchval(S.run_abort, run_id, reason))

        return await self.store._db.write(body)

    async def finish(
        self, run_id: str, report: Callable[[list[dict[str, Any]], dict[str, int]], Any]
    ) -> bool:
        """Finish the run if it is done (compare-and-swap); True for the one winner.

        The winner stores the counts (SQL aggregates) and ``report(worker
        reports, counts)``, and deletes the run's chunks and worker rows, all
        in the same transaction.
        """
        now = time.time()

        async def body(conn: asyncpg.Connection) -> bool:
            if await conn.fetchval(S.run_finish, run_id, now) is None:
                return False
            counts = zero_counts()
            counts.update((s, n) for s, n in await conn.fetch(S.run_counts, run_id))
            reports = [decode(r[0]) for r in await conn.fetch(S.workers_reports, run_id)]
            whole = report([r for r in reports if r], counts)
            await conn.execute(S.run_close, run_id, encode(counts), encode(whole))
            await conn.execute(S.chunks_forget, run_id)
            await conn.execute(S.workers_forget, run_id)
            return True

        return await self.store._db.write(body)

    async def close(self, run_id: str, counts: dict[str, int], report: Any) -> None:
        """Store the run's counts and report and release it (after an abort's rollback)."""
        await self._run(S.run_close, run_id, encode(counts), encode(report))

    async def run_counts(self, run_id: str) -> dict[str, int]:
        """The run's jobs per status, from the jobs table."""
        counts = zero_counts()
        counts.update((s, n) for s, n in await self._rows(S.run_counts, run_id))
        return counts

    # ----------------------------------------------------------- chunks

    async def claim(self, run_id: str, owner: str, n: int, finished: Iterable[str]) -> list[Chunk]:
        """Claim up to ``n`` claimable chunks (pending, or their lease ran out).

        Args:
            finished: the statuses whose jobs are not run again (their keys
                come back in `Chunk.done`).
        """
        rows = await self._claim(run_id, owner, n, list(finished))
        local = self.local
        return [
            Chunk(
                no=r["no"],
                epoch=r["epoch"],
                keys=list(r["keys"]),
                idxs=list(r["idxs"]),
                items=local[r["no"]] if r["payloads"] == LOCAL else items_of(r["payloads"]),
                done=set(r["done"]),
                retry=decode(r["retry"]) if r["retry"] is not None else None,
            )
            for r in rows
        ]

    async def _claim(
        self, run_id: str, owner: str, n: int, finished: list[str]
    ) -> list[asyncpg.Record]:
        async def body(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(
                await conn.fetch(
                    S.chunks_claim, run_id, n, owner, self.lease, finished, list(self.local)
                )
            )

        return await self.store._db.write(body)

    async def renew(self, run_id: str, owner: str, held: dict[int, int]) -> set[int]:
        """Renew ``held`` (chunk → epoch); returns the chunks still this worker's."""
        if not held:
            return set()
        nos, epochs = list(held), list(held.values())

        async def body(conn: asyncpg.Connection) -> set[int]:
            rows = await conn.fetch(S.chunks_renew, run_id, nos, epochs, owner, self.lease)
            return {r[0] for r in rows}

        return await self.store._db.write(body)

    async def free_gone(self, run_id: str) -> int:
        """Make the chunks of holders known dead claimable now; returns how many holders.

        A holder is known dead when it is a process of this host that no
        longer exists (`owner_is_gone`: a worker or coordinator killed here);
        one elsewhere keeps its chunks until its lease runs out.
        """
        here = f"{socket.gethostname()}:{os.getpid()}:"  # this process's sessions: alive
        holders = [r[0] for r in await self._rows(S.chunks_holders, run_id)]
        gone = [h for h in holders if not h.startswith(here) and owner_is_gone(h)]
        if gone:
            await self._run(S.chunks_free, run_id, gone)
        return len(gone)

    async def release(self, run_id: str, owner: str, held: dict[int, int]) -> None:
        """Let ``held`` go at once: another worker may claim them now."""
        if held:
            await self._run(S.chunks_release, run_id, owner, list(held), list(held.values()))

    async def commit(
        self,
        records: Sequence[JobRecord],
        *,
        run_id: str,
        owner: str,
        fence: dict[int, tuple[int, bool]],
        chunk_of: Callable[[JobRecord], int | None],
        retries: Sequence[Retry] = (),
    ) -> set[int]:
        """The fenced group commit; returns the chunks of ``fence`` still this worker's.

        In one transaction: renew the leases of ``fence`` (chunk → (epoch,
        done after this commit)) where owner and epoch still match, marking
        the done ones done; drop every record whose chunk (``chunk_of``) did
        not come back; write the rest as `PostgresStore.commit` would, and
        the ``retries`` of kept chunks as claimable rows (`chunks_retry`). Safe
        to retry like the store's commit: its token makes a retry after a
        commit that landed write nothing (the chunks it marked done then
        no longer come back, and are no longer this worker's to hold).
        """
        from ._postgres import _Redo

        token = uuid.uuid4().hex
        nos = list(fence)
        epochs = [e for e, _ in fence.values()]
        done = [d for _, d in fence.values()]

        async def body(conn: asyncpg.Connection) -> set[int]:
            rows = await conn.fetch(S.chunks_fence, run_id, nos, epochs, owner, self.lease, done)
            kept = {r[0] for r in rows}
            mine = [r for r in records if chunk_of(r) in kept]
            if mine:
                now = self.store._clock()
                await self.store._apply(conn, token, [run_id], plan(mine, now), now)
            handed = [r for r in retries if r.chunk in kept]
            if handed:
                await conn.execute(
                    S.chunks_retry, run_id, [r.no for r in handed], [r.key for r in handed],
                    [r.index for r in handed], [items_text([r.item]) for r in handed],
                    [r.delay for r in handed], [encode(r.state) for r in handed],
                )  # fmt: skip
            return kept

        try:
            return await self.store._write(body)
        except _Redo:  # rolled back whole; the run is no longer taken for fresh
            return await self.store._write(body)

    # ----------------------------------------------------------- workers

    async def beat(
        self,
        run_id: str,
        owner: str,
        counts: dict[str, Any],
        *,
        report: dict[str, Any] | None = None,
        stopped: bool = False,
    ) -> None:
        """Write this worker's counts (and, once it stops, its report)."""
        await self._run(
            S.worker_beat, run_id, owner, encode(counts) or "{}",
            None if report is None else encode(report), "stopped" if stopped else "working",
        )  # fmt: skip

    async def worker_counts(self, run_id: str) -> list[dict[str, Any]]:
        """Every worker's counts (as written by `beat`)."""
        return [decode(r[0]) or {} for r in await self._rows(S.workers_counts, run_id)]

    async def live_workers(self, run_id: str, within: float) -> int:
        """Workers that beat within ``within`` seconds and have not stopped."""
        rows = await self._rows(S.workers_live, run_id, within)
        return int(rows[0][0])

