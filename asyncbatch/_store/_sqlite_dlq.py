"""`SQLiteDeadLetterQueue`: ``SQLiteStore.dlq``, the dead-letter queue in the ``dlq`` table.

It reads and changes entries only; entries are written by `SQLiteStore.commit`,
in the same transaction as the job that was dead-lettered (or resolved). It
is handed the store's connection, read and transaction functions (so a DLQ
change never interleaves with a commit) and a ``forget`` callback that drops
the open-entry keys the store caches after a purge; it never imports the
store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import aiosqlite

from asyncbatch._result import DeadLetter

from ._common import DeadLetterFilter, DeadLetterQueueBase, dead_letter
from ._schema import DLQ_COLUMNS

__all__ = ["SQLiteDeadLetterQueue"]

T = TypeVar("T")
Read = Callable[[str, Iterable[Any]], Awaitable[list[Any]]]
Transaction = Callable[[Callable[[], Awaitable[T]]], Awaitable[T]]


class SQLiteDeadLetterQueue(DeadLetterQueueBase):
    """``SQLiteStore.dlq``: the dead-letter queue in the ``dlq`` table."""

    def __init__(
        self,
        *,
        db: aiosqlite.Connection,
        url: str,
        read: Read,
        transaction: Transaction[Any],
        forget: Callable[[], None],
        clock: Callable[[], float],
    ) -> None:
        self._db = db
        self._url = url
        self._read = read
        self._transaction = transaction
        self._forget = forget
        self._clock = clock

    @staticmethod
    def _clauses(f: DeadLetterFilter) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("run_id", f.run_id), ("kind", f.kind), ("status", f.status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if f.error_type is not None:
            clauses.append("(error_type = ? OR substr(error_type, -?) = ?)")
            params += [f.error_type, len(f.error_type) + 1, "." + f.error_type]
        if f.since is not None:
            clauses.append("created_at >= ?")
            params.append(f.since)
        if f.until is not None:
            clauses.append("created_at < ?")
            params.append(f.until)
        return clauses, params

    @classmethod
    def _where(cls, f: DeadLetterFilter) -> tuple[str, list[Any]]:
        clauses, params = cls._clauses(f)
        sql = (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY id"
        if f.limit is not None:
            sql += " LIMIT ?"
            params.append(f.limit)
        return sql, params

    async def _select(self, f: DeadLetterFilter) -> list[DeadLetter]:
        where, params = self._where(f)
        rows = await self._read(f"SELECT {DLQ_COLUMNS} FROM dlq{where}", params)
        return [self._value(row) for row in rows]

    async def _page(self, f: DeadLetterFilter, after: int | None, size: int) -> list[DeadLetter]:
        clauses, params = self._clauses(f)
        if after is not None:  # keyset pagination: the primary key, never OFFSET
            clauses.append("id > ?")
            params.append(after)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        rows = await self._read(
            f"SELECT {DLQ_COLUMNS} FROM dlq{where} ORDER BY id LIMIT ?", [*params, size]
        )
        return [self._value(row) for row in rows]

    @staticmethod
    def _value(row: Any) -> DeadLetter:
        return dead_letter(
            id=row[0], run_id=row[1], key=row[2], payload=row[3], payload_is_repr=row[4],
            kind=row[5], error_type=row[6], message=row[7], traceback=row[8],
            attempts=row[9], redrive_count=row[10], status=row[11], created_at=row[12],
        )  # fmt: skip

    async def get(self, id: int) -> DeadLetter:
        """One entry; raises `KeyError` for an unknown id."""
        rows = await self._read(f"SELECT {DLQ_COLUMNS} FROM dlq WHERE id = ?", (id,))
        if not rows:
            raise KeyError(f"no dead letter with id {id} in {self._url}")
        return self._value(rows[0])

    async def _delete(self, f: DeadLetterFilter) -> int:
        where, params = self._where(f)

        async def body() -> int:
            cursor = await self._db.execute(
                f"DELETE FROM dlq WHERE id IN (SELECT id FROM dlq{where})", params
            )
            self._forget()  # open DLQ keys are reloaded on the next commit
            return int(cursor.rowcount)

        result: int = await self._transaction(body)
        return result

    async def mark_redriven(self, ids: Sequence[int]) -> None:
        """Set status ``"redriven"`` and bump ``redrive_count`` (unknown ids are ignored)."""
        now = self._clock()

        async def body() -> None:
            await self._db.executemany(
                "UPDATE dlq SET status = 'redriven', redrive_count = redrive_count + 1, "
                "updated_at = ? WHERE id = ?",
                [(now, id_) for id_ in ids],
            )

        await self._transaction(body)
