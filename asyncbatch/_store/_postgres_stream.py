"""A shared run's finished jobs, read from PostgreSQL in completion order, each once.

Many processes commit the jobs of one shared run at once, each drawing
``seq`` from one sequence inside its own transaction, so rows become
visible out of ``seq`` order. `RunTail` reads pages of ``seq`` past its
cursor but never past a *settled* seq: one that no transaction still in
flight can commit a row below (see ``sql/postgres_stream.sql``). Memory is
one page: the database is the buffer between the writers and the reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._postgres_sql import load_named

if TYPE_CHECKING:
    import asyncpg

    from ._postgres import PostgresStore

__all__ = ["Mark", "RunTail", "StreamQueries"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamQueries:
    """The statements of ``postgres_stream.sql``, by name."""

    stream_seq: str
    stream_writers: str
    stream_pending: str
    stream_page: str
    stream_counts: str




S = load_named("postgres_stream.sql", StreamQueries)


@dataclass(frozen=True, slots=True)
class Mark:
    """A seq drawn by now (``seq``) and the transactions that might still commit below it."""

    seq: int
    writers: list[str]


class RunTail:
    """Pages of one run's jobs in completion order, up to a settled seq.

    Args:
        store: an open store (its read connections are used).
        run_id: the run.
    """

    def __init__(self, store: PostgresStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id

    async def mark(self) -> Mark:
        """The sequence's value, then the writers that may still commit at or below it.

        Two statements, in this order: a writer that drew a seq up to the
        value read holds its lock on the jobs table when the second looks.
        """

        async def body(conn: asyncpg.Connection) -> Mark:
            seq = int(await conn.fetchval(S.stream_seq))
            writers = list(await conn.fetchval(S.stream_writers))
            return Mark(seq, writers)

        return await self.store._read(body)

    async def settled(self, mark: Mark) -> bool:
        """True once no row with a seq up to ``mark.seq`` can still appear."""
        if not mark.writers:
            return True
        rows = await self.store._fetch(S.stream_pending, mark.writers)
        return int(rows[0][0]) == 0

    async def page(self, after: int, upto: int, limit: int) -> list[asyncpg.Record]:
        """Up to ``limit`` jobs with ``after < seq <= upto``, in seq order."""
        if upto <= after:
            return []
        return await self.store._fetch(S.stream_page, self.run_id, after, upto, limit)

    async def counts(self, seq0: int) -> list[tuple[str, bool, int]]:
        """``(status, finished by an earlier invocation, jobs)``; ``seq0``: the run's start."""
        rows = await self.store._fetch(S.stream_counts, self.run_id, seq0)
        return [(r["status"], bool(r["earlier"]), int(r["n"])) for r in rows]

    async def last_seq(self) -> int:
        """The run's highest stored seq (0 for none)."""
        return await self.store.last_seq(self.run_id)
