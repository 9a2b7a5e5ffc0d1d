"""`PostgresDeadLetterQueue`: ``PostgresStore.dlq``, the dead-letter queue in the ``dlq`` table.

It reads and changes entries only; entries are written by `PostgresStore.commit`,
in the same transaction as the job that was dead-lettered (or resolved). Its
changes go through the store's writer, so they never interleave with a commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from asyncbatch._result import DeadLetter

from ._common import DeadLetterFilter, DeadLetterQueueBase, dead_letter
from ._postgres_sql import QUERIES

if TYPE_CHECKING:  # _postgres imports this module to build its `dlq`
    import asyncpg

    from ._postgres import PostgresStore

__all__ = ["PostgresDeadLetterQueue"]


def _params(f: DeadLetterFilter) -> tuple[Any, ...]:
    """The parameters of dlq_purge, the first six dlq_page's (None: that filter is off)."""
    return (f.run_id, f.kind, f.error_type, f.status, f.since, f.until, f.limit)


def _value(row: asyncpg.Record) -> DeadLetter:
    return dead_letter(**dict(row.items()))


class PostgresDeadLetterQueue(DeadLetterQueueBase):
    """``PostgresStore.dlq``: the dead-letter queue in the ``dlq`` table."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def _select(self, f: DeadLetterFilter) -> list[DeadLetter]:
        # dlq_page from the start: its keyset condition is off with no id ($7 NULL).
        rows = await self._store._fetch(QUERIES.dlq_page, *_params(f)[:6], None, f.limit)
        return [_value(row) for row in rows]

    async def _page(self, f: DeadLetterFilter, after: int | None, size: int) -> list[DeadLetter]:
        rows = await self._store._fetch(QUERIES.dlq_page, *_params(f)[:6], after, size)
        return [_value(row) for row in rows]

    async def get(self, id: int) -> DeadLetter:
        """One entry; raises `KeyError` for an unknown id."""
        rows = await self._store._fetch(QUERIES.dlq_get, id)
        if not rows:
            raise KeyError(f"no dead letter with id {id} in {self._store.url}")
        return _value(rows[0])

    async def _delete(self, f: DeadLetterFilter) -> int:
        token = uuid.uuid4().hex
        deleted: list[int] = []  # what the last attempt that ran the body deleted

        async def body(conn: asyncpg.Connection) -> int:
            # A retry after a lost connection whose purge had landed deletes
            # nothing more: the token says so, and it reports the first count.
            if await conn.fetchval(QUERIES.token_claim, token) is None:
                return deleted[-1]
            done = await conn.execute(QUERIES.dlq_purge, *_params(f))
            deleted.append(int(done.split()[-1]))  # "DELETE n"
            return deleted[-1]

        return await self._store._write(body)

    async def mark_redriven(self, ids: Sequence[int]) -> None:
        """Set status ``"redriven"`` and bump ``redrive_count`` (unknown ids are ignored)."""
        now = self._store._clock()
        token = uuid.uuid4().hex

        async def body(conn: asyncpg.Connection) -> None:
            await conn.execute(QUERIES.dlq_mark_redriven, list(ids), now, token)

        await self._store._write(body)
