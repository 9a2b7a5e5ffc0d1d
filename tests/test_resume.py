"""Checkpointed runs: ack after commit, resume, interruption, redrive, odd payloads."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import anyio
import pytest
from stores import RUN_PATHS, store_url

import asyncbatch as ab

FAST = ab.Retry(attempts=2, backoff=ab.Backoff.constant(0))


@pytest.fixture(params=RUN_PATHS)
async def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    async with ab.open_store(store_url(request, tmp_path, request.param)) as s:
        yield s


async def test_resume_skips_finished_jobs_and_returns_stored_results(store: ab.Store) -> None:
    calls = Counter[int]()

    async def job(x: int) -> dict[str, int]:
        calls[x] += 1
        if x == 3:
            raise ab.PermanentError("poison")
        return {"double": x * 2}

    first = await ab.run_batch(job, range(5), store=store, run_id="r")
    assert first.counts[ab.JobStatus.SUCCEEDED] == 4
    second = await ab.run_batch(job, range(7), store=store, run_id="r")
    assert calls == Counter({0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1})
    assert second.counts[ab.JobStatus.SKIPPED] == 5
    assert second.counts[ab.JobStatus.SUCCEEDED] == 2
    assert second["1"].status is ab.JobStatus.SKIPPED
    assert second["1"].result == {"double": 2}
    assert second.ok is True  # skipped counts as ok; the dead one was skipped too

    third = await ab.run_batch(job, range(7), store=store, run_id="r", retry_dead=True)
    assert calls[3] == 2
    assert third["3"].status is ab.JobStatus.DEAD_LETTERED


async def test_outcomes_are_acknowledged_only_after_commit(store: ab.Store) -> None:
    committed_when_seen: list[bool] = []

    async def job(x: int) -> int:
        return x

    batch = ab.Batch(job, store=store, run_id="ack", concurrency=4)
    async with batch.stream(range(50)) as outcomes:
        async for outcome in outcomes:
            done = await store.finished_jobs("ack")
            committed_when_seen.append(outcome.key in done)
    assert committed_when_seen == [True] * 50


async def test_cancelling_a_run_commits_what_finished_and_leaves_it_resumable(
    store: ab.Store,
) -> None:
    ran = Counter[int]()
    acked: set[str] = set()

    async def job(x: int) -> int:
        ran[x] += 1
        await asyncio.sleep(0.001)
        return x

    batch = ab.Batch(job, store=store, run_id="int", concurrency=8)
    with anyio.move_on_after(10) as scope:
        async with batch.stream(range(2000)) as outcomes:
            async for outcome in outcomes:
                acked.add(outcome.key)
                if len(acked) == 300:
                    scope.cancel()
    assert scope.cancelled_caught
    run = await store.get_run("int")
    assert run.status == "interrupted"
    stored = await store.finished_jobs("int")
    assert acked <= set(stored)  # nothing acknowledged is lost

    result = await batch.run(range(2000))
    assert result.counts[ab.JobStatus.SKIPPED] == len(stored)
    assert result.counts[ab.JobStatus.SUCCEEDED] == 2000 - len(stored)
    # Only what was in flight at the cancel ran twice.
    assert sum(1 for n in ran.values() if n > 1) <= 8


async def test_dead_letters_keep_payload_error_and_history(store: ab.Store) -> None:
    async def job(item: dict[str, str]) -> None:
        raise ab.TransientError(f"upstream 503 for {item['id']}")

    await ab.run_batch(
        job, [{"id": "a"}], key=lambda it: it["id"], store=store, run_id="dlq", retry=FAST
    )
    [dead] = await store.dlq.list(run_id="dlq")
    assert dead.key == "a"
    assert dead.payload == {"id": "a"}
    assert dead.kind is ab.ErrorKind.TRANSIENT
    assert dead.error_type == "asyncbatch._errors.TransientError"
    assert "upstream 503 for a" in dead.traceback
    assert [a.number for a in dead.attempts] == [1, 2]
    assert dead.status == "dead"


async def test_unserialisable_payload_is_dead_lettered_with_its_repr(store: ab.Store) -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<Thing 7>"

    async def job(item: Thing) -> None:
        raise ValueError("cannot handle")

    with pytest.warns(RuntimeWarning, match="not JSON-serialisable"):
        result = await ab.run_batch(job, [Thing()], store=store, run_id="odd")
    assert result.outcomes[0].status is ab.JobStatus.DEAD_LETTERED
    [dead] = await store.dlq.list(run_id="odd")
    assert dead.payload == "<Thing 7>"
    assert dead.payload_is_repr


async def test_redrive_resolves_what_now_succeeds_and_keeps_history(store: ab.Store) -> None:
    fixed = False

    async def job(x: int) -> int:
        if x % 2 and not fixed:
            raise ab.PermanentError(f"odd {x}")
        return x

    await ab.run_batch(job, range(6), store=store, run_id="rd")
    assert len(await store.dlq.list(run_id="rd")) == 3
    fixed = True
    result = await ab.redrive(job, store=store, run_id="rd")
    assert sorted(o.key for o in result.outcomes) == ["1", "3", "5"]
    assert result.ok
    assert await store.dlq.list(run_id="rd") == []
    resolved = await store.dlq.list(run_id="rd", status="resolved")
    assert {d.key for d in resolved} == {"1", "3", "5"}
    assert all(d.redrive_count == 1 for d in resolved)
    run = await store.get_run("rd")
    assert run.counts["succeeded"] == 6


async def test_redrive_that_fails_again_appends_history(store: ab.Store) -> None:
    async def job(x: int) -> int:
        raise ab.PermanentError(f"still bad {ab.current_job().attempt}")

    await ab.run_batch(job, [1], store=store, run_id="again")
    await ab.redrive(job, store=store, run_id="again")
    [dead] = await store.dlq.list(run_id="again")
    assert dead.redrive_count == 1
    assert len(dead.attempts) == 2


async def test_redrive_of_an_unknown_run_is_a_clear_error(store: ab.Store) -> None:
    async def job(x: int) -> int:
        return x

    with pytest.raises(ab.UnknownRun):
        await ab.redrive(job, store=store, run_id="missing")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_full_durability_runs(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    async def job(x: int) -> int:
        return x

    url = str(tmp_path / "full.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    result = await ab.run_batch(job, range(100), store=url, run_id="f", durability="full")
    assert result.counts[ab.JobStatus.SUCCEEDED] == 100


async def test_a_resumed_run_records_the_counts_of_the_whole_run(store: ab.Store) -> None:
    async def job(x: int) -> int:
        if x == 0:
            raise ab.PermanentError("poison")
        return x

    await ab.run_batch(job, range(5), store=store, run_id="whole")
    await ab.run_batch(job, range(8), store=store, run_id="whole")
    run = await store.get_run("whole")
    assert run.counts["succeeded"] == 7
    assert run.counts["dead_lettered"] == 1
    assert run.counts["skipped"] == 0
