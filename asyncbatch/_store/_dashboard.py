"""What the web dashboard reads beyond the `Store` protocol, for each store.

The protocol answers a run's engine; the dashboard also wants a run's
throughput over time and its job durations as histograms, the dead-letter
queue a page at a time with the values its filters can take, and to delete
chosen entries. These are plain reads over the tables the stores already
keep (``jobs.updated_at`` is when a job's outcome was committed,
``jobs.duration`` its first start to its end), answered by SQL on SQLite and
PostgreSQL and by a walk over the rows in memory. Reads never take a write
lock: a SQLite reader in WAL mode does not block the run's writer, and on
PostgreSQL they are plain ``SELECT`` s on a pooled connection.

Nothing here is stored that the stores did not keep already: per-attempt
latencies of attempts that succeeded, and breaker state changes over time,
are not in any store (the report keeps the breakers' totals).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from asyncbatch._errors import ConfigError
from asyncbatch._result import DeadLetter

from ._common import FINISHED, DeadLetterFilter
from ._memory import MemoryStore
from ._protocol import Store
from ._sqlite import SQLiteStore
from ._sqlite_commit import chunks

__all__ = [
    "DURATION_EDGES",
    "DeadLetterFacet",
    "JobStats",
    "dlq_facets",
    "dlq_page",
    "job_stats",
    "purge_ids",
]

DURATION_EDGES: tuple[float, ...] = tuple(
    m * 10.0**e for e in range(-4, 3) for m in (1.0, 2.0, 5.0)
)[:-2]
"""Bin edges of `duration_histogram` in seconds: 0.1 ms, 0.2, 0.5, 1 ms, ... 100 s (1-2-5)."""

_FINISHED = tuple(s.value for s in FINISHED)
_FINISHED_SQL = ", ".join(f"'{s}'" for s in _FINISHED)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterFacet:
    """How many entries share a run, kind, error type and status."""

    run_id: str
    kind: str
    error_type: str
    status: str
    count: int


def _kind_of(store: Store) -> str:
    if isinstance(store, SQLiteStore):
        return "sqlite"
    if isinstance(store, MemoryStore):
        return "memory"
    if type(store).__module__ == "asyncbatch._store._postgres":
        return "postgres"
    raise ConfigError(f"the dashboard reads SQLite, PostgreSQL and memory stores, not {store!r}")


def _bin(duration: float) -> int:
    for i, edge in enumerate(DURATION_EDGES):
        if duration < edge:
            return i
    return len(DURATION_EDGES)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStats:
    """A run's finished jobs over time and by duration (what the run page plots).

    Attributes:
        throughput: jobs per time bucket ``i`` = [start + i·width, start + (i+1)·width),
            by when each job's outcome was committed (``updated_at``).
        durations: per final status, job counts per bin of `DURATION_EDGES`
            (``len(DURATION_EDGES) + 1`` bins: bin 0 below the first edge, the
            last at or above the last). A job's duration runs from its first
            attempt's start to its end: a job that succeeded first time, its
            attempt's latency.
    """

    throughput: dict[int, int]
    durations: dict[str, list[int]]


def _bin_sql() -> str:
    cases = " ".join(f"WHEN duration < {edge!r} THEN {i}" for i, edge in enumerate(DURATION_EDGES))
    return f"CASE {cases} ELSE {len(DURATION_EDGES)} END"


async def job_stats(store: Store, run_id: str, *, start: float, width: float) -> JobStats:
    """`JobStats` of the run's finished jobs, in one pass over them."""
    kind = _kind_of(store)
    if kind == "memory":
        assert isinstance(store, MemoryStore)
        run = store._runs.get(run_id)
        rows: Sequence[Any] = [
            (row[3], int((row[15] - start) // width), _bin(row[5]), 1)
            for row in (() if run is None else run.jobs.values())
            if row[3] in _FINISHED
        ]
    elif kind == "sqlite":
        assert isinstance(store, SQLiteStore)
        rows = await store._read(
            f"SELECT status, CAST((updated_at - ?) / ? AS INTEGER), {_bin_sql()}, count(*) "
            f"FROM jobs WHERE run_id = ? AND status IN ({_FINISHED_SQL}) GROUP BY 1, 2, 3",
            (start, width, run_id),
        )
    else:
        rows = await store._fetch(  # type: ignore[attr-defined]
            f"SELECT status, floor((updated_at - $2) / $3)::bigint, {_bin_sql()}, count(*) "
            f"FROM jobs WHERE run_id = $1 AND status IN ({_FINISHED_SQL}) GROUP BY 1, 2, 3",
            run_id,
            start,
            width,
        )
    throughput: dict[int, int] = {}
    durations: dict[str, list[int]] = {}
    for status, bucket, b, n in rows:
        throughput[int(bucket)] = throughput.get(int(bucket), 0) + int(n)
        durations.setdefault(status, [0] * (len(DURATION_EDGES) + 1))[int(b)] += int(n)
    return JobStats(throughput=throughput, durations=durations)


async def dlq_facets(
    store: Store, *, since: float | None = None, until: float | None = None
) -> list[DeadLetterFacet]:
    """Entry counts per (run, kind, error type, status), created in [since, until)."""
    kind = _kind_of(store)
    if kind == "memory":
        assert isinstance(store, MemoryStore)
        f = DeadLetterFilter(status=None, since=since, until=until)
        tally: dict[tuple[str, str, str, str], int] = {}
        for d in store._dlq.values():
            v = d.value()
            if f.matches(v):
                k = (v.run_id, v.kind.value, v.error_type, v.status)
                tally[k] = tally.get(k, 0) + 1
        rows: Sequence[Any] = [(*k, c) for k, c in tally.items()]
    elif kind == "sqlite":
        assert isinstance(store, SQLiteStore)
        rows = await store._read(
            "SELECT run_id, coalesce(kind, 'permanent'), coalesce(error_type, ''), status, "
            "count(*) FROM dlq WHERE (? IS NULL OR created_at >= ?) "
            "AND (? IS NULL OR created_at < ?) GROUP BY 1, 2, 3, 4",
            (since, since, until, until),
        )
    else:
        rows = await store._fetch(  # type: ignore[attr-defined]
            "SELECT run_id, coalesce(kind, 'permanent'), coalesce(error_type, ''), status, "
            "count(*) FROM dlq WHERE ($1::double precision IS NULL OR created_at >= $1) "
            "AND ($2::double precision IS NULL OR created_at < $2) GROUP BY 1, 2, 3, 4",
            since,
            until,
        )
    facets = [
        DeadLetterFacet(run_id=r, kind=k, error_type=e, status=s, count=int(c))
        for r, k, e, s, c in rows
    ]
    facets.sort(key=lambda f: (f.run_id, f.kind, f.error_type, f.status))
    return facets


async def dlq_page(store: Store, after: int | None, size: int, **filters: Any) -> list[DeadLetter]:
    """Up to ``size`` entries matching ``filters`` (as for ``dlq.list``) with id > ``after``."""
    f = DeadLetterFilter.of("dlq_page", filters)
    page: list[DeadLetter] = await store.dlq._page(f, after, size)  # type: ignore[attr-defined]
    return page


async def purge_ids(store: Store, ids: Sequence[int]) -> int:
    """Delete the entries with these ids, whatever their status; returns how many."""
    wanted = sorted({int(i) for i in ids})
    if not wanted:
        return 0
    kind = _kind_of(store)
    if kind == "memory":
        assert isinstance(store, MemoryStore)
        deleted = 0
        for id_ in wanted:
            d = store._dlq.pop(id_, None)
            if d is not None:
                deleted += 1
                if store._open.get((d.run_id, d.key)) == id_:
                    del store._open[d.run_id, d.key]
        return deleted
    if kind == "sqlite":
        assert isinstance(store, SQLiteStore)
        sqlite = store

        async def body() -> int:
            n = 0
            for chunk in chunks(wanted):
                cursor = await sqlite._db.execute(
                    f"DELETE FROM dlq WHERE id IN ({', '.join('?' * len(chunk))})", chunk
                )
                n += int(cursor.rowcount)
            sqlite._cache.clear()  # open DLQ keys are reloaded on the next commit
            return n

        return await sqlite._transaction(body)

    async def pg_body(conn: Any) -> int:
        done = await conn.execute("DELETE FROM dlq WHERE id = ANY($1::bigint[])", wanted)
        return int(done.split()[-1])  # "DELETE n"

    deleted_pg: int = await store._write(pg_body)  # type: ignore[attr-defined]
    return deleted_pg
