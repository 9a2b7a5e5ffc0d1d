"""The SQLite group commit: a whole group of job records as a few ``executemany`` statements.

`SQLiteCommitter.apply` runs inside the store's write transaction. Consecutive
records with the same statement share one ``executemany``; plain successes
bind 9 columns instead of 16; dead letters insert or update their DLQ entry
in the same transaction. Between commits it remembers, per run, the last
completion order and the keys with an open DLQ entry (it is the run's only
writer); the store forgets that cache whenever a transaction rolls back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, TypeVar

import aiosqlite

from asyncbatch._errors import UnknownRun
from asyncbatch._result import JobStatus

from ._codec import warn_unstorable
from ._common import (
    JobRow,
    encode,
    encode_history,
    encode_payload,
    is_compensation,
    is_plain_success,
    is_utf8,
    job_row,
    merge_history,
    result_text,
    storable_record,
)
from ._protocol import JobRecord
from ._schema import (
    DLQ_INSERT,
    DLQ_REDEAD,
    DLQ_RESOLVE_BY_ID,
    DLQ_RESOLVE_BY_KEY,
    JOB_COMPENSATE,
    JOB_SUCCESS,
    JOB_UPSERT,
    SUCCESS_ROWS,
    job_successes,
)

__all__ = ["CHUNK", "SQLiteCommitter", "chunks"]

T = TypeVar("T")

CHUNK = 500  # bound variables per IN (...) query, far below SQLite's limit
_SUCCEEDED, _DEAD = JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED


@dataclass(slots=True)
class _RunCache:
    """What the writer remembers of a run between commits (it is the run's only writer)."""

    seq: int
    """The last completion order handed out."""
    open_keys: set[str] = field(default_factory=set)
    """Keys with a DLQ entry that is not resolved: their success resolves it."""
    touched: float = 0.0
    """When this store last set the run's ``updated_at``."""


def chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def _success(r: JobRecord, seq: int, now: float) -> JobRow:
    """A plain success's `job_successes` parameters.

    ``has_result`` is bound as an int: sqlite3 adapts a bool through its
    adapter registry (~3k instructions a row, measured with callgrind).
    """
    text = result_text(r)
    has = 0 if text is None else 1
    return (r.run_id, r.key, r.index, r.attempts, r.duration, text, has, seq, now)


class SQLiteCommitter:
    """Applies groups of job records to one SQLite connection."""

    def __init__(self, db: aiosqlite.Connection, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock
        self.cache: dict[str, _RunCache] = {}

    async def _run_cache(self, run_id: str) -> _RunCache:
        cache = self.cache.get(run_id)
        if cache is None:
            (row,) = await self._db.execute_fetchall(
                "SELECT (SELECT 1 FROM runs WHERE id = ?), "
                "(SELECT max(seq) FROM jobs WHERE run_id = ?)",
                (run_id, run_id),
            )
            if not row[0]:
                raise UnknownRun(run_id)
            keys = await self._db.execute_fetchall(
                "SELECT key FROM dlq WHERE run_id = ? AND status != 'resolved'", (run_id,)
            )
            cache = self.cache[run_id] = _RunCache(row[1] or 0, {k for (k,) in keys})
        return cache

    async def apply(self, records: Sequence[JobRecord]) -> None:
        """Write every record (inside the caller's transaction)."""
        db = self._db
        now = self._clock()
        caches = {run_id: await self._run_cache(run_id) for run_id in {r.run_id for r in records}}
        # Consecutive records with the same statement share one executemany;
        # the order of records (and so of changes to one job) is kept.
        job_ops: list[tuple[str, list[JobRow]]] = []
        ops: list[JobRow] = []
        last_sql = ""
        dead: list[JobRecord] = []
        by_id: list[tuple[float, int]] = []
        by_key: list[tuple[float, str, str]] = []
        for r in records:
            key = r.key
            if (
                r.status is _SUCCEEDED
                and r.payload is None
                and r.kind is None
                and r.error_type is None
                and r.message is None
                and r.traceback is None
                and r.compensation_error is None
                and "\x00" not in key
                and (key.isascii() or is_utf8(key))
            ):
                # The commonest record, a plain success with a writable key
                # (what `storable_record` and `is_plain_success` would find).
                cache = caches[r.run_id]
                cache.seq += 1
                if last_sql is not JOB_SUCCESS:
                    ops = []
                    job_ops.append((JOB_SUCCESS, ops))
                    last_sql = JOB_SUCCESS
                # `_success`, inlined with `result_text` (two frames a row).
                text = None
                if r.has_result:
                    value = r.result
                    text = str(value) if type(value) is int else encode(value)
                    if text is None:
                        warn_unstorable(r.run_id, key, value)
                ops.append(
                    (r.run_id, key, r.index, r.attempts, r.duration, text, 0 if text is None else 1,
                     cache.seq, now)
                )  # fmt: skip
                if r.redrive_of is not None:
                    by_id.append((now, r.redrive_of))
                    cache.open_keys.discard(key)
                elif key in cache.open_keys:
                    by_key.append((now, r.run_id, key))
                    cache.open_keys.discard(key)
                continue
            r = storable_record(r)
            cache = caches[r.run_id]
            cache.seq += 1
            status = r.status
            compensation = is_compensation(r)
            plain = not compensation and is_plain_success(r)
            sql = JOB_COMPENSATE if compensation else JOB_SUCCESS if plain else JOB_UPSERT
            if sql is not last_sql:
                ops = []
                job_ops.append((sql, ops))
                last_sql = sql
            ops.append(_success(r, cache.seq, now) if plain else job_row(r, cache.seq, now))
            if compensation:
                continue
            if status is _DEAD:
                dead.append(r)
            elif status is _SUCCEEDED:
                if r.redrive_of is not None:
                    by_id.append((now, r.redrive_of))
                    cache.open_keys.discard(r.key)
                elif r.key in cache.open_keys:
                    by_key.append((now, r.run_id, r.key))
                    cache.open_keys.discard(r.key)
        for sql, rows in job_ops:
            if sql is JOB_SUCCESS:
                await self._successes(rows)
            else:
                await db.executemany(sql, rows)
        if dead:
            await self._dead_lettered(dead, caches, now)
        if by_id:
            await db.executemany(DLQ_RESOLVE_BY_ID, by_id)
        if by_key:
            await db.executemany(DLQ_RESOLVE_BY_KEY, by_key)
        # A run's updated_at says "still making progress": once a second is enough.
        stale = [(now, run_id) for run_id, c in caches.items() if now - c.touched >= 1.0]
        if stale:
            await db.executemany("UPDATE runs SET updated_at = ? WHERE id = ?", stale)
            for _, run_id in stale:
                caches[run_id].touched = now

    async def _successes(self, rows: list[JobRow]) -> None:
        """Plain success rows: `SUCCESS_ROWS` to a statement, the rest in halving
        statements (128, 64, ... 1 rows), so only nine statements are ever prepared."""
        db = self._db
        full = len(rows) - len(rows) % SUCCESS_ROWS
        if full:
            await db.executemany(
                job_successes(SUCCESS_ROWS),
                [
                    list(chain.from_iterable(rows[i : i + SUCCESS_ROWS]))
                    for i in range(0, full, SUCCESS_ROWS)
                ],
            )
        size, start = SUCCESS_ROWS // 2, full
        while start < len(rows):
            if len(rows) - start >= size:
                part = rows[start : start + size]
                await db.execute(job_successes(size), list(chain.from_iterable(part)))
                start += size
            size //= 2

    async def _dead_lettered(
        self, dead: list[JobRecord], caches: dict[str, _RunCache], now: float
    ) -> None:
        """Insert DLQ entries, or update the one a redriven (or retried) job came from."""
        db = self._db
        ids = [r.redrive_of for r in dead if r.redrive_of is not None]
        old_by_id: dict[int, str] = {}
        for some in chunks(ids):
            rows = await db.execute_fetchall(
                f"SELECT id, attempts FROM dlq WHERE id IN ({', '.join('?' * len(some))})", some
            )
            old_by_id.update(rows)  # type: ignore[arg-type]
        old_by_key: dict[tuple[str, str], tuple[int, str]] = {}
        retried: dict[str, list[str]] = {}
        for r in dead:
            if r.redrive_of is None and r.key in caches[r.run_id].open_keys:
                retried.setdefault(r.run_id, []).append(r.key)
        for run_id, keys in retried.items():
            for chunk in chunks(keys):
                rows = await db.execute_fetchall(
                    f"SELECT id, key, attempts FROM dlq WHERE run_id = ? AND status != 'resolved' "
                    f"AND key IN ({', '.join('?' * len(chunk))}) ORDER BY id",
                    (run_id, *chunk),
                )
                for id_, key, attempts in rows:
                    old_by_key[run_id, key] = (id_, attempts)
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        for r in dead:
            payload, is_repr = encode_payload(r.payload, r.payload_is_repr)
            kind = None if r.kind is None else r.kind.value
            if r.redrive_of is not None and r.redrive_of in old_by_id:
                target: tuple[int, str] | None = (r.redrive_of, old_by_id[r.redrive_of])
            else:
                target = old_by_key.get((r.run_id, r.key))
            if target is None:
                inserts.append(
                    (r.run_id, r.key, payload, is_repr, kind, r.error_type, r.message,
                     r.traceback, encode_history(r.history), now, now)
                )  # fmt: skip
            else:
                updates.append(
                    (merge_history(target[1], r.history), kind, r.error_type, r.message,
                     r.traceback, is_repr, payload, now, target[0])
                )  # fmt: skip
            caches[r.run_id].open_keys.add(r.key)
        if inserts:
            await db.executemany(DLQ_INSERT, inserts)
        if updates:
            await db.executemany(DLQ_REDEAD, updates)

