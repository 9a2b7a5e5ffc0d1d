"""Crash safety end to end: SIGKILL a checkpointed run at a random point, resume it.

Run against SQLite (its commits on the connection's thread, or in its writer
process) and PostgreSQL (the committed rows are read beside the writer:
SQLite in WAL mode, PostgreSQL on a connection of the test's own).

The promise under test (DESIGN, Persistence): at-least-once execution, and
nothing acknowledged is lost. A job is acknowledged once its checkpoint is
committed, so after a kill and a resume with the same run id:

- every job ends SUCCEEDED or DEAD_LETTERED, exactly as a clean run would;
- no job committed before the kill runs again;
- the jobs that do run twice are only those that had finished but were not yet
  committed: at most the attempts in flight plus the group-commit window.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

N = 3000
CONCURRENCY = 8
SCRIPT = Path(__file__).with_name("crash_job.py")


class _SQLite:
    def __init__(self, db: Path) -> None:
        self.db = db
        self.url = str(db)

    def committed(self) -> list[tuple[str, str, float]]:
        """(key, status, commit time) of every committed job, read beside the writer (WAL)."""
        if not self.db.exists():
            return []
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1.0)
        try:
            return con.execute(_COMMITTED).fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []
        finally:
            con.close()

    def settled(self) -> list[tuple[str, str, float]]:
        """What is committed once the killed writer is gone (SQLite: at once)."""
        return self.committed()

    def close(self) -> None:
        pass


class _SQLiteWriter(_SQLite):
    """SQLite with every group the writer process can take committed there."""

    env: ClassVar[dict[str, str]] = {"CRASH_WRITER_ROWS": "1"}

    def settled(self) -> list[tuple[str, str, float]]:
        """What is committed once the killed run's writer process is gone.

        It checks for its parent before every COMMIT, so at most the COMMIT
        under way when the run was killed still lands, a moment later.
        """
        deadline = time.monotonic() + 10
        while _writers_of(self.db) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _writers_of(self.db), "the killed run's writer process lives on"
        return self.committed()


def _writers_of(db: Path) -> list[int]:
    """Live writer processes of the SQLite file ``db`` (Linux: read from /proc)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(a.endswith(b"_sqlite_writer_main.py") for a in cmdline) and (
            os.fsencode(str(db)) in cmdline
        ):
            pids.append(int(pid))
    return pids


class _Postgres:
    def __init__(self, url: str) -> None:
        import asyncpg

        self.url = url
        server, _, schema = url.partition("?schema=")
        self._missing = asyncpg.UndefinedTableError
        self._loop = asyncio.new_event_loop()
        self._conn = self._loop.run_until_complete(
            asyncpg.connect(server, server_settings={"search_path": schema})
        )

    def committed(self) -> list[tuple[str, str, float]]:
        try:
            rows = self._loop.run_until_complete(self._conn.fetch(_COMMITTED))
        except self._missing:  # tables not created yet
            return []
        return [tuple(r) for r in rows]

    def settled(self) -> list[tuple[str, str, float]]:
        """What is committed once the killed process's server backends are done.

        A COMMIT the client sent just before its SIGKILL still completes on
        the server a moment later: wait until no other backend of this
        database is busy, so "acknowledged" means every commit that landed.
        """
        busy = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state NOT IN ('idle')"
        )
        deadline = time.monotonic() + 5
        while self._loop.run_until_complete(self._conn.fetchval(busy)) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)
        return self.committed()

    def close(self) -> None:
        self._loop.run_until_complete(self._conn.close())
        self._loop.close()


_COMMITTED = "SELECT key, status, updated_at FROM jobs WHERE run_id = 'crash'"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "sqlite-writer",
            marks=pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
        ),
        "postgresql",
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[_SQLite | _Postgres]:
    if request.param == "sqlite":
        store: _SQLite | _Postgres = _SQLite(tmp_path / "crash.db")
    elif request.param == "sqlite-writer":
        store = _SQLiteWriter(tmp_path / "crash.db")
    else:
        store = _Postgres(request.getfixturevalue("pg_url"))
    try:
        yield store
    finally:
        store.close()


def _executions(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


@pytest.mark.slow
def test_sigkill_then_resume_loses_nothing_and_repeats_only_the_unacknowledged(
    tmp_path: Path, backend: _SQLite | _Postgres
) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    kill_after = random.Random(seed).randint(200, 2000)
    log = tmp_path / "ran.log"
    argv = [sys.executable, str(SCRIPT), backend.url, str(log), str(N), str(CONCURRENCY)]
    note = f"(seed {seed}, kill after {kill_after} commits)"

    env = {**os.environ, **getattr(backend, "env", {})}
    proc = subprocess.Popen(
        argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    deadline = time.monotonic() + 30
    try:
        while len(backend.committed()) < kill_after:
            if proc.poll() is not None:
                pytest.fail(f"the run ended before the kill {note}: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"the run made no progress {note}"
            time.sleep(0.005)
        if isinstance(backend, _SQLiteWriter):
            assert _writers_of(backend.db), "the run commits through its writer process"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL

    before_kill = backend.settled()  # what the killed run got acknowledged
    acked = {key for key, _, _ in before_kill}
    ran_before = _executions(log)
    assert kill_after <= len(acked) < N, f"kill point missed {note}"
    assert acked <= set(ran_before), "a job was committed that never ran"

    resumed = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env
    )
    assert resumed.returncode == 0, resumed.stderr
    counts = json.loads(resumed.stdout.splitlines()[-1])

    # Every job ends succeeded or dead-lettered, exactly as without the crash.
    final = {key: status for key, status, _ in backend.committed()}
    assert set(final) == {str(i) for i in range(N)}
    dead = {str(i) for i in range(N) if i % 97 == 0}
    assert {k for k, s in final.items() if s == "dead_lettered"} == dead
    assert {k for k, s in final.items() if s != "dead_lettered"} == set(final) - dead
    assert all(s in ("succeeded", "dead_lettered") for s in final.values())
    assert counts["skipped"] == len(acked)
    assert counts["succeeded"] + counts["dead_lettered"] == N - len(acked)

    # No acknowledged job ran again; the resume ran exactly the others, once each.
    ran_after = _executions(log)[len(ran_before) :]
    assert not acked & set(ran_after), f"acknowledged jobs ran again {note}"
    assert Counter(ran_after) == Counter({str(i) for i in range(N)} - acked)

    # Jobs that ran twice had finished but were not committed at the kill: at
    # most those in flight plus the commit group being written, the one sent
    # behind it (SQLite's writer process takes two; PostgreSQL one at a time)
    # and the one accumulating (group sizes read from the commit timestamps).
    twice = set(ran_before) & set(ran_after)
    assert twice == set(ran_before) - acked
    largest_group = max(Counter(t for _, _, t in before_kill).values())
    groups = 2 if isinstance(backend, _Postgres) else 3
    assert len(twice) <= CONCURRENCY + groups * largest_group, note
