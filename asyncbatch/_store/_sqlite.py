"""`SQLiteStore`: the embedded default store, on aiosqlite.

One connection in WAL mode (readers never block the writer), written by one
writer. `SQLiteStore.commit` is the hot path: every pending record of a run
goes into ONE ``BEGIN IMMEDIATE … COMMIT`` with an ``executemany`` upsert per
statement kind, so one commit (and, with ``durability="full"``, one fsync)
pays for a whole group of jobs, and most groups reach the connection's
thread in one trip (`SQLiteStore._write`). Large groups (`WRITER_ROWS` rows
or more, a busy run) go to a writer process instead (`_sqlite_writer`),
which commits them on another core without the event loop's GIL.
``synchronous=NORMAL`` in WAL mode survives a process crash; ``FULL`` also
survives power loss.

Every transaction is shielded from its caller's cancellation: once begun it
commits or rolls back, so a cancelled caller never leaves the connection
mid-transaction.

The commit writes dead-letter entries too (same transaction as the job);
reading and changing them is `SQLiteDeadLetterQueue`'s job, in ``_sqlite_dlq``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from functools import partial
from typing import Any, ClassVar, Literal, TypeVar

import aiosqlite
import anyio.to_thread

from asyncbatch._errors import ConfigError, RunOwned, StoreError, UnknownRun

from ._common import (
    FINISHED,
    Clock,
    check_durability,
    check_lease,
    decode,
    encode,
    finished_job,
    mark_seen,
    wall_clock,
    zero_counts,
)
from ._protocol import (
    DEFAULT_LEASE,
    DeadLetterQueue,
    FinishedJob,
    RunInfo,
    RunStatus,
)
from ._schema import (
    APPLICATION_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
)
from ._sqlite_commit import Committed, SQLiteCommitter, Write, chunks
from ._sqlite_dlq import SQLiteDeadLetterQueue
from ._sqlite_writer import Skipped, WriterError, WriterProcess, usable
from ._sqlite_writer_main import commit

__all__ = ["WRITER_ROWS", "SQLiteStore"]

WRITER_ROWS = 256
"""A group of at least this many records is committed by the writer process.

Smaller ones (short runs, a run's first and last groups) go through the
connection's thread. The process starts once per store, when a run begins
(a store that only reads starts none), and one that was never sent a group
is killed at close: a short run does not wait for its start."""

T = TypeVar("T")

_FINISHED_SQL = ", ".join(f"'{s.value}'" for s in FINISHED)
_RUN_COLUMNS = "id, job, status, config, counts, report, created_at, updated_at"
_JOB_COLUMNS = "key, status, result, has_result, attempts, seq, payload, idx"  # finished_job's
_LOOKUP_COLUMNS = "key, status, result, has_result, attempts, seq, NULL, idx"  # ... no payload
_RELEASE = ", owner = NULL, owned_since = NULL, heartbeat_at = NULL"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _probe(path: str) -> None:
    sqlite3.connect(path).close()


class SQLiteStore:
    """A checkpoint store in one SQLite file. Open it with `SQLiteStore.open` or `ab.open_store`.

    Attributes:
        url: ``sqlite:///`` + the path (SQLAlchemy's convention: four slashes
            for an absolute path).
        path: the database file.
        dlq: the dead-letter queue (`SQLiteDeadLetterQueue`).
        group_size: records to a group commit (see `Store`).
    """

    group_size = 4096
    """Finished jobs that may wait for one group commit while the one before is in
    flight: with the writer process the loop fills the next group while the
    writer commits, and a backlog capped at 1,024 held the workers back at each
    of the writer's WAL checkpoints (measured, 100,000 no-op jobs, 5 interleaved
    rounds: 0.41x -> 0.50x of the run without a store; 8,192 gained nothing more)."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: str,
        *,
        durability: Literal["normal", "full"],
        busy_timeout: float,
        clock: Clock,
    ) -> None:
        self._db = db
        self.path = path
        self.url = f"sqlite:///{path}"
        self._durability = durability
        self._sync = ""
        self._busy_timeout = busy_timeout
        self._clock = clock
        self._lock = asyncio.Lock()
        self._committer = SQLiteCommitter(db, clock)
        self._cache = self._committer.cache
        self._closed = False
        self._writer: WriterProcess | None = None
        self._writer_off = path == ":memory:" or path.startswith("file:")
        self.dlq: DeadLetterQueue = SQLiteDeadLetterQueue(
            db=db,
            url=self.url,
            read=self._read,
            transaction=self._transaction,
            forget=self._cache.clear,
            clock=clock,
        )

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        durability: Literal["normal", "full"] = "normal",
        busy_timeout: float = 5.0,
        clock: Clock = wall_clock,
    ) -> SQLiteStore:
        """Open (creating or migrating) the store at ``path``; close it with `aclose`.

        Args:
            path: the database file (``":memory:"`` for a throwaway one).
            durability: default ``synchronous`` level: ``"normal"`` (survives a
                process crash) or ``"full"`` (fsync per commit, survives power loss).
            busy_timeout: seconds to wait for another writer's lock before
                raising `StoreError`.
            clock: epoch-seconds clock for timestamps.

        Raises:
            StoreError: the file cannot be opened, is not an asyncbatch
                database, or was written by a newer asyncbatch.
        """
        durability = check_durability(durability)
        if not isinstance(busy_timeout, int | float) or busy_timeout < 0:
            raise ConfigError(f"busy_timeout must be seconds >= 0, got {busy_timeout!r}")
        target = os.fspath(path)
        try:
            # Probe first: when aiosqlite's connect fails, its worker thread
            # outlives the call and may report to an event loop that is gone.
            await anyio.to_thread.run_sync(_probe, target)
            db = await aiosqlite.connect(target, isolation_level=None, timeout=busy_timeout)
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open SQLite store {target}: {_one_line(exc)} "
                "(does its directory exist, and may this process write there?)"
            ) from exc
        store = cls(db, target, durability=durability, busy_timeout=busy_timeout, clock=clock)
        try:
            with store._errors():
                await store._setup()
        except BaseException:
            await db.close()
            raise
        return store

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    async def __aenter__(self) -> SQLiteStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------- plumbing

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn sqlite3 errors into one-line `StoreError`s that say what to do."""
        try:
            yield
        except (WriterError, Skipped) as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            text = _one_line(exc)
            if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
                raise StoreError(
                    f"database is locked by another writer: {self.path} (waited "
                    f"{self._busy_timeout:g}s; is another process writing to this store?)"
                ) from exc
            if "not a database" in text or "malformed" in text or "corrupt" in text:
                raise StoreError(
                    f"{self.path} is not an asyncbatch SQLite database: {text}"
                ) from exc
            raise StoreError(f"SQLite store {self.path}: {text}") from exc

    async def _setup(self) -> None:
        db = self._db
        app_id = await self._scalar("PRAGMA application_id")
        version = await self._scalar("PRAGMA user_version")
        # Reading the schema also reads page 1: a garbled file fails here, at open.
        tables = [r[0] for r in await db.execute_fetchall("SELECT name FROM sqlite_master")]
        if app_id != APPLICATION_ID and (app_id or version or tables):
            raise StoreError(
                f"{self.path} is not an asyncbatch SQLite database: it holds other data "
                f"(application_id {app_id}, tables {', '.join(tables) or 'none'})"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer asyncbatch (store schema {version}, "
                f"this version knows up to {SCHEMA_VERSION}): upgrade asyncbatch "
                "(pip install -U asyncbatch)"
            )
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA foreign_keys=ON")
        await self._synchronous(self._durability)
        if version < SCHEMA_VERSION:
            await self._transaction(self._migrate)

    async def _migrate(self) -> None:
        # Re-read under the write lock: another process may have migrated meanwhile.
        version = await self._scalar("PRAGMA user_version")
        for step in MIGRATIONS[version:]:
            for statement in step:
                await self._db.execute(statement)
        await self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        await self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")

    async def _scalar(self, sql: str, params: Iterable[Any] = ()) -> Any:
        rows = list(await self._db.execute_fetchall(sql, params))
        return rows[0][0] if rows else None

    async def _synchronous(self, durability: str) -> None:
        level = "FULL" if durability == "full" else "NORMAL"
        if level != self._sync:
            await self._db.execute(f"PRAGMA synchronous={level}")
            self._sync = level

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """The store's lock, taken once the writer process has answered (a cancelled
        commit's transaction may still be running there: what follows sees its end)."""
        async with self._lock:
            writer = self._writer
            if writer is not None:
                with suppress(Exception):
                    await writer.settled()
            yield

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the store {self.url} is closed")

    async def _transaction(self, body: Callable[[], Awaitable[T]], durability: str = "") -> T:
        """Run ``body`` in one write transaction that commits or rolls back as a whole.

        The transaction runs in its own task and the caller awaits it through
        `asyncio.shield`: a cancelled caller (whether by anyio or by plain
        asyncio) stops waiting, but the transaction still ends, and whoever
        comes next waits for the lock until it has.
        """
        self._check_open()
        task = asyncio.ensure_future(self._locked_transaction(body, durability))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                task.add_done_callback(mark_seen)
            raise

    async def _locked_transaction(self, body: Callable[[], Awaitable[T]], durability: str) -> T:
        db = self._db
        async with self._locked():
            self._check_open()
            with self._errors():
                if durability:
                    await self._synchronous(durability)
                await db.execute("BEGIN IMMEDIATE")
                try:
                    result = await body()
                    await db.execute("COMMIT")
                except BaseException:
                    self._cache.clear()  # it may hold changes that were just rolled back
                    try:
                        await db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the error that got us here is the one to report
                    raise
        return result

    async def _write(
        self, transaction: Callable[[sqlite3.Connection], None], durability: str
    ) -> None:
        """Run ``transaction`` on the connection's thread in one trip, under the write lock.

        Awaited directly, not through a task as `_transaction` is: the trip
        is queued before the caller first waits, so the connection's thread
        works while the loop runs on (through a task, it started one loop
        turn later, after the workers that the commit's hand-off had just
        woken: the commit and the jobs took turns). A cancelled caller stops
        waiting; the thread still runs the transaction to its end, before
        anything queued after it.
        """
        db = self._db
        try:
            self._check_open()
            async with self._locked():  # free: no wait (a multi-trip transaction holds it)
                self._check_open()
                with self._errors():
                    await self._synchronous(durability)
                    # aiosqlite's own call on its thread (private: what each of its methods makes)
                    await db._execute(transaction, db._conn)  # type: ignore[no-untyped-call]
        except BaseException:
            # Not written, rolled back or (cancelled) not known yet: the
            # completion orders the group took are read again.
            self._cache.clear()
            raise

    async def _send(self, message: bytes) -> asyncio.Future[None]:
        """Hand one transaction to the writer process; returns the future of its commit.

        The lock is held only to send: after whatever the connection's thread
        is running, and before what comes next there (`_locked` waits for the
        writer's answers), while further sends need not wait for the answers
        (they come in order).
        """
        try:
            self._check_open()
            async with self._lock:
                self._check_open()
                writer = self._writer
                assert writer is not None
                if not writer.fits(message):
                    # More than the pipe holds waits for the answers before it: sent
                    # while the process commits, it would block the loop until then.
                    with suppress(Exception):
                        await writer.settled()
                with self._errors():
                    reply = writer.send(message)
        except BaseException as exc:
            self._writer_failed(exc)
            raise
        return asyncio.ensure_future(self._answered(reply))

    async def _answered(self, reply: asyncio.Future[bytes | None]) -> None:
        try:
            with self._errors():
                WriterProcess.check(await asyncio.shield(reply))
        except BaseException as exc:
            self._writer_failed(exc)
            raise

    def _writer_failed(self, exc: BaseException) -> None:
        """A transaction sent to the writer was not committed (or, cancelled, is not known
        to be): the completion orders are read again; a writer gone is not used again."""
        self._cache.clear()
        if isinstance(exc, StoreError) and isinstance(exc.__cause__, WriterError):
            self._drop_writer()

    async def _read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        self._check_open()
        async with self._locked():
            with self._errors():
                return list(await self._db.execute_fetchall(sql, params))

    # ----------------------------------------------------------- runs

    def _run_info(self, row: Any, live: dict[str, int] | None) -> RunInfo:
        return RunInfo(
            run_id=row[0],
            job=row[1],
            status=row[2],
            config=decode(row[3]),
            counts=live if live is not None else decode(row[4]),
            report=decode(row[5]),
            created_at=row[6],
            updated_at=row[7],
        )

    async def _live_counts(self, where: str, params: Iterable[Any]) -> dict[str, dict[str, int]]:
        """Counts of running (or crashed) runs, from the jobs they committed."""
        live: dict[str, dict[str, int]] = {}
        rows = await self._db.execute_fetchall(
            f"SELECT run_id, status, count(*) FROM jobs WHERE {where} GROUP BY run_id, status",
            params,
        )
        for run_id, status, n in rows:
            live.setdefault(run_id, zero_counts())[status] = n
        return live

    async def _get_run(self, run_id: str) -> RunInfo | None:
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?"
        rows = list(await self._db.execute_fetchall(sql, (run_id,)))
        if not rows:
            return None
        live = None
        if rows[0][2] == "running":
            live = (await self._live_counts("run_id = ?", (run_id,))).get(run_id, zero_counts())
        return self._run_info(rows[0], live)

    async def begin_run(
        self, run: RunInfo, *, owner: str | None = None, lease: float = DEFAULT_LEASE
    ) -> RunInfo | None:
        """Create the run, or mark an existing one running again; returns the previous state.

        With ``owner``, takes the run's lease in the same ``BEGIN IMMEDIATE``
        transaction (so two processes cannot both take it), or raises
        `RunOwned`; see `Store.begin_run`.
        """

        async def body() -> RunInfo | None:
            now = self._clock()
            old = await self._get_run(run.run_id)
            if old is None:
                await self._db.execute(
                    f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (?, ?, 'running', ?, ?, NULL, ?, ?)",
                    (run.run_id, run.job, encode(run.config) or "{}", encode(run.counts) or "{}",
                     run.created_at or now, now),
                )  # fmt: skip
            else:
                if owner is not None:
                    (holder, since, beat), *_ = await self._db.execute_fetchall(
                        "SELECT owner, owned_since, heartbeat_at FROM runs WHERE id = ?",
                        (run.run_id,),
                    )
                    check_lease(
                        run.run_id,
                        holder=holder,
                        since=since,
                        heartbeat_at=beat,
                        owner=owner,
                        lease=lease,
                        now=now,
                    )
                    # Only a redrive that died leaves entries "redriven" (see mark_redriven).
                    await self._db.execute(
                        "UPDATE dlq SET status = 'dead', updated_at = ? "
                        "WHERE run_id = ? AND status = 'redriven'",
                        (now, run.run_id),
                    )
                    self._cache.pop(run.run_id, None)
                await self._db.execute(
                    "UPDATE runs SET status = 'running', job = ?, config = ?, updated_at = ? "
                    "WHERE id = ?",
                    (run.job or old.job, encode(run.config or old.config) or "{}", now, run.run_id),
                )
            if owner is not None:
                await self._db.execute(
                    "UPDATE runs SET owned_since = CASE WHEN owner IS ? THEN owned_since ELSE ? "
                    "END, owner = ?, heartbeat_at = ? WHERE id = ?",
                    (owner, now, owner, now, run.run_id),
                )
            return old

        old = await self._transaction(body)
        # The run will commit: its writer process starts now (~20 ms), beside the
        # run's first jobs, so the first large groups need not wait on the
        # connection's thread for it (a store that only reads never starts one).
        self._start_writer()
        return old

    async def _holder(self, run_id: str) -> tuple[str | None, float | None]:
        rows = list(
            await self._db.execute_fetchall(
                "SELECT owner, owned_since FROM runs WHERE id = ?", (run_id,)
            )
        )
        if not rows:
            raise UnknownRun(run_id)
        return rows[0][0], rows[0][1]

    async def heartbeat(self, run_id: str, owner: str) -> None:
        """Renew ``owner``'s lease on the run; raises `RunOwned` when it was lost."""

        async def body() -> None:
            cursor = await self._db.execute(
                "UPDATE runs SET heartbeat_at = ? WHERE id = ? AND owner = ?",
                (self._clock(), run_id, owner),
            )
            if cursor.rowcount == 0:
                holder, since = await self._holder(run_id)
                raise RunOwned(run_id, holder or "nobody (the lease was released)", since)

        await self._transaction(body)

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

        async def body() -> None:
            if owner is not None:
                holder, since = await self._holder(run_id)
                if holder is not None and holder != owner:
                    raise RunOwned(run_id, holder, since)
            release = "" if status == "compensating" else _RELEASE
            cursor = await self._db.execute(
                f"UPDATE runs SET status = ?, counts = ?, report = ?, updated_at = ?{release} "
                "WHERE id = ?",
                (status, encode(counts) or "{}", None if report is None else encode(report),
                 self._clock(), run_id),
            )  # fmt: skip
            if cursor.rowcount == 0:
                raise UnknownRun(run_id)

        await self._transaction(body)

    async def get_run(self, run_id: str) -> RunInfo:
        """The run; raises `UnknownRun`."""
        self._check_open()
        async with self._locked():
            with self._errors():
                run = await self._get_run(run_id)
        if run is None:
            raise UnknownRun(run_id)
        return run

    async def list_runs(self) -> list[RunInfo]:
        """Every run, newest first."""
        self._check_open()
        async with self._locked():
            with self._errors():
                rows = await self._db.execute_fetchall(
                    f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY created_at DESC, rowid DESC"
                )
                live = await self._live_counts(
                    "run_id IN (SELECT id FROM runs WHERE status = 'running')", ()
                )
        return [
            self._run_info(r, live.get(r[0], zero_counts()) if r[2] == "running" else None)
            for r in rows
        ]

    # ----------------------------------------------------------- jobs

    async def _jobs(self, run_id: str, sql: str) -> list[Any]:
        self._check_open()
        async with self._locked():
            with self._errors():
                if not await self._scalar("SELECT 1 FROM runs WHERE id = ?", (run_id,)):
                    raise UnknownRun(run_id)
                return list(await self._db.execute_fetchall(sql, (run_id,)))

    async def finished_jobs(self, run_id: str) -> dict[str, FinishedJob]:
        """Jobs of the run that reached SUCCEEDED, DEAD_LETTERED or COMPENSATED."""
        rows = await self._jobs(
            run_id,
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE run_id = ? AND status IN ({_FINISHED_SQL})",
        )
        return {row[0]: finished_job(*row) for row in rows}

    async def lookup(self, run_id: str, keys: Sequence[str]) -> dict[str, FinishedJob]:
        """The finished jobs among ``keys``, by key (payloads not loaded)."""
        found: dict[str, FinishedJob] = {}
        for chunk in chunks(keys):
            sql = (
                f"SELECT {_LOOKUP_COLUMNS} FROM jobs WHERE run_id = ? AND status IN "
                f"({_FINISHED_SQL}) AND key IN ({', '.join('?' * len(chunk))})"
            )
            for row in await self._read(sql, (run_id, *chunk)):
                found[row[0]] = finished_job(*row)
        return found

    async def last_seq(self, run_id: str) -> int:
        """The highest completion order the run has stored (0 for none)."""
        rows = await self._read("SELECT max(seq) FROM jobs WHERE run_id = ?", (run_id,))
        return int(rows[0][0] or 0)

    async def count_jobs(self, run_id: str) -> dict[str, int]:
        """Finished jobs of the run per status value (every status present)."""
        rows = await self._jobs(
            run_id, "SELECT status, count(*) FROM jobs WHERE run_id = ? GROUP BY status"
        )
        counts = zero_counts()
        counts.update(rows)
        return counts

    async def jobs(self, run_id: str) -> list[FinishedJob]:
        """Every job of the run, in completion order."""
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE run_id = ? ORDER BY seq"
        rows = await self._jobs(run_id, sql)
        return [finished_job(*row) for row in rows]

    takes_outcomes: ClassVar[bool] = True
    """`commit` takes plain successes as their `JobOutcome` (with ``run_id``)."""

    async def commit(
        self,
        records: Sequence[Committed],
        *,
        durability: Literal["normal", "full"] = "normal",
        run_id: str | None = None,
    ) -> None:
        """Apply every record in ONE transaction; durable to ``durability`` when it returns.

        With ``run_id``, ``records`` may also hold `JobOutcome`s: plain
        successes of that run (SUCCEEDED, not redriven, the result stored as
        is), committed without a `JobRecord` built for each (a third of a
        checkpointed job's cost on the event loop, measured).
        """
        await (await self.send(records, durability=durability, run_id=run_id))

    @property
    def sends_ahead(self) -> int:
        """The smallest group `send` hands to the writer process while it commits the one
        before (`Checkpointer`); 0 while there is no process up to take it (it is
        starting, or every commit goes through the connection's thread)."""
        writer = self._writer
        return WRITER_ROWS if writer is not None and writer.up else 0

    async def send(
        self,
        records: Sequence[Committed],
        *,
        durability: Literal["normal", "full"] = "normal",
        run_id: str | None = None,
    ) -> asyncio.Future[None]:
        """`commit` in two steps: returns once the transaction is on its way, with the
        future of its commit. Transactions commit in the order sent, and one is
        committed only if every one sent before it was.

        A group the writer process takes is sent without waiting for the
        answers to those before it: the next group reaches the process while
        it commits one, so it never waits for the event loop to read an
        answer and send more (measured: idle a quarter of a busy run's time).
        Any other commit is over when this returns.
        """
        check_durability(durability)
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        done.set_result(None)
        if not records:
            return done
        group = self._committer.group(records, run_id)
        if group is None or group.dead:
            await self._transaction(
                lambda: self._committer.apply(records, group, run_id), durability
            )
            return done
        writes = self._committer.writes(group)
        message = self._message(writes, durability) if len(records) >= WRITER_ROWS else None
        if message is not None:
            return await self._send(message)
        # Nothing to read first: the whole transaction is one trip to the
        # connection's thread. Each trip's answer waits for the event
        # loop's next turn, which, while workers run, holds hundreds of
        # jobs: a trip per statement made the commit and the jobs take turns.
        await self._write(partial(commit, writes=writes), durability)
        return done

    def _message(self, writes: list[Write], durability: str) -> bytes | None:
        """The writer process's message for ``writes`` (starting the process the first
        time), or None when they go through the connection's thread."""
        writer = self._start_writer()
        if writer is None:
            return None
        try:
            if not writer.ready():
                return None  # still starting (~20 ms): this group goes through the thread
            return WriterProcess.encode(writes, "FULL" if durability == "full" else "NORMAL")
        except ValueError:
            return None  # a value marshal cannot send: this group goes through the thread
        except WriterError:
            self._drop_writer()
            return None

    def _start_writer(self) -> WriterProcess | None:
        """The writer process, started the first time; None where there is none."""
        if self._writer is None and not self._writer_off:
            if not usable(asyncio.get_running_loop()):
                self._writer_off = True
                return None
            try:
                self._writer = WriterProcess(os.path.abspath(self.path), self._busy_timeout)
            except OSError:
                self._writer_off = True  # no process can be started here: the thread it is
        return self._writer

    def _drop_writer(self) -> None:
        """The writer process failed: later groups go through the connection's thread."""
        self._writer_off = True
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    async def aclose(self) -> None:
        """Close the connection (a checkpoint of the WAL happens then); closing twice is fine."""
        if self._closed:
            return
        async with self._locked():
            self._closed = True
            writer, self._writer = self._writer, None
            if writer is not None:
                await anyio.to_thread.run_sync(writer.close)
            with self._errors():
                await self._db.close()
