"""The SQLite group commit: a whole group of job records as a few ``executemany`` statements.

`SQLiteCommitter.group` turns a group into rows without I/O, and `writes`
into statements: consecutive records with the same statement share one
``executemany``; plain successes bind 9 columns instead of 16, 256 rows to a
statement; dead letters insert or update their DLQ entry in the same
transaction. A group that needs nothing read first (its run is known, it has
no dead letter) is committed by the store in one trip to the connection's
thread; otherwise `apply` reads and writes inside the store's transaction.
Between commits it remembers, per run, the last completion order and the
keys with an open DLQ entry (it is the run's only writer); the store forgets
that cache whenever a transaction rolls back.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, TypeVar

import aiosqlite

from asyncbatch._errors import UnknownRun
from asyncbatch._result import JobOutcome, JobStatus

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
    outcome_record,
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
from ._sqlite_writer_main import SUCCESS_COLUMNS, WIDTH, Plan, Write, cut, statements

__all__ = ["CHUNK", "Committed", "Group", "SQLiteCommitter", "Write", "chunks"]

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


@dataclass(slots=True)
class Group:
    """One group commit's rows, built by `SQLiteCommitter.group` (no I/O)."""

    now: float
    caches: dict[str, _RunCache]
    """The group's runs."""
    job_ops: list[tuple[str, list[Any]]] = field(default_factory=list)
    """Job rows: consecutive records with the same statement share one list (for
    `JOB_SUCCESS`, the rows' parameters end to end; otherwise a `JobRow` each)."""
    dead: list[JobRecord] = field(default_factory=list)
    """Dead letters: their DLQ entries are read before they are written."""
    by_id: list[tuple[float, int]] = field(default_factory=list)
    by_key: list[tuple[float, str, str]] = field(default_factory=list)
    """DLQ entries that a success resolves (by entry id, by run and key)."""


Committed = JobRecord | JobOutcome[Any]
"""What a group holds: records, and plain successes as their outcomes (`SQLiteCommitter.group`)."""

_OUTCOMES = {JobOutcome}
_KEY, _RESULT, _INDEX, _ATTEMPTS, _DURATION = map(
    attrgetter, ("key", "result", "index", "attempts", "duration")
)
_INT = {int}


def _all_ints(values: list[Any]) -> bool:
    """Whether every value is exactly an int (not a bool), checked in C."""
    return set(map(type, values)) == _INT


def _str_can_write(ints: list[int]) -> bool:
    """Whether str() writes each of ``ints`` under this interpreter's digit limit
    (`sys.set_int_max_str_digits`), checked in C: as `encode` would, here."""
    limit = sys.get_int_max_str_digits()
    if not limit or not ints:
        return True
    bound = _bound(limit)
    return -bound < min(ints) and max(ints) < bound


@functools.cache
def _bound(digits: int) -> int:
    return int(10**digits)


def _run_ids(records: Sequence[Committed], run_id: str | None) -> set[str]:
    """The runs a group writes to (its outcomes' is ``run_id``)."""
    ids = {r.run_id for r in records if not isinstance(r, JobOutcome)}
    if run_id is not None:
        ids.add(run_id)
    return ids


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


@functools.cache
def _plan(rows: int) -> Plan:
    """How ``rows`` plain successes are cut into statements: `SUCCESS_ROWS` to a
    statement, the rest in halving statements (128, 64, ... 1 rows), so only
    nine statements are ever prepared."""
    n = SUCCESS_ROWS
    plan = [(job_successes(n), n, rows // n)] if rows >= n else []
    rest, size = rows % n, n // 2
    while rest:
        if rest >= size:
            plan.append((job_successes(size), size, 1))
            rest -= size
        size //= 2
    return tuple(plan)  # cached: shared by every group of this size


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

    def group(self, records: Sequence[Committed], run_id: str | None = None) -> Group | None:
        """The group's rows, or None while a run in it is not known yet (`apply` reads it).

        ``records`` may hold `JobOutcome`s: plain successes of ``run_id``
        (`SQLiteStore.commit`). Hands out the group's completion orders: the
        store clears the cache when the transaction rolls back.
        """
        known = self.cache
        if run_id is not None and run_id in known and set(map(type, records)) == _OUTCOMES:
            g = self._outcomes_group(records, run_id, known[run_id])  # type: ignore[arg-type]
            if g is not None:
                return g
        run_ids = _run_ids(records, run_id)
        if not run_ids <= known.keys():
            return None
        g = Group(self._clock(), {run: known[run] for run in run_ids})
        now, caches, job_ops = g.now, g.caches, g.job_ops
        dead, by_id, by_key = g.dead, g.by_id, g.by_key
        # Consecutive records with the same statement share one executemany;
        # the order of records (and so of changes to one job) is kept.
        ops: list[Any] = []
        last_sql = ""
        for r in records:
            key = r.key
            writable = "\x00" not in key and (key.isascii() or is_utf8(key))
            if isinstance(r, JobOutcome):
                # The commonest record, a plain success, as its outcome (no record built).
                assert run_id is not None
                if writable:
                    run, stored, redrive = run_id, True, None
                else:
                    r = outcome_record(run_id, r)
            elif writable and (
                r.status is _SUCCEEDED
                and r.payload is None
                and r.kind is None
                and r.error_type is None
                and r.message is None
                and r.traceback is None
                and r.compensation_error is None
            ):
                # A plain success's record (what `storable_record` and
                # `is_plain_success` would find).
                run, stored, redrive = r.run_id, r.has_result, r.redrive_of
            else:
                writable = False
            if writable:
                cache = caches[run]
                cache.seq += 1
                if last_sql is not JOB_SUCCESS:
                    ops = []
                    job_ops.append((JOB_SUCCESS, ops))
                    last_sql = JOB_SUCCESS
                # `_success`, inlined with `result_text` (two frames a row).
                text = None
                if stored:
                    value = r.result
                    text = str(value) if type(value) is int else encode(value)
                    if text is None:
                        warn_unstorable(run, key, value)
                # Parameters go end to end (no tuple kept per row: fewer objects).
                ops += (run, key, r.index, r.attempts, r.duration, text,
                        0 if text is None else 1, cache.seq, now)  # fmt: skip
                if redrive is not None:
                    by_id.append((now, redrive))
                    cache.open_keys.discard(key)
                elif cache.open_keys and key in cache.open_keys:  # (no hash when none)
                    by_key.append((now, run, key))
                    cache.open_keys.discard(key)
                continue
            assert not isinstance(r, JobOutcome)
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
            if plain:
                ops += _success(r, cache.seq, now)
            else:
                ops.append(job_row(r, cache.seq, now))
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
        return g

    def _outcomes_group(
        self, outcomes: Sequence[JobOutcome[Any]], run_id: str, cache: _RunCache
    ) -> Group | None:
        """`group` for a group of plain successes of ``run_id`` given as outcomes (a busy
        run's every group): the same rows, built column by column in C (`map`, `zip`)
        with what the general loop decides per record decided once (measured: ~2k
        instructions a row less than a Python loop over the records). None, with
        nothing changed, when a key must be escaped: the general loop writes that group."""
        keys = list(map(_KEY, outcomes))
        # One check of every key at once: a NUL or a lone surrogate in any is in their join.
        joined = "".join(keys)
        if "\x00" in joined or not is_utf8(joined):
            return None
        g = Group(self._clock(), {run_id: cache})
        now = g.now
        results = values = list(map(_RESULT, outcomes))
        # The commonest results, ints, are their own JSON as str() writes them: the
        # writer makes their texts (an int str() refuses is `encode`'s to judge).
        ints = _all_ints(values) and _str_can_write(values)
        if not ints:
            results = list(map(encode, values))
            if None in results:
                for key, value, text in zip(keys, values, results, strict=True):
                    if text is None:
                        warn_unstorable(run_id, key, value)
        columns = [run_id, now, cache.seq + 1, keys, list(map(_INDEX, outcomes)),
                   list(map(_ATTEMPTS, outcomes)), list(map(_DURATION, outcomes)),
                   results, ints]  # fmt: skip
        cache.seq += len(keys)
        g.job_ops.append((SUCCESS_COLUMNS, columns))
        open_keys = cache.open_keys
        if open_keys:
            for key in keys:
                if key in open_keys:
                    g.by_key.append((now, run_id, key))
                    open_keys.discard(key)
        return g

    async def apply(
        self, records: Sequence[Committed], group: Group | None = None, run_id: str | None = None
    ) -> None:
        """Write every record (inside the caller's transaction), reading what it needs first:
        the runs not known yet and, for dead letters, their DLQ entries."""
        if group is None:
            for run in _run_ids(records, run_id):
                await self._run_cache(run)
            group = self.group(records, run_id)
            assert group is not None
        dlq = await self._dead_lettered(group) if group.dead else []
        for sql, params in statements(self.writes(group, dlq)):
            await self._db.executemany(sql, params)

    def writes(self, g: Group, dlq: list[Write] | None = None) -> list[Write]:
        """Every statement of the group in order, each with its parameter rows (executemany's).

        ``dlq``: the writes of its dead letters (`_dead_lettered`), when it has any.
        """
        writes: list[Write] = []
        for sql, rows in g.job_ops:
            if sql is JOB_SUCCESS:
                writes += cut(_plan(len(rows) // WIDTH), rows)
            elif sql is SUCCESS_COLUMNS:
                writes.append((SUCCESS_COLUMNS, _plan(len(rows[3])), rows))
            else:
                writes.append((sql, rows))
        if dlq:
            writes += dlq
        if g.by_id:
            writes.append((DLQ_RESOLVE_BY_ID, g.by_id))
        if g.by_key:
            writes.append((DLQ_RESOLVE_BY_KEY, g.by_key))
        # A run's updated_at says "still making progress": once a second is enough.
        now = g.now
        stale = [(now, run_id) for run_id, c in g.caches.items() if now - c.touched >= 1.0]
        if stale:
            writes.append(("UPDATE runs SET updated_at = ? WHERE id = ?", stale))
            for _, run_id in stale:
                g.caches[run_id].touched = now
        return writes

    async def _dead_lettered(self, g: Group) -> list[Write]:
        """The writes that insert DLQ entries, or update the one a redriven (or retried)
        job came from (read here)."""
        db, dead, caches, now = self._db, g.dead, g.caches, g.now
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
        writes: list[Write] = []
        if inserts:
            writes.append((DLQ_INSERT, inserts))
        if updates:
            writes.append((DLQ_REDEAD, updates))
        return writes
