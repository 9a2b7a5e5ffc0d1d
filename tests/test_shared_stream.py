"""Streaming a shared run: every worker's outcomes, from the store, in completion order.

Real worker processes (``asyncbatch worker``, as in tests/test_shared.py)
work the run with the in-process coordinator; the stream must yield every
key exactly once, in the order of the stored ``seq``, each outcome equal to
its stored row, and end (or raise, for an abort) when the run does.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pytest
from test_shared import HERE, LEASE, db_rows, finish, ledger_lines, worker

import asyncbatch as ab
from asyncbatch._run import _shared_stream

pytestmark = pytest.mark.timeout(120)


def _job_module(monkeypatch: pytest.MonkeyPatch, ledger: Path, **env: str) -> Any:
    monkeypatch.setenv("SHARED_LEDGER", str(ledger))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(HERE))
    import shared_job

    return shared_job


async def _stored(url: str, run_id: str) -> list[Any]:
    return await db_rows(
        url, "SELECT key, status, attempts, idx, result FROM jobs WHERE run_id = $1 ORDER BY seq",
        run_id,
    )  # fmt: skip


async def test_a_stream_of_a_shared_run_yields_every_workers_jobs_once_in_seq_order(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tmp_path / "ledger"
    env = {"SHARED_FAIL_EVERY": "97", "SHARED_SLEEP": "0.02"}
    shared_job = _job_module(monkeypatch, ledger, **env)
    monkeypatch.setattr(_shared_stream, "PAGE", 64)  # many pages; memory is one page
    workers = [worker(pg_url, "st", ledger, **env) for _ in range(2)]
    n = 3000
    batch = ab.Batch(
        shared_job.job, store=pg_url, run_id="st", concurrency=20,
        shared=ab.SharedRun(chunk_size=50, lease=LEASE),
    )  # fmt: skip
    seen: list[ab.JobOutcome[Any]] = []
    async with batch.stream(range(n)) as outcomes:
        async for outcome in outcomes:
            seen.append(outcome)
            assert len(outcomes._tail._buffer) < 64  # type: ignore[union-attr]
    for w in workers:
        finish(w)
    keys = collections.Counter(o.key for o in seen)
    assert set(keys) == {str(i) for i in range(n)}, "every key is streamed"
    assert max(keys.values()) == 1, "exactly once"
    stored = await _stored(pg_url, "st")
    assert [o.key for o in seen] == [r["key"] for r in stored], "in completion order"
    for o, r in zip(seen, stored, strict=True):
        assert (o.status.value, o.attempts, o.index) == (r["status"], r["attempts"], r["idx"])
    ok = [o for o in seen if o.status is ab.JobStatus.SUCCEEDED]
    assert all(o.result == {"v": 2 * int(o.key), "pid": o.result["pid"]} for o in ok)
    dead = [o for o in seen if o.status is ab.JobStatus.DEAD_LETTERED]
    assert {int(o.key) for o in dead} == set(range(0, n, 97))
    assert all(o.kind is ab.ErrorKind.PERMANENT for o in dead)
    assert len({o.result["pid"] for o in ok}) == 3, "the coordinator's and both workers' jobs"
    result = outcomes.result
    assert result is not None
    assert result.outcomes == []
    assert result.counts[ab.JobStatus.SUCCEEDED] == len(ok)


async def test_a_stream_of_an_aborted_shared_run_yields_its_jobs_then_raises(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = tmp_path / "ledger"
    env = {"SHARED_FAIL_FROM": "600", "SHARED_SLEEP": "0.002"}
    shared_job = _job_module(monkeypatch, ledger, **env)
    workers = [worker(pg_url, "sta", ledger, **env)]
    batch = ab.Batch(
        shared_job.job, store=pg_url, run_id="sta", concurrency=20,
        budget=ab.ErrorBudget(max_failures=5),
        shared=ab.SharedRun(chunk_size=50, lease=LEASE),
    )  # fmt: skip
    seen: list[ab.JobOutcome[Any]] = []

    async def read() -> None:
        async with batch.stream(range(5000)) as outcomes:
            async for outcome in outcomes:
                seen.append(outcome)

    with pytest.raises(ab.BatchAborted) as info:
        await read()
    for w in workers:
        finish(w)
    assert "exceed max_failures=5" in str(info.value)  # decided here or by the worker
    stored = await _stored(pg_url, "sta")
    assert [o.key for o in seen] == [r["key"] for r in stored], "every stored job, once"
    assert any(o.status is ab.JobStatus.DEAD_LETTERED for o in seen)
    starts = {k for kind, k, _, _ in ledger_lines(ledger) if kind == "done"}
    assert {int(o.key) for o in seen if o.status is ab.JobStatus.SUCCEEDED} == starts


async def test_a_resumed_shared_run_streams_the_earlier_jobs_skipped(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared_job = _job_module(monkeypatch, tmp_path / "ledger")
    spec = ab.SharedRun(chunk_size=10, lease=LEASE)
    await ab.run_batch(shared_job.job, range(30), store=pg_url, run_id="str", shared=spec)
    batch = ab.Batch(shared_job.job, store=pg_url, run_id="str", shared=spec)
    async with batch.stream(range(50)) as outcomes:
        seen = [o async for o in outcomes]
    assert sorted(int(o.key) for o in seen) == list(range(50))
    skipped = {int(o.key) for o in seen if o.status is ab.JobStatus.SKIPPED}
    assert skipped == set(range(30))
    assert all(o.result == {"v": 2 * int(o.key), "pid": o.result["pid"]} for o in seen)


async def _kind(item: Any) -> str:
    return f"{type(item).__name__}:{item!r}"


async def test_a_shared_run_hands_every_job_exactly_its_item(pg_url: str) -> None:
    # The items reach the jobs through the database: JSON where it changes nothing,
    # pickled where it would (a tuple, int dict keys, a set).
    items: list[Any] = [7, "s", {"a": [1]}, (1, 2), {1: "x"}, {3}, [(4, 5)]]
    result = await ab.run_batch(_kind, items, store=pg_url, run_id="exact", shared=True)
    assert [o.result for o in result.outcomes] == [_kind_now(i) for i in items]

    class Local:
        pass

    with pytest.raises(TypeError, match="neither JSON nor pickled"):
        await ab.run_batch(_kind, [Local()], store=pg_url, run_id="local", shared=True)


def _kind_now(item: Any) -> str:
    return f"{type(item).__name__}:{item!r}"
