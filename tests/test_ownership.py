"""One process runs a run at a time; a redrive that dies strands no dead letter.

A run's owner (``host:pid:token``) takes a lease on the run when it begins,
renews it while it runs and releases it when it ends. Another process (or a
second engine in the same process) that starts the same run meanwhile is
refused with `ab.RunOwned`, one line naming the owner; a lease whose process
was killed is taken over at once, so resuming after SIGKILL just works.
The crash tests use real processes, the real CLI and real signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

import asyncbatch as ab
from asyncbatch._store import DEFAULT_LEASE

JOBS = """
import asyncio, os
from pathlib import Path
from typing import Any, Literal

async def work(item):
    if str(item["n"]) == os.environ.get("HOLD_AT"):
        Path("started").touch()
        await asyncio.Event().wait()  # hold the run until the process is killed
    if item["n"] % 5 == 0 and not os.environ.get("FIXED"):
        raise ValueError(f"item {item['n']} is bad")
    return item["n"]
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ownedjobs.py").write_text(JOBS)
    (tmp_path / "items.jsonl").write_text("".join(f'{{"n": {i}}}\n' for i in range(20)))
    return tmp_path


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, workdir: Path) -> str:
    """The store the processes share: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        return "t.db"
    url: str = request.getfixturevalue("pg_url")
    return url


def _cli(db: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "asyncbatch", *args, "--db", db]


RUN = ("run", "ownedjobs:work", "--input", "items.jsonl", "--run-id", "r1", "--quiet")
REDRIVE = ("dlq", "redrive", "--run-id", "r1", "ownedjobs:work")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HOLD_AT", "FIXED")}
    return {**env, **extra}


@contextlib.contextmanager
def _holding(args: list[str], **env: str) -> Iterator[subprocess.Popen[str]]:
    """A child running ``args`` until one of its jobs has started holding the run."""
    child = subprocess.Popen(
        args, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while not Path("started").exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never started its job"
            time.sleep(0.01)
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=10)  # reaped: its pid no longer exists


def _count(db: str, sql: str) -> int:
    """A count read beside the writer (WAL on SQLite), 0 before the tables exist."""
    if db.startswith("postgresql"):
        return asyncio.run(_pg_count(db, sql))
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as c:
            return int(c.execute(sql).fetchone()[0])
    except sqlite3.Error:
        return 0


def _wait_for_jobs(db: str, n: int) -> None:
    deadline = time.monotonic() + 30
    while _count(db, "SELECT count(*) FROM jobs") < n:
        assert time.monotonic() < deadline, f"fewer than {n} jobs were committed"
        time.sleep(0.01)


async def _pg_count(db: str, sql: str) -> int:
    import asyncpg

    server, _, schema = db.partition("?schema=")
    conn = await asyncpg.connect(server, server_settings={"search_path": schema}, timeout=5)
    try:
        return int(await conn.fetchval(sql))
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()


async def _dlq(db: str, status: Literal["dead", "resolved"] = "dead") -> list[str]:
    async with ab.open_store(db) as store:
        return sorted(e.key for e in await store.dlq.list(run_id="r1", status=status))


@pytest.mark.slow
def test_a_second_process_on_a_running_run_is_refused_in_one_line_naming_the_owner(
    db: str,
) -> None:
    with _holding(_cli(db, *RUN), HOLD_AT="3", FIXED="1") as owner:
        second = subprocess.run(
            _cli(db, *RUN), env=_env(FIXED="1"), capture_output=True, text=True, timeout=60
        )

        assert second.returncode != 0
        (line,) = second.stderr.strip().splitlines()
        assert line.startswith(
            f"error: run 'r1' is owned by another process, {socket.gethostname()}:{owner.pid}:"
        )
        assert " since 20" in line
        assert owner.poll() is None  # the owner was not disturbed


@pytest.mark.slow
def test_a_sigkilled_owner_is_taken_over_at_once(db: str) -> None:
    with _holding(_cli(db, *RUN), HOLD_AT="3", FIXED="1") as owner:
        _wait_for_jobs(db, 19)  # all but the held one
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)

    started = time.monotonic()
    resumed = subprocess.run(
        _cli(db, *RUN), env=_env(FIXED="1"), capture_output=True, text=True, timeout=60
    )

    assert resumed.returncode == 0, resumed.stderr
    assert time.monotonic() - started < DEFAULT_LEASE  # it did not wait for the lease to expire
    assert "1 succeeded, 19 skipped" in resumed.stdout  # the killed owner's commits stand


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombies are read from /proc")
def test_a_sigkilled_owner_not_yet_reaped_is_taken_over_at_once(db: str) -> None:
    """A zombie's pid still answers kill(pid, 0): its state says it is gone."""
    with _holding(_cli(db, *RUN), HOLD_AT="3", FIXED="1") as owner:
        _wait_for_jobs(db, 19)  # all but the held one
        owner.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{owner.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "the owner did not die"
            time.sleep(0.01)
        resumed = subprocess.run(  # the owner is not reaped until the block ends
            _cli(db, *RUN), env=_env(FIXED="1"), capture_output=True, text=True, timeout=60
        )
    assert resumed.returncode == 0, resumed.stderr
    assert "1 succeeded, 19 skipped" in resumed.stdout


@pytest.mark.slow
def test_a_redrive_killed_midway_leaves_its_unfinished_entries_dead_and_redrivable(
    db: str,
) -> None:
    first = subprocess.run(_cli(db, *RUN), env=_env(), capture_output=True, text=True, timeout=60)
    assert first.returncode != 0  # items 0, 5, 10 and 15 were dead-lettered
    assert asyncio.run(_dlq(db)) == ["0", "10", "15", "5"]

    with _holding(_cli(db, *REDRIVE), HOLD_AT="0", FIXED="1") as redrive:
        deadline = time.monotonic() + 30
        resolved = "SELECT count(*) FROM dlq WHERE status = 'resolved'"
        while _count(db, resolved) < 3:  # 5, 10 and 15 are committed; 0 still runs
            assert time.monotonic() < deadline
            time.sleep(0.01)
        redrive.send_signal(signal.SIGKILL)

    assert asyncio.run(_dlq(db)) == ["0"]  # what did not finish is still dead, and listed
    assert asyncio.run(_dlq(db, "resolved")) == ["10", "15", "5"]

    again = subprocess.run(
        _cli(db, *REDRIVE), env=_env(FIXED="1"), capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert "1 resolved, 0 dead again" in again.stdout
    assert asyncio.run(_dlq(db)) == []
    assert asyncio.run(_dlq(db, "resolved")) == ["0", "10", "15", "5"]


# ------------------------------------------------------------- in one process


async def test_a_second_engine_on_a_running_run_is_refused_on_a_memory_store() -> None:
    store = ab.MemoryStore()
    started, release = asyncio.Event(), asyncio.Event()

    async def job(x: int) -> int:
        started.set()
        await release.wait()
        return x

    async with asyncio.TaskGroup() as tg:
        first = tg.create_task(ab.run_batch(job, range(3), store=store, run_id="r"))
        await started.wait()

        with pytest.raises(ab.RunOwned) as refused:
            await ab.run_batch(job, range(3), store=store, run_id="r")

        assert refused.value.run_id == "r"
        assert refused.value.owner.startswith(f"{socket.gethostname()}:{os.getpid()}:")
        assert refused.value.owner in str(refused.value)
        release.set()
    assert first.result().counts[ab.JobStatus.SUCCEEDED] == 3

    again = await ab.run_batch(job, range(3), store=store, run_id="r")  # released: resumable
    assert again.counts[ab.JobStatus.SKIPPED] == 3


@pytest.mark.looptime
async def test_the_owner_keeps_its_lease_while_every_job_is_parked() -> None:
    loop = asyncio.get_running_loop()
    store = ab.MemoryStore(clock=loop.time)  # the lease ages on the virtual clock
    slow_retry = ab.Retry(attempts=2, backoff=ab.Backoff.constant(100))

    async def flaky(x: int) -> int:
        if ab.current_job().attempt == 1:
            raise ab.TransientError("try again in 100 s")
        return x

    async with asyncio.TaskGroup() as tg:
        first = tg.create_task(
            ab.run_batch(
                flaky,
                range(3),
                store=store,
                run_id="r",
                retry=ab.RetryPolicy({ab.ErrorKind.TRANSIENT: slow_retry}),
            )
        )
        await asyncio.sleep(60)  # every job is parked on its backoff, 4 leases long

        with pytest.raises(ab.RunOwned):
            await ab.run_batch(flaky, range(3), store=store, run_id="r")
    assert first.result().counts[ab.JobStatus.SUCCEEDED] == 3


@pytest.mark.looptime
async def test_a_rollback_longer_than_the_lease_keeps_the_run_owned() -> None:
    loop = asyncio.get_running_loop()
    store = ab.MemoryStore(clock=loop.time)
    undoing = asyncio.Event()

    async def charge(x: int) -> int:
        if x == 3:
            await asyncio.sleep(1)
            raise ab.FatalError("card processor is gone")
        return x

    async def refund(item: int, result: int) -> None:
        undoing.set()
        await asyncio.sleep(20)  # three undos: 60 s, four leases long

    async def aborted_and_rolled_back() -> None:
        with pytest.raises(ab.BatchAborted):
            await ab.run_batch(charge, range(4), store=store, run_id="r", compensate=refund)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(aborted_and_rolled_back())
        await undoing.wait()
        await asyncio.sleep(45)

        with pytest.raises(ab.RunOwned):
            await ab.run_batch(charge, range(4), store=store, run_id="r")
    run = await store.get_run("r")
    assert (run.status, run.counts["compensated"]) == ("aborted", 3)


async def test_a_run_whose_engine_ended_without_releasing_is_taken_over_in_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = ab.MemoryStore()
    end_run = ab.MemoryStore.end_run

    async def disk_full(self: ab.MemoryStore, *args: Any, **kwargs: Any) -> None:
        raise ab.StoreError("database or disk is full")

    async def job(x: int) -> int:
        return x

    monkeypatch.setattr(ab.MemoryStore, "end_run", disk_full)
    with pytest.raises(ab.StoreError, match="disk is full"):
        await ab.run_batch(job, range(3), store=store, run_id="r")
    monkeypatch.setattr(ab.MemoryStore, "end_run", end_run)

    again = await ab.run_batch(job, range(3), store=store, run_id="r")  # no 15 s wait

    assert again.counts[ab.JobStatus.SKIPPED] == 3


@pytest.mark.looptime
async def test_a_heartbeat_the_store_fails_to_write_does_not_fail_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    beats: list[str] = []

    async def locked(self: ab.MemoryStore, run_id: str, owner: str) -> None:
        beats.append(owner)
        raise ab.StoreError("database is locked by another writer")

    monkeypatch.setattr(ab.MemoryStore, "heartbeat", locked)

    async def job(x: int) -> int:
        await asyncio.sleep(32)  # beats at 5, 10, ... 30 s
        return x

    result = await ab.run_batch(job, range(2), store=ab.MemoryStore(), run_id="r")

    assert result.counts[ab.JobStatus.SUCCEEDED] == 2
    assert len(beats) == 6
