"""PostgreSQL-only store behaviour: schema versions, migrations, lost connections, errors.

The behaviour every store shares is in test_store.py (run against PostgreSQL
too). Tests that restart or stop a server use a private one
(``pg_temp_server``), never the shared server the rest of the suite uses.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

import asyncbatch as ab
from asyncbatch import JobStatus, StoreError
from asyncbatch._store import JobRecord, RunInfo, open_store

asyncpg = pytest.importorskip("asyncpg")

from asyncbatch._store import _postgres, _postgres_plan, _postgres_sql  # noqa: E402 - asyncpg
from asyncbatch._store._postgres import PostgresStore  # noqa: E402

S = JobStatus.SUCCEEDED


def ok(key: str, run_id: str = "r1") -> JobRecord:
    return JobRecord(run_id=run_id, key=key, status=S, attempts=1, result=key, has_result=True)


def dead(key: str, message: str = "bad", run_id: str = "r1") -> JobRecord:
    return JobRecord(
        run_id=run_id, key=key, status=JobStatus.DEAD_LETTERED, attempts=1, payload={"k": key},
        kind=ab.ErrorKind.PERMANENT, error_type="ValueError", message=message,
        history=(ab.AttemptRecord(number=1, started_at=1.0, duration=0.1,
                                  kind=ab.ErrorKind.PERMANENT, error_type="ValueError",
                                  message=message),),
    )  # fmt: skip


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    async with await PostgresStore.open(pg_url, retry_timeout=10) as st:
        await st.begin_run(RunInfo(run_id="r1", job="m:f"))
        yield st


async def _sql(url: str, query: str, *args: Any) -> Any:
    """One statement on a connection of its own, in the URL's schema."""
    server, _, schema = url.partition("?schema=")
    settings = {"search_path": schema} if schema else {}
    conn = await asyncpg.connect(server, server_settings=settings)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


# --------------------------------------------------------------- schema


async def test_schema_is_versioned_in_its_own_schema(store: PostgresStore, pg_url: str) -> None:
    rows = await _sql(pg_url, "SELECT version, asyncbatch FROM schema_version ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, _postgres_sql.SCHEMA_VERSION + 1))
    tables = await _sql(
        pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = $1", store.schema
    )
    assert {"runs", "jobs", "dlq", "schema_version", "commits"} <= {t[0] for t in tables}
    assert store.schema.startswith("t_")
    assert await _sql(pg_url, "SELECT 1 FROM pg_tables WHERE tablename = 'runs' "
                      "AND schemaname = 'public'") == []  # fmt: skip


async def test_default_schema_is_asyncbatch() -> None:
    from asyncbatch._store._postgres_url import parse_postgres_url

    assert parse_postgres_url("postgresql://h/db").schema == "asyncbatch"


async def test_two_processes_opening_a_new_database_at_once_migrate_it_once(
    pg_url: str,
) -> None:
    stores = await asyncio.gather(*(PostgresStore.open(pg_url) for _ in range(6)))
    try:
        rows = await _sql(pg_url, "SELECT version FROM schema_version")
        assert sorted(r[0] for r in rows) == list(range(1, _postgres_sql.SCHEMA_VERSION + 1))
        await stores[0].begin_run(RunInfo(run_id="r"))
        await stores[1].commit([ok("a", "r")])
        assert [j.key for j in await stores[5].jobs("r")] == ["a"]
    finally:
        for st in stores:
            await st.aclose()


async def test_reopen_migrates_an_older_schema(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await PostgresStore.open(pg_url) as st:
        await st.begin_run(RunInfo(run_id="r"))
        await st.commit([ok("a", "r")])

    step = "CREATE TABLE notes (run_id text REFERENCES runs (id), body text)"
    monkeypatch.setattr(_postgres, "MIGRATIONS", (*_postgres_sql.MIGRATIONS, step))
    monkeypatch.setattr(_postgres, "SCHEMA_VERSION", _postgres_sql.SCHEMA_VERSION + 1)
    async with await PostgresStore.open(pg_url) as st:
        assert [j.key for j in await st.jobs("r")] == ["a"]

    assert await _sql(pg_url, "SELECT count(*) FROM notes") == [(0,)]
    (top,) = await _sql(pg_url, "SELECT max(version) FROM schema_version")
    assert top[0] == _postgres_sql.SCHEMA_VERSION + 1


async def test_a_schema_from_a_newer_asyncbatch_asks_to_upgrade(pg_url: str) -> None:
    async with await PostgresStore.open(pg_url):
        pass
    await _sql(pg_url, "INSERT INTO schema_version VALUES ($1, 'future')", 99)

    with pytest.raises(StoreError, match=r"newer asyncbatch \(store schema 99.*pip install -U"):
        await PostgresStore.open(pg_url)


async def test_a_schema_holding_other_tables_is_refused_untouched(pg_url: str) -> None:
    schema = pg_url.rpartition("=")[2]
    await _sql(pg_url.rpartition("?")[0], f'CREATE SCHEMA "{schema}"')
    await _sql(pg_url, "CREATE TABLE users (id int)")

    with pytest.raises(StoreError, match=r"holds other tables.*schema=NAME") as info:
        await PostgresStore.open(pg_url)
    assert "\n" not in str(info.value)
    tables = await _sql(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
    assert [t[0] for t in tables] == ["users"]


def test_every_query_name_is_loaded_once() -> None:
    with pytest.raises(RuntimeError, match="more than once"):
        _postgres_sql.parse_named(
            "-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n",
            _postgres_sql.Queries,
            "postgres_queries.sql",
        )
    with pytest.raises(RuntimeError, match="missing"):
        _postgres_sql.parse_named(
            "-- name: run_get\nSELECT 1\n", _postgres_sql.Queries, "postgres_queries.sql"
        )
    assert "unnest" in _postgres_sql.QUERIES.job_upsert


# --------------------------------------------------------------- commits


async def test_a_retried_commit_that_had_landed_is_not_applied_twice(
    store: PostgresStore,
) -> None:
    # What a COMMIT whose reply was lost looks like: the same commit, applied again.
    segments = _postgres_plan.plan([dead("a"), ok("b")], 5.0)
    for _ in range(2):
        await store._write(lambda c: store._apply(c, "token-1", ["r1"], segments, 5.0))

    (entry,) = await store.dlq.list()
    assert (len(entry.attempts), entry.redrive_count) == (1, 0)
    assert [j.key for j in await store.jobs("r1")] == ["a", "b"]


async def test_a_retried_begin_run_or_purge_that_had_landed_answers_as_the_first_did(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.commit([dead("a"), dead("b")])
    real = store._db.write

    async def landed_then_retried(body: Any) -> Any:
        await real(body)  # committed, but its reply was lost: the connector runs it again
        return await real(body)

    monkeypatch.setattr(store._db, "write", landed_then_retried)

    assert await store.begin_run(RunInfo(run_id="new"), owner="host-a:1:a") is None  # still new
    assert "new" in store._fresh
    old = await store.begin_run(RunInfo(run_id="r1"), owner="host-a:1:a")
    assert old is not None
    assert old.run_id == "r1"
    assert await store.dlq.purge(run_id="r1") == 2  # not 0, the retry's own count
    with pytest.raises(ab.RunOwned):  # the lease was taken once, and holds
        await store.begin_run(RunInfo(run_id="r1"), owner="host-b:2:b")


def test_the_fast_plan_of_plain_successes_equals_the_general_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = [ok(str(i)) for i in range(50)]
    (fast,) = _postgres_plan.plan(records, 7.0)
    monkeypatch.setattr(_postgres_plan, "plain_segment", lambda records, now: None)
    (general,) = _postgres_plan.plan(records, 7.0)

    def plain(seg: Any) -> Any:
        return (seg.upsert[0], [list(p) if isinstance(p, list | tuple) else p
                                for p in seg.upsert[1]], seg.to_resolve(["r1"]),
                list(seg.copy_rows()), seg.run_id)  # fmt: skip

    assert plain(fast) == plain(general)
    assert fast.upsert[0] is _postgres_sql.QUERIES.job_success
    assert _postgres_plan.plain_segment([*records, ok("1")], 7.0) is None  # a job twice
    assert _postgres_plan.plain_segment([*records, dead("x")], 7.0) is None


async def test_a_group_commit_is_a_few_statements_whatever_its_size(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    statements: list[str] = []
    original = asyncpg.Connection.execute

    async def spy(self: Any, query: str, *args: Any, **kw: Any) -> Any:
        if query not in ("BEGIN;", "COMMIT;"):
            statements.append(query.splitlines()[-1])
        return await original(self, query, *args, **kw)

    copy = asyncpg.Connection.copy_records_to_table

    async def copy_spy(self: Any, table: str, **kw: Any) -> Any:
        statements.append(f"COPY {table}")
        return await copy(self, table, **kw)

    monkeypatch.setattr(asyncpg.Connection, "execute", spy)
    monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", copy_spy)
    await store.commit([ok(str(i)) for i in range(2000)] + [dead("x")])
    # jobs, DLQ entries, resolutions, the run's updated_at (+ commit_begin, a fetch)
    assert len(statements) <= 4, statements
    del statements[:]
    await store.commit([ok(str(i)) for i in range(2000, 4000)])
    # the plain successes of a fresh run: one COPY (+ the resolutions: "x" is open)
    assert statements[0] == "COPY jobs", statements
    assert len(statements) <= 2, statements
    assert len(await store.jobs("r1")) == 4001


async def test_a_store_from_before_copy_is_migrated_and_copies_in_completion_order(
    pg_url: str,
) -> None:
    async with await PostgresStore.open(pg_url):
        pass
    # What schema step 3 left: no default for jobs.seq, none of the later steps' tables.
    await _sql(pg_url, "ALTER TABLE jobs ALTER COLUMN seq DROP DEFAULT")
    await _sql(pg_url, "DROP TABLE limit_slots, limit_waits, limit_rates")
    await _sql(pg_url, "DELETE FROM schema_version WHERE version > 3")

    async with await PostgresStore.open(pg_url) as st:
        await st.begin_run(RunInfo(run_id="r"))
        keys = [f"k{i}" for i in range(5000)]
        for i in range(0, 5000, 1000):
            await st.commit([ok(k, "r") for k in keys[i : i + 1000]])
        jobs = await st.jobs("r")

    assert [j.key for j in jobs] == keys
    assert len({j.seq for j in jobs}) == 5000
    (default,) = await _sql(
        pg_url, "SELECT column_default FROM information_schema.columns "
        "WHERE table_name = 'jobs' AND column_name = 'seq' AND table_schema = current_schema()",
    )  # fmt: skip
    assert "nextval" in default[0]


async def test_a_fresh_run_whose_job_has_a_row_after_all_is_upserted(
    store: PostgresStore,
) -> None:
    # r1 was created by this store: plain successes go in by plain INSERT...
    assert "r1" in store._fresh
    await store.commit([JobRecord(run_id="r1", key="a", status=JobStatus.CANCELLED)])
    await store.commit([ok("b")])
    # ...until one conflicts: the commit is redone whole with the upsert.
    await store.commit([ok("a"), ok("c")])

    assert "r1" not in store._fresh
    assert [(j.key, j.status) for j in await store.jobs("r1")] == [("b", S), ("a", S), ("c", S)]
    await store.begin_run(RunInfo(run_id="r1"))  # a resumed run is never taken for fresh
    assert "r1" not in store._fresh


async def test_a_cancelled_commit_still_lands_whole(store: PostgresStore) -> None:
    task = asyncio.create_task(store.commit([ok(str(i)) for i in range(3000)]))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.commit([ok("last")])
    assert len(await store.jobs("r1")) == 3001


async def test_commits_run_with_synchronous_commit_on(
    pg_server: str, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await PostgresStore.open(pg_url, durability="full") as st:
        setting = await st._read(lambda c: c.fetchval("SHOW synchronous_commit"))
    assert setting == "on"


# --------------------------------------------------------------- lost connections


async def test_a_connection_killed_mid_commit_is_replaced_and_the_commit_retried(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "ab-" + pg_url.rpartition("=")[2]
    monkeypatch.setenv("PGAPPNAME", name)
    async with await PostgresStore.open(pg_url) as st:
        await st.begin_run(RunInfo(run_id="r1"))
        await st.commit([ok("a")])
        server, _, schema = pg_url.partition("?schema=")
        blocker = await asyncpg.connect(server, server_settings={"search_path": schema})
        try:
            # Hold the run's row: the next commit blocks on it mid-transaction...
            locked = blocker.transaction()
            await locked.start()
            await blocker.execute("SELECT 1 FROM runs WHERE id = 'r1' FOR UPDATE")
            st._touched.clear()  # (the commit touches the run's updated_at)
            commit = asyncio.create_task(st.commit([ok("b"), dead("c")]))
            waiting = (
                "SELECT pid FROM pg_stat_activity "
                "WHERE application_name = $1 AND wait_event_type = 'Lock'"
            )
            for _ in range(500):
                if await blocker.fetch(waiting, name):
                    break
                await asyncio.sleep(0.01)
            # ...where its connection is killed; the retry waits for the row too.
            assert await blocker.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = $1", name
            )  # fmt: skip
            await asyncio.sleep(0.1)
            await locked.commit()
            await commit
        finally:
            await blocker.close()

        assert st._db.retries >= 1
        assert [j.key for j in await st.jobs("r1")] == ["a", "b", "c"]
        (entry,) = await st.dlq.list()
        assert (entry.key, len(entry.attempts)) == ("c", 1)


async def test_a_run_survives_a_database_restart(pg_temp_server: Any) -> None:
    server = pg_temp_server
    url = server.url + "?schema=restart"
    n, restart_now, restarted = 400, asyncio.Event(), asyncio.Event()

    async def job(x: int) -> int:
        await asyncio.sleep(0.002)
        if x == 150:
            restart_now.set()  # jobs 150-299 finish (and are committed) around the restart
        if x >= 300:
            await restarted.wait()  # the run cannot end before the server is back
        return x

    async def started(store: PostgresStore) -> Any:
        return await store._read(lambda c: c.fetchval("SELECT pg_postmaster_start_time()"))

    async with await PostgresStore.open(url, retry_timeout=20) as store:
        before = await started(store)

        async def restart_when_asked() -> None:
            await restart_now.wait()
            await asyncio.to_thread(server.restart)  # pg_ctl restart -m fast
            restarted.set()

        seen: list[str] = []
        batch = ab.Batch(job, store=store, run_id="restart", concurrency=8)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(restart_when_asked())
            async with batch.stream(range(n)) as outcomes:
                async for outcome in outcomes:
                    seen.append(outcome.key)

        assert await started(store) > before  # the server did restart during the run
        assert sorted(seen, key=int) == [str(i) for i in range(n)]
        jobs = await store.jobs("restart")
        assert {j.key for j in jobs} == {str(i) for i in range(n)}  # nothing acknowledged lost
        assert all(j.status is S for j in jobs)
        assert (await store.get_run("restart")).status == "finished"


async def test_a_database_that_stays_away_is_a_clear_store_error(pg_temp_server: Any) -> None:
    server = pg_temp_server
    store = await PostgresStore.open(server.url + "?schema=outage", retry_timeout=0.5)
    try:
        await store.begin_run(RunInfo(run_id="r1"))
        await asyncio.to_thread(server.stop)
        try:
            with pytest.raises(StoreError, match=r"did not come back within 0.5s") as info:
                await store.commit([ok("a")])
            assert "\n" not in str(info.value)
        finally:
            await asyncio.to_thread(server.start)
        await store.commit([ok("a")])  # and it works again once the server is back
        assert [j.key for j in await store.jobs("r1")] == ["a"]
    finally:
        await store.aclose()


# --------------------------------------------------------------- errors when opening


async def _open_error(url: str) -> str:
    with pytest.raises(StoreError) as info:
        async with open_store(url):
            pass
    message = str(info.value)
    assert "\n" not in message
    return message


async def test_a_wrong_password_is_one_clear_line(pg_temp_server: Any) -> None:
    url = pg_temp_server.url.replace(":s3cret@", ":wrong@")
    message = await _open_error(url)
    assert "password authentication failed" in message
    assert "wrong" not in message  # the password is never shown


async def test_an_unknown_database_is_one_clear_line(pg_server: str) -> None:
    message = await _open_error(pg_server.rsplit("/", 1)[0] + "/no_such_db")
    assert 'database "no_such_db" does not exist' in message
    assert "createdb no_such_db" in message


async def test_an_unreachable_server_is_one_clear_line() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    message = await _open_error(f"postgresql://postgres@127.0.0.1:{port}/db")
    assert message.startswith(f"cannot connect to PostgreSQL at 127.0.0.1:{port}/db")
    assert "is the server running" in message


def test_importing_asyncbatch_does_not_import_asyncpg() -> None:
    code = "import sys, asyncbatch; sys.exit('asyncpg' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_ab_postgres_store_imports_asyncpg_only_when_first_used() -> None:
    code = (
        "import sys, asyncbatch as ab\n"
        "assert 'asyncpg' not in sys.modules and 'PostgresStore' in dir(ab)\n"
        "from asyncbatch._store._postgres import PostgresStore\n"
        "assert ab.PostgresStore is PostgresStore and 'asyncpg' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_ab_postgres_store_without_asyncpg_says_which_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['asyncpg'] = None\n"
        "import asyncbatch as ab\n"
        "try: ab.PostgresStore\n"
        "except ImportError as e: print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == (
        "ab.PostgresStore needs asyncpg: pip install 'asyncbatch[postgres]'"
    ), done.stderr


def test_without_asyncpg_the_error_says_which_extra_to_install() -> None:
    code = (
        "import sys, asyncio; sys.modules['asyncpg'] = None\n"
        "import asyncbatch as ab\n"
        "async def main():\n"
        "    async with ab.open_store('postgresql://h/db'): pass\n"
        "try: asyncio.run(main())\n"
        "except ab.StoreError as e: print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'asyncbatch[postgres]'" in done.stdout, done.stderr


async def test_a_role_that_may_not_create_schemas_uses_one_made_for_it(
    pg_server: str, pg_url: str
) -> None:
    schema = pg_url.rpartition("=")[2]
    role = f"r_{schema}"  # a new role: no CREATE on the database
    await _sql(pg_server, f'CREATE ROLE "{role}" LOGIN')
    try:
        await _sql(pg_server, f'CREATE SCHEMA "{schema}" AUTHORIZATION "{role}"')
        url = pg_url.replace("postgresql://postgres@", f"postgresql://{role}@")
        async with await PostgresStore.open(url) as st:
            await st.begin_run(RunInfo(run_id="r"))
            await st.commit([ok("a", "r")])
            assert [j.key for j in await st.jobs("r")] == ["a"]
    finally:
        await _sql(pg_server, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await _sql(pg_server, f'DROP ROLE "{role}"')
