"""`PostgresStore`: the checkpoint store in a PostgreSQL database, on asyncpg.

The same `Store` protocol, semantics and DLQ API as `SQLiteStore` (one test
suite runs against memory, SQLite and PostgreSQL). Every statement is in
``sql/postgres_queries.sql``, the schema's migration steps in
``sql/postgres_schema.sql``; this module decides which to run, with the
parameters `_postgres_plan` builds.

The hot path is `PostgresStore.commit`: every pending record of a flush goes
into ONE transaction of set-based statements (``INSERT ... SELECT FROM
unnest(...)``, one array per column) — a handful of round trips per group,
whatever its size. The commonest group, plain successes of a run this store
created, is one binary COPY into ``jobs`` instead (see ``job_copy``).
Completion order comes from a sequence. A commit carries
a token, so when the connection is lost and the `Connector` retries it, a
commit that had in fact landed is not applied twice (a dead-lettered job
would otherwise double its attempt history).

Ownership is SQLite's (see `Store.begin_run`): ``runs.owner``,
``owned_since`` and ``heartbeat_at`` (schema step 2), taken in
`PostgresStore.begin_run`'s transaction with the run's row locked
``FOR UPDATE``, so two processes (on any machines) cannot both take a run;
`_common.check_lease` decides. The writes that are not idempotent
(``begin_run``, ``dlq.purge``, ``dlq.mark_redriven``, the group commit)
claim a token in their transaction, so a retry of one that had landed
changes nothing and answers as the first attempt did.

Durability: every connection runs with ``synchronous_commit=on`` (whatever
the server's default), for both ``durability`` levels: a commit is on the
server's disk (and on synchronous standbys) before it returns, which
survives a crash of this process, of the server and of its machine.

Writes are shielded from their caller's cancellation: once begun, a
transaction commits or rolls back, and `aclose` waits for it.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import asyncpg

from asyncbatch._errors import RunOwned, StoreError, UnknownRun
from asyncbatch._result import JobOutcome

from ._common import (
    FINISHED,
    Clock,
    as_records,
    check_durability,
    check_lease,
    decode,
    encode,
    finished_job,
    mark_seen,
    wall_clock,
    zero_counts,
)
from ._postgres_conn import Connector, connect
from ._postgres_dlq import PostgresDeadLetterQueue
from ._postgres_plan import COPY_COLUMNS, Segment, columns, dead_columns, plan
from ._postgres_sql import MIGRATIONS, QUERIES, SCHEMA_VERSION, quote_ident
from ._postgres_url import PostgresTarget, parse_postgres_url
from ._protocol import (
    DEFAULT_LEASE,
    DeadLetterQueue,
    FinishedJob,
    JobRecord,
    RunInfo,
    RunStatus,
)

__all__ = ["PostgresStore"]

T = TypeVar("T")
Q = QUERIES

_FINISHED = [s.value for s in FINISHED]
_FORGET_EVERY = 600.0  # seconds between deletions of old commit tokens


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("asyncbatch")
    except PackageNotFoundError:  # running from a source tree
        return "unknown"


class _Redo(Exception):
    """A fresh run's job already had a row: roll back and commit again with the upsert."""


GROUP_SIZE = 4096
"""Finished jobs that may wait for one group commit (measured: 1,024 -> 4,096 took
checkpointed no-op runs from ~45k to ~50k jobs/s)."""


class PostgresStore:
    """A checkpoint store in a PostgreSQL schema: open it with `open` or `ab.open_store`.

    Attributes:
        url: the store's URL without its password.
        schema: the schema holding the tables (``?schema=``, default ``asyncbatch``).
        dlq: the dead-letter queue (`PostgresDeadLetterQueue`).
        group_size: records to a group commit (see `Store`): each commit pays
            its round trips and a WAL flush, so big groups.
    """

    group_size = GROUP_SIZE

    def __init__(
        self, connector: Connector, target: PostgresTarget, *, clock: Clock = wall_clock
    ) -> None:
        self._db = connector
        self._target = target
        self.url = target.url
        self.schema = target.schema
        self._clock = clock
        self._lock = asyncio.Lock()
        self._touched: dict[str, float] = {}
        self._fresh: set[str] = set()
        """Runs this store created: their jobs have no rows yet (see `job_copy`)."""
        self._forgotten = time.monotonic()
        self._closed = False
        self.dlq: DeadLetterQueue = PostgresDeadLetterQueue(self)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        durability: Literal["normal", "full"] = "normal",
        retry_timeout: float | None = None,
        pool_size: int = 4,
        clock: Clock = wall_clock,
        server_settings: Mapping[str, str] | None = None,
        command_timeout: float | None = None,
    ) -> PostgresStore:
        """Connect to (creating or migrating) the store at ``url``; close it with `aclose`.

        Args:
            url: ``postgresql://user[:password]@host[:port]/database``, optionally
                ``?schema=NAME`` (default ``asyncbatch``) and
                ``?retry_timeout=SECONDS`` (default 30).
            durability: ``"normal"`` or ``"full"``: both commit with
                ``synchronous_commit=on`` (see the module docstring).
            retry_timeout: how long a lost database is waited for (overrides the URL's).
            pool_size: most connections the store holds (one writer, the rest readers).
            clock: epoch-seconds clock for timestamps.
            server_settings: more session settings (a shared run's timeouts).
            command_timeout: seconds any statement may take, client side.

        Raises:
            ConfigError: a bad URL option.
            StoreError: the database cannot be reached or refuses us, its schema
                holds other tables, or was written by a newer asyncbatch.
        """
        check_durability(durability)
        target = parse_postgres_url(url, retry_timeout=retry_timeout)
        pool = await connect(
            target,
            max_size=pool_size,
            server_settings={
                "search_path": quote_ident(target.schema),
                "synchronous_commit": "on",
                "application_name": os.environ.get("PGAPPNAME", "asyncbatch"),
                **(server_settings or {}),
            },
            command_timeout=command_timeout,
        )
        store = cls(Connector(pool, target), target, clock=clock)
        try:
            await store._migrate()
        except BaseException:
            await store._db.aclose()
            raise
        return store

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    async def __aenter__(self) -> PostgresStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------- schema

    async def _migrate(self) -> None:
        """Bring the schema to `SCHEMA_VERSION`, once, however many processes open it at once."""
        schema = self.schema

        async def version(conn: asyncpg.Connection) -> int:
            _, versioned, tables = await conn.fetchrow(Q.schema_state, schema)
            if not versioned:
                if tables:
                    raise StoreError(
                        f"schema {schema!r} of {self._target.where} holds other tables, not an "
                        "asyncbatch store: pick another with ?schema=NAME"
                    )
                return 0
            return int(await conn.fetchval(Q.schema_version))

        async def migrate(conn: asyncpg.Connection) -> None:
            await conn.execute(Q.schema_lock, schema)
            if not (await conn.fetchrow(Q.schema_state, schema))["present"]:
                await conn.execute(Q.schema_create.format(schema=quote_ident(schema)))
            await conn.execute(Q.schema_bootstrap.format(schema=quote_ident(schema)))
            current = await version(conn)  # again, under the lock: another process may have won
            self._check_version(current)
            for number, step in enumerate(MIGRATIONS[current:], current + 1):
                await conn.execute(step)
                await conn.execute(Q.schema_version_add, number, _version())

        current = await self._db.read(version)
        self._check_version(current)
        if current < SCHEMA_VERSION:
            await self._db.write(migrate)

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"schema {self.schema!r} of {self._target.where} was written by a newer "
                f"asyncbatch (store schema {version}, this version knows up to "
                f"{SCHEMA_VERSION}): upgrade asyncbatch (pip install -U asyncbatch)"
            )

    # ----------------------------------------------------------- plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store {self.url} is closed")

    async def _write(self, body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``body`` in one transaction, retried whole on a lost connection, shielded.

        The transaction runs in its own task and the caller awaits it through
        `asyncio.shield`: a cancelled caller stops waiting, but the
        transaction still ends, and the next writer waits for it.
        """
        self._check_open()
        task = asyncio.ensure_future(self._locked_write(body))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                task.add_done_callback(mark_seen)
            raise

    async def _locked_write(self, body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async with self._lock:
            self._check_open()
            return await self._db.write(body)

    async def _read(self, body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        self._check_open()
        return await self._db.read(body)

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def body(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(await conn.fetch(sql, *args))

        return await self._read(body)

    # ----------------------------------------------------------- runs

    @staticmethod
    def _run_info(row: asyncpg.Record, live: dict[str, int] | None) -> RunInfo:
        return RunInfo(
            run_id=row["id"],
            job=row["job"],
            status=row["status"],
            config=decode(row["config"]),
            counts=live if live is not None else decode(row["counts"]),
            report=decode(row["report"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    @staticmethod
    async def _live_counts(
        conn: asyncpg.Connection, run_ids: Iterable[str]
    ) -> dict[str, dict[str, int]]:
        live: dict[str, dict[str, int]] = {run_id: zero_counts() for run_id in run_ids}
        if live:
            for run_id, status, n in await conn.fetch(Q.runs_live_counts, list(live)):
                live[run_id][status] = n
        return live

    async def _with_live(self, conn: asyncpg.Connection, row: asyncpg.Record) -> RunInfo:
        live = None
        if row["status"] == "running":
            live = (await self._live_counts(conn, [row["id"]]))[row["id"]]
        return self._run_info(row, live)

    async def begin_run(
        self, run: RunInfo, *, owner: str | None = None, lease: float = DEFAULT_LEASE
    ) -> RunInfo | None:
        """Create the run, or mark an existing one running again; returns the previous state.

        With ``owner``, takes the run's lease in the same transaction (the
        run's row is locked ``FOR UPDATE``, so two processes cannot both take
        it), or raises `RunOwned`; see `Store.begin_run`. Safe to retry: a
        token tells a retry that an earlier attempt landed, and it returns
        what that attempt found.
        """
        now = self._clock()
        token = uuid.uuid4().hex
        landed: list[RunInfo | None] = []  # what the last attempt that ran the body found

        async def body(conn: asyncpg.Connection) -> RunInfo | None:
            if await conn.fetchval(Q.token_claim, token) is None:
                return landed[-1]  # an earlier attempt committed before its connection died
            row = await conn.fetchrow(Q.run_get_for_update, run.run_id)
            if row is None:
                await conn.execute(
                    Q.run_insert, run.run_id, run.job, encode(run.config) or "{}",
                    encode(run.counts) or "{}", run.created_at or now, now,
                )  # fmt: skip
                old = None
            else:
                if owner is not None:
                    check_lease(
                        run.run_id,
                        holder=row["owner"],
                        since=row["owned_since"],
                        heartbeat_at=row["heartbeat_at"],
                        owner=owner,
                        lease=lease,
                        now=now,
                    )
                    # Only a redrive that died leaves entries "redriven" (see mark_redriven).
                    await conn.execute(Q.dlq_undead_redriven, run.run_id, now)
                old = await self._with_live(conn, row)
                await conn.execute(
                    Q.run_restart, run.run_id, run.job or old.job,
                    encode(run.config or old.config) or "{}", now,
                )  # fmt: skip
            if owner is not None:
                await conn.execute(Q.run_take, run.run_id, owner, now)
            landed.append(old)
            return old

        old = await self._write(body)
        if old is None:
            self._fresh.add(run.run_id)
        else:
            self._fresh.discard(run.run_id)
        return old

    async def _holder(
        self, conn: asyncpg.Connection, run_id: str
    ) -> tuple[str | None, float | None]:
        row = await conn.fetchrow(Q.run_holder, run_id)
        if row is None:
            raise UnknownRun(run_id)
        return row["owner"], row["owned_since"]

    async def heartbeat(self, run_id: str, owner: str) -> None:
        """Renew ``owner``'s lease on the run; raises `RunOwned` when it was lost."""
        now = self._clock()

        async def body(conn: asyncpg.Connection) -> None:
            if await conn.execute(Q.run_heartbeat, run_id, owner, now) == "UPDATE 0":
                holder, since = await self._holder(conn, run_id)
                raise RunOwned(run_id, holder or "nobody (the lease was released)", since)

        await self._write(body)

    async def end_run(
        self,
        run_id: str,
        status: RunStatus,
        counts: dict[str, int],
        report: dict[str, Any] | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        """Record how the run ended (and its report), releasing its lease; see `Store.end_run`."""
        now = self._clock()
        release = status != "compensating"  # a rollback goes on: it keeps the lease

        async def body(conn: asyncpg.Connection) -> None:
            if owner is not None:
                # A retry after a release that landed finds nobody holding it: fine.
                holder, since = await self._holder(conn, run_id)
                if holder is not None and holder != owner:
                    raise RunOwned(run_id, holder, since)
            done = await conn.execute(
                Q.run_end, run_id, status, encode(counts) or "{}",
                None if report is None else encode(report), now, release,
            )  # fmt: skip
            if done == "UPDATE 0":
                raise UnknownRun(run_id)

        await self._write(body)

    async def get_run(self, run_id: str) -> RunInfo:
        """The run; raises `UnknownRun`."""

        async def body(conn: asyncpg.Connection) -> RunInfo | None:
            row = await conn.fetchrow(Q.run_get, run_id)
            return None if row is None else await self._with_live(conn, row)

        run = await self._read(body)
        if run is None:
            raise UnknownRun(run_id)
        return run

    async def list_runs(self) -> list[RunInfo]:
        """Every run, newest first."""

        async def body(conn: asyncpg.Connection) -> list[RunInfo]:
            rows = await conn.fetch(Q.runs_list)
            running = [r["id"] for r in rows if r["status"] == "running"]
            live = await self._live_counts(conn, running)
            return [self._run_info(r, live.get(r["id"])) for r in rows]

        return await self._read(body)

    # ----------------------------------------------------------- jobs

    async def _jobs(self, sql: str, run_id: str, *args: Any) -> list[asyncpg.Record]:
        async def body(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            rows = list(await conn.fetch(sql, run_id, *args))
            # Jobs reference their run: only no rows at all needs a second look.
            if not rows and not await conn.fetchval(Q.run_exists, run_id):
                raise UnknownRun(run_id)
            return rows

        return await self._read(body)

    async def finished_jobs(self, run_id: str) -> dict[str, FinishedJob]:
        """Jobs of the run that reached SUCCEEDED, DEAD_LETTERED or COMPENSATED."""
        rows = await self._jobs(Q.jobs_finished, run_id, _FINISHED)
        return {row[0]: finished_job(*row) for row in rows}

    async def lookup(self, run_id: str, keys: Sequence[str]) -> dict[str, FinishedJob]:
        """The finished jobs among ``keys``, by key (payloads not loaded); one query."""
        if not keys:
            return {}
        rows = await self._fetch(Q.jobs_lookup, run_id, _FINISHED, list(keys))
        return {row[0]: finished_job(*row) for row in rows}

    async def last_seq(self, run_id: str) -> int:
        """The highest completion order the run has stored (0 for none)."""
        rows = await self._fetch(Q.jobs_last_seq, run_id)
        return int(rows[0][0])

    async def count_jobs(self, run_id: str) -> dict[str, int]:
        """Finished jobs of the run per status value (every status present)."""
        counts = zero_counts()
        counts.update((status, n) for status, n in await self._jobs(Q.jobs_count, run_id))
        return counts

    async def jobs(self, run_id: str) -> list[FinishedJob]:
        """Every job of the run, in completion order."""
        return [finished_job(*row) for row in await self._jobs(Q.jobs_in_order, run_id)]

    takes_outcomes: ClassVar[bool] = True
    """`commit` takes plain successes as their `JobOutcome` (with ``run_id``)."""

    async def commit(
        self,
        records: Sequence[JobRecord | JobOutcome[Any]],
        *,
        durability: Literal["normal", "full"] = "normal",
        run_id: str | None = None,
    ) -> None:
        """Apply every record in ONE transaction; on the server's disk when it returns.

        Retried whole (on a fresh connection) while the database is away, up
        to ``retry_timeout``; applied exactly once however often it is retried.
        ``run_id``: as `Store.commit`'s (plain successes given as their outcomes).

        Raises:
            UnknownRun: a record's run does not exist (nothing is written).
            StoreError: the database stayed away, or refused the commit.
        """
        check_durability(durability)
        if not records:
            return
        records = as_records(records, run_id)
        self._check_open()
        now = self._clock()
        segments = plan(records, now)
        first = segments[0].run_id
        if segments[0].resolve_all and first is not None:  # `plain_segment`: the commonest
            run_ids = [first]
        else:
            run_ids = list({r.run_id: None for r in records})
        token = uuid.uuid4().hex
        try:
            await self._write(lambda conn: self._apply(conn, token, run_ids, segments, now))
        except _Redo:  # rolled back whole; the run is no longer taken for fresh
            await self._write(lambda conn: self._apply(conn, token, run_ids, segments, now))

    async def _apply(
        self,
        conn: asyncpg.Connection,
        token: str,
        run_ids: list[str],
        segments: list[Segment],
        now: float,
    ) -> None:
        """The group commit's statements, inside its transaction (see postgres_queries.sql)."""
        fresh, missing, open_runs = await conn.fetchrow(Q.commit_begin, token, run_ids)
        if missing:
            raise UnknownRun(missing[0])
        if not fresh:
            return  # an earlier attempt of this very commit landed before its connection died
        for seg in segments:
            if seg.run_id is not None and seg.run_id in self._fresh:
                try:
                    await conn.copy_records_to_table(
                        "jobs", records=seg.copy_rows(), columns=COPY_COLUMNS
                    )
                except asyncpg.UniqueViolationError:
                    self._fresh.discard(seg.run_id)
                    raise _Redo from None
            elif seg.jobs:
                await conn.execute(seg.upsert[0], *seg.upsert[1])
            if seg.compensations:
                await conn.execute(Q.job_compensate, *columns(seg.compensations), now)
            if seg.dead:
                await conn.execute(Q.dlq_dead, *dead_columns(seg.dead), now)
            if seg.resolve_ids:
                await conn.execute(Q.dlq_resolve_by_id, seg.resolve_ids, now)
            resolve = seg.to_resolve(open_runs)
            if resolve:
                runs, keys = zip(*resolve, strict=True)
                await conn.execute(Q.dlq_resolve_by_key, runs, keys, now)
            if seg.dead:  # their entries are open now: a success later in this commit resolves
                open_runs = [*open_runs, *(r.run_id for r in seg.dead)]
        # A run's updated_at says "still making progress": once a second is enough.
        stale = [r for r in run_ids if now - self._touched.get(r, float("-inf")) >= 1.0]
        if stale:
            await conn.execute(Q.run_touch, stale, now)
            self._touched.update(dict.fromkeys(stale, now))
        if time.monotonic() - self._forgotten >= _FORGET_EVERY:
            await conn.execute(Q.commits_forget)
            self._forgotten = time.monotonic()

    async def aclose(self) -> None:
        """Wait for the transaction in progress, then close the pool; closing twice is fine."""
        if self._closed:
            return
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            await self._db.aclose()
