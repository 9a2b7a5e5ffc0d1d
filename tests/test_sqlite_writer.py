"""The SQLite store's writer process: large groups committed off the event loop's GIL.

The store suites run on it too (``sqlite-writer`` in tests/test_store.py and
tests/stores.py); here is what only a process can do: be killed, be sent
Ctrl-C, outlive its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import asyncbatch as ab
from asyncbatch import JobStatus, StoreError
from asyncbatch._store import JobRecord, RunInfo, SQLiteStore, _sqlite, open_store
from asyncbatch._store._sqlite_writer import Skipped

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the writer process is POSIX-only")


def ok(key: str) -> JobRecord:
    return JobRecord(run_id="r1", key=key, status=JobStatus.SUCCEEDED, result=key, has_result=True)


def group(prefix: str, n: int = 300) -> list[JobRecord]:
    return [ok(f"{prefix}-{i}") for i in range(n)]


async def started(store: SQLiteStore) -> int:
    """Begin run r1 (which starts the writer process), commit two large groups and
    wait for the writer: its pid. The next large group goes to it."""
    await store.begin_run(RunInfo(run_id="r1", job="t"))
    await store.commit(group("first"))  # the run is read first: a transaction on the thread
    await store.commit(group("second"))  # starts the writer; the thread commits meanwhile
    writer = store._writer
    assert writer is not None, "a large group starts the writer process"
    assert wait_until(writer.ready)
    return writer._proc.pid


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie nobody reaped yet counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_until(condition, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def test_large_groups_go_to_the_writer_and_land_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[int] = []
    send = _sqlite.WriterProcess.send

    def counted(self: _sqlite.WriterProcess, message: bytes) -> asyncio.Future[bytes | None]:
        sent.append(len(message))
        return send(self, message)

    monkeypatch.setattr(_sqlite.WriterProcess, "send", counted)
    async with await SQLiteStore.open(tmp_path / "s.db") as store:
        pid = await started(store)
        assert pid != os.getpid()
        assert sent == []
        await store.commit(group("third"))  # the writer's
        await store.commit([ok("small")])  # a small group: the connection's thread
        assert len(sent) == 1
        jobs = await store.jobs("r1")
    assert len(jobs) == 901
    assert [j.seq for j in jobs] == list(range(1, 902))
    assert jobs[-1].key == "small"
    assert jobs[600].result == "third-0"
    assert wait_until(lambda: gone(pid)), "closing the store ends its writer"


async def test_sent_groups_commit_in_order_and_none_behind_a_failed_one(tmp_path: Path) -> None:
    """Two transactions in flight: answers come in the order sent; one that fails
    takes the one sent behind it down with it, and the next ones commit again."""
    async with await SQLiteStore.open(tmp_path / "s.db") as store:
        await started(store)
        writer = store._writer
        assert writer is not None

        def insert(key: str) -> bytes:
            sql = "INSERT INTO runs (id, status, created_at, updated_at) VALUES (?, 'x', 0, 0)"
            return writer.encode([(sql, [(key,)])], "NORMAL")

        first, failing, behind = insert("a"), insert("r1"), insert("b")  # r1 exists already
        replies = [writer.send(m) for m in (first, failing, behind)]
        answers = await asyncio.gather(*replies)
        writer.check(answers[0])
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            writer.check(answers[1])
        with pytest.raises(Skipped):
            writer.check(answers[2])
        writer.check(await writer.send(insert("c")))  # sent after the failure was read
        ids = {run.run_id for run in await store.list_runs()}
    assert ids == {"r1", "a", "c"}


async def test_a_busy_run_keeps_two_groups_in_flight_and_acks_each_after_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_flight: list[int] = []
    sent = 0
    send = _sqlite.WriterProcess.send

    def counted(self: _sqlite.WriterProcess, message: bytes) -> asyncio.Future[bytes | None]:
        nonlocal sent
        sent += 1
        in_flight.append(len(self._replies) + 1)
        return send(self, message)

    monkeypatch.setattr(_sqlite.WriterProcess, "send", counted)
    acked: list[int] = []

    async def job(i: int) -> int:
        return i

    path = tmp_path / "s.db"
    async with await SQLiteStore.open(path) as store:
        batch = ab.Batch(job, concurrency=50, store=store, run_id="busy")
        async with batch.stream(range(30_000)) as outcomes:
            async for outcome in outcomes:
                acked.append(outcome.result)
                # Acknowledged means committed: another connection reads it already.
                if len(acked) % 5000 == 0:
                    with contextlib.closing(sqlite3.connect(path)) as conn:
                        (stored,) = conn.execute(
                            "SELECT count(*) FROM jobs WHERE run_id = 'busy'"
                        ).fetchone()
                    assert stored >= len(acked)
        jobs = await store.jobs("busy")
    assert sorted(acked) == list(range(30_000))
    assert max(in_flight) == 2, in_flight
    assert [j.seq for j in jobs] == list(range(1, 30_001))


async def test_the_writer_starts_with_a_run_and_an_unused_one_is_not_waited_for(
    tmp_path: Path,
) -> None:
    async with await SQLiteStore.open(tmp_path / "s.db") as store:
        await store.list_runs()
        assert store._writer is None, "a store that only reads starts no process"
        await store.begin_run(RunInfo(run_id="r1", job="t"))
        writer = store._writer
        assert writer is not None, "a run begins: its writer starts beside its first jobs"
        await store.commit([ok("small")])  # the connection's thread: the writer stays unused
        pid = writer._proc.pid
    assert gone(pid), "closing kills a writer never sent a group, at once"
    async with await SQLiteStore.open(tmp_path / "s.db") as store:
        assert [j.key for j in await store.jobs("r1")] == ["small"]


async def test_groups_are_sent_ahead_only_to_a_writer_that_is_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where every commit goes through the thread, a group is not cut in two (two
    commits one after the other would only cost a second COMMIT)."""
    async with await SQLiteStore.open(tmp_path / "a.db") as store:
        assert store.sends_ahead == 0
        await started(store)
        assert store.sends_ahead == _sqlite.WRITER_ROWS
    monkeypatch.setenv("ASYNCBATCH_SQLITE_WRITER", "thread")
    async with await SQLiteStore.open(tmp_path / "b.db") as store:
        await store.begin_run(RunInfo(run_id="r1", job="t"))
        await store.commit(group("first"))
        assert store._writer is None
        assert store.sends_ahead == 0


async def test_the_writer_ignores_ctrl_c(tmp_path: Path) -> None:
    # Ctrl-C reaches every process of the terminal's group: the run still has
    # commits to make after it (the jobs that finished), so the writer stays.
    async with await SQLiteStore.open(tmp_path / "s.db") as store:
        pid = await started(store)
        os.kill(pid, signal.SIGINT)
        await store.commit(group("after"))
        assert store._writer is not None
        assert store._writer._proc.pid == pid
        assert len(await store.jobs("r1")) == 900


async def test_a_killed_writer_fails_its_commit_and_the_thread_takes_over(tmp_path: Path) -> None:
    async with await SQLiteStore.open(tmp_path / "s.db") as store:
        pid = await started(store)
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: gone(pid))
        with pytest.raises(StoreError, match="writer process"):
            await store.commit(group("lost"))
        await store.commit(group("third"))  # the connection's thread commits from now on
        await store.commit(group("fourth"))
        assert store._writer is None
        jobs = await store.jobs("r1")
    assert [j.key for j in jobs[-600:-300]] == [f"third-{i}" for i in range(300)]
    assert not any(j.key.startswith("lost") for j in jobs)
    assert [j.seq for j in jobs] == list(range(1, 1201))


async def test_a_group_the_writer_cannot_take_goes_through_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await SQLiteStore.open(tmp_path / "s.db") as store:
        await started(store)

        def refuse(writes: object, level: str) -> bytes:
            raise ValueError("unmarshallable object")

        monkeypatch.setattr(_sqlite.WriterProcess, "encode", staticmethod(refuse))
        await store.commit(group("third"))
        assert len(await store.jobs("r1")) == 900


@pytest.mark.parametrize("where", ["ASYNCBATCH_SQLITE_WRITER=thread", "one CPU", ":memory:"])
async def test_no_writer_process_where_it_cannot_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path: Path | str = tmp_path / "s.db"
    if where == "one CPU":
        # The process could not run beside the loop: it would only add its messages.
        from asyncbatch._store import _sqlite_writer

        monkeypatch.setattr(_sqlite_writer, "_cpus", lambda: 1)
    elif where == ":memory:":
        path = where
    else:
        monkeypatch.setenv("ASYNCBATCH_SQLITE_WRITER", "thread")
    async with await SQLiteStore.open(path) as store:
        await store.begin_run(RunInfo(run_id="r1", job="t"))
        await store.commit(group("first"))
        await store.commit(group("second"))
        assert store._writer is None
        assert len(await store.jobs("r1")) == 600


_PARENT = """
import asyncio, sys
from asyncbatch._store import JobRecord, RunInfo, SQLiteStore
from asyncbatch import JobStatus

async def main():
    store = await SQLiteStore.open(sys.argv[1])
    await store.begin_run(RunInfo(run_id="r1", job="t"))
    for g in range(2):
        await store.commit([JobRecord(run_id="r1", key=f"{g}-{i}", status=JobStatus.SUCCEEDED)
                            for i in range(300)])
    print(store._writer._proc.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_writer_dies_with_its_process(tmp_path: Path) -> None:
    # kill -9 of the run must not leave a writer that could still commit.
    db = tmp_path / "s.db"
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        writer = int(line)
        assert not gone(writer)
        parent.kill()
        parent.wait()
        assert wait_until(lambda: gone(writer))
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()

    async def committed() -> int:
        async with open_store(db) as store:
            return len(await store.jobs("r1"))

    assert asyncio.run(committed()) == 600
