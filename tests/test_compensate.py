"""Saga rollback: compensation on abort, reverse completion order, retries, failures."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import asyncbatch as ab


async def test_abort_undoes_succeeded_jobs_newest_first() -> None:
    undone: list[int] = []

    async def job(x: int) -> int:
        await asyncio.sleep(x / 1000)
        if x == 5:
            raise ab.FatalError("downstream corrupted")
        return x * 10

    async def undo(item: int, result: int) -> None:
        assert result == item * 10
        undone.append(item)

    with pytest.raises(ab.BatchAborted) as info:
        await ab.run_batch(job, range(8), concurrency=1, compensate=undo)
    assert undone == [4, 3, 2, 1, 0]
    partial = info.value.result
    assert [o.status for o in partial.outcomes[:5]] == [ab.JobStatus.COMPENSATED] * 5
    assert partial.outcomes[5].status is ab.JobStatus.FAILED
    assert partial.counts[ab.JobStatus.COMPENSATED] == 5
    assert partial.counts[ab.JobStatus.SUCCEEDED] == 0
    assert len(partial.outcomes) == 6


async def test_a_compensation_is_retried_and_a_lasting_failure_is_reported() -> None:
    calls: dict[int, int] = {}

    async def job(x: int) -> int:
        if x == 3:
            raise ab.FatalError("stop")
        return x

    async def undo(item: int, result: int) -> None:
        calls[item] = calls.get(item, 0) + 1
        if item == 1 and calls[item] < 2:
            raise ConnectionError("undo blip")
        if item == 2:
            raise RuntimeError("cannot undo 2")

    with pytest.raises(ab.BatchAborted) as info:
        await ab.run_batch(
            job,
            range(5),
            concurrency=1,
            compensate=undo,
            compensate_retry=ab.Retry(attempts=3, backoff=ab.Backoff.constant(0)),
        )
    partial = info.value.result
    assert calls == {0: 1, 1: 2, 2: 3}
    assert partial["1"].status is ab.JobStatus.COMPENSATED
    assert partial["2"].status is ab.JobStatus.SUCCEEDED  # undo failed for good
    assert partial.counts[ab.JobStatus.COMPENSATED] == 2
    assert partial.report.compensation is not None
    assert partial.report.compensation["failed"] == 1
    assert "cannot undo 2" in partial.report.compensation["failures"]["2"]


async def test_no_compensation_when_the_batch_succeeds() -> None:
    undone: list[int] = []

    async def undo(item: int, result: int) -> None:
        undone.append(item)

    async def job(x: int) -> int:
        return x

    result = await ab.run_batch(job, range(3), compensate=undo)
    assert result.ok
    assert undone == []


def _lines(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_crash_during_rollback_resumes_the_rollback_not_the_batch(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    db = str(tmp_path / "rb.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    script = Path(__file__).with_name("rollback_job.py")
    proc = subprocess.Popen([sys.executable, str(script), db, str(tmp_path)])
    deadline = time.monotonic() + 30
    while len(_lines(tmp_path / "undone.log")) < 30:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "rollback never started"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ran_before = _lines(tmp_path / "ran.log")
    undone_before = _lines(tmp_path / "undone.log")
    assert 30 <= len(undone_before) < 120

    again = subprocess.run(
        [sys.executable, str(script), db, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert "rollback resumed" in again.stdout
    assert _lines(tmp_path / "ran.log") == ran_before, "the batch itself must not run again"
    undone = _lines(tmp_path / "undone.log")
    # Every succeeded job (0..119) undone, newest first; at most the one in
    # flight at the kill runs twice (undo must be idempotent).
    assert set(undone) == set(range(120))
    assert len(undone) - 120 <= 1
    deduped = list(dict.fromkeys(undone))
    assert deduped == sorted(deduped, reverse=True)

    async def check() -> None:
        async with ab.open_store(db) as store:
            jobs = await store.finished_jobs("rb")
            run = await store.get_run("rb")
        assert {k for k, j in jobs.items() if j.status is ab.JobStatus.COMPENSATED} == {
            str(i) for i in range(120)
        }
        assert run.status == "aborted"

    asyncio.run(check())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_rollback_on_request_undoes_a_finished_run(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    db = str(tmp_path / "r.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    undone: list[int] = []

    async def job(x: int) -> int:
        return x + 100

    async def undo(item: int, result: int) -> None:
        assert result == item + 100
        undone.append(item)

    result = await ab.run_batch(job, range(5), concurrency=1, store=db, run_id="r", compensate=undo)
    assert result.ok
    rolled = await ab.rollback(undo, store=db, run_id="r")
    assert undone == [4, 3, 2, 1, 0]
    assert rolled.counts[ab.JobStatus.COMPENSATED] == 5
    async with ab.open_store(db) as store:
        assert (await store.get_run("r")).status == "aborted"


async def test_rollback_of_an_unknown_run_is_a_clear_error(tmp_path: Path) -> None:
    async def undo(item: int, result: int) -> None:
        pass

    with pytest.raises(ab.UnknownRun, match="nope"):
        await ab.rollback(undo, store=str(tmp_path / "x.db"), run_id="nope")
