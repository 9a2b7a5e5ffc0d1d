"""A run's stored state never lies: every behaviour that touches persistence, on every store.

The feature x store matrix: budget aborts, FATAL aborts, compensation,
rollback, resume (identity, compensated jobs), reports, failing commits and
cancelled streams, each run against the in-memory store, SQLite and
PostgreSQL (the ``store`` fixture). After each scenario the
invariants are checked against the store itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from stores import RUN_PATHS, store_url

import asyncbatch as ab
from asyncbatch._store import JobRecord


@pytest.fixture(params=RUN_PATHS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ab.Store]:
    async with ab.open_store(store_url(request, tmp_path, request.param)) as st:
        yield st


async def invariants(store: ab.Store, run_id: str) -> dict[str, int]:
    """Stored counts equal stored rows; every key has one row; the DLQ is exactly the dead."""
    run = await store.get_run(run_id)
    jobs = await store.jobs(run_id)
    keys = [j.key for j in jobs]
    assert len(keys) == len(set(keys)), "a key has two terminal rows"
    rows = await store.count_jobs(run_id)
    for status in ("succeeded", "dead_lettered", "compensated"):
        assert run.counts.get(status, 0) == rows[status], (status, run.counts, rows)
    dead = {d.key for d in await store.dlq.list(run_id=run_id)}
    assert dead == {j.key for j in jobs if j.status is ab.JobStatus.DEAD_LETTERED}
    return rows


# ----------------------------------------------------------------- budgets


async def test_budget_abort_stops_promptly_rolls_back_and_marks_the_run_aborted(
    store: ab.Store,
) -> None:
    started: list[int] = []
    undone: list[int] = []

    async def charge(i: int) -> int:
        started.append(i)
        await asyncio.sleep(0.001)
        if i % 10 == 3:
            raise ab.PermanentError(f"card {i} declined")
        return i

    async def undo(item: int, result: int) -> None:
        undone.append(item)

    with pytest.raises(ab.BatchAborted) as caught:
        await ab.run_batch(
            charge,
            range(2000),
            concurrency=20,
            store=store,
            run_id="charges",
            budget=ab.ErrorBudget(max_failure_rate=0.05, min_jobs=100),
            compensate=undo,
        )
    assert isinstance(caught.value.cause, ab.BudgetExceeded)
    # Judged as jobs finish, not after their commit: the feed stops near min_jobs.
    assert len(started) <= 100 + 2 * 20, len(started)
    succeeded = {
        o.key for o in caught.value.result.outcomes if o.status is ab.JobStatus.COMPENSATED
    }
    assert sorted(undone) == sorted(int(k) for k in succeeded)
    assert len(undone) == len([i for i in started if i % 10 != 3 and i in set(undone)])
    run = await store.get_run("charges")
    assert run.status == "aborted"
    rows = await invariants(store, "charges")
    assert rows["succeeded"] == 0  # every charge that went through was refunded
    assert rows["compensated"] == len(undone)


async def test_budget_abort_with_fewer_items_than_the_backlog_still_rolls_back(
    store: ab.Store,
) -> None:
    undone: list[int] = []

    async def charge(i: int) -> int:
        if i % 10 == 0:
            raise ab.PermanentError("declined")
        return i

    async def undo(item: int, result: int) -> None:
        undone.append(item)

    with pytest.raises(ab.BatchAborted):
        await ab.run_batch(
            charge,
            range(1000),
            store=store,
            run_id="small",
            budget=ab.ErrorBudget(max_failure_rate=0.05, min_jobs=100),
            compensate=undo,
        )
    assert undone, "the compensation never ran"
    assert (await store.get_run("small")).status == "aborted"
    assert (await invariants(store, "small"))["succeeded"] == 0


async def test_fatal_error_aborts_and_compensates_on_every_store(store: ab.Store) -> None:
    undone: list[int] = []

    async def job(i: int) -> int:
        if i == 30:
            raise ab.FatalError("credentials revoked")
        await asyncio.sleep(0)
        return i

    async def undo(item: int, result: int) -> None:
        undone.append(item)

    with pytest.raises(ab.BatchAborted) as caught:
        await ab.run_batch(job, range(200), concurrency=4, store=store, run_id="f", compensate=undo)
    assert isinstance(caught.value.cause, ab.FatalError)
    assert (await store.get_run("f")).status == "aborted"
    rows = await invariants(store, "f")
    assert rows["compensated"] == len(undone)
    assert rows["succeeded"] == 0


async def test_a_slow_commit_holds_new_items_back_and_loses_nothing(
    store: ab.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a commit hangs, no more jobs start than the group in it, the backlog cap and
    the jobs in flight; once it lands, every job is committed exactly once."""
    from asyncbatch._run._checkpoint import Checkpointer
    from asyncbatch._run._engine import backlog_cap

    concurrency = 10
    cap = backlog_cap(store, concurrency)
    n = 3 * cap + 100
    started = 0
    gate, reached = asyncio.Event(), asyncio.Event()
    first: list[int] = []
    init = Checkpointer.__init__

    def slowed(self: Checkpointer, *args: Any, **kw: Any) -> None:
        init(self, *args, **kw)
        commit, send = self._commit, self._send

        async def hung(records: Sequence[Any]) -> None:
            if not first:
                # Taken: this group, and with `send` (two in flight) the half behind it.
                first.append(len(records) * (1 if send is None else 2) + 1)
                reached.set()
            await gate.wait()

        async def slow_commit(records: Sequence[Any], **kw: Any) -> None:
            await hung(records)
            await commit(records, **kw)

        async def slow_send(records: Sequence[Any], **kw: Any) -> asyncio.Future[None]:
            assert send is not None
            await hung(records)
            return await send(records, **kw)

        self._commit, self._send = slow_commit, slow_send if send is not None else None

    # The checkpoint writer every run path commits through (a shared run's store
    # is the session's fenced one).
    monkeypatch.setattr(Checkpointer, "__init__", slowed)

    async def job(i: int) -> int:
        nonlocal started
        started += 1
        return i

    run = asyncio.create_task(
        ab.run_batch(job, range(n), concurrency=concurrency, store=store, run_id="slow")
    )
    with anyio.fail_after(30):
        await reached.wait()  # the run opens (a driver's thread), then its first group commits
        before, still = -1, 0
        while still < 5:  # until admission holds: nothing starts for 5 ms
            still = still + 1 if started == before else 0
            before = started
            await asyncio.sleep(0.001)
    # (A shared run holds sooner still: it starts only the chunks it has claimed.)
    assert started <= first[0] + cap + concurrency < n, (first, started)
    gate.set()
    result = await run
    assert result.counts[ab.JobStatus.SUCCEEDED] == n
    assert started == n
    rows = await invariants(store, "slow")
    assert rows["succeeded"] == n
    assert sorted(j.seq for j in await store.jobs("slow")) == list(range(1, n + 1))


# ------------------------------------------------------------------ resume


async def double(item: dict[str, Any]) -> int:
    return int(item["n"]) * 2


async def triple(item: dict[str, Any]) -> int:
    return int(item["n"]) * 3


def by_id(item: dict[str, Any]) -> str:
    return str(item["id"])


ITEMS = [{"id": f"x{i}", "n": i} for i in range(20)]


async def test_resume_with_other_keys_is_refused_naming_both(store: ab.Store) -> None:
    await ab.run_batch(double, ITEMS, key=by_id, store=store, run_id="keys")
    with pytest.raises(ab.ConfigError, match=r"key .*by_id.*position") as caught:
        await ab.run_batch(double, ITEMS, store=store, run_id="keys")
    assert "force_resume=True" in str(caught.value)
    # Nothing re-ran or merged: the run still holds its 20 jobs, once each.
    assert (await invariants(store, "keys"))["succeeded"] == 20
    again = await ab.run_batch(double, ITEMS, key=by_id, store=store, run_id="keys")
    assert again.counts[ab.JobStatus.SKIPPED] == 20


async def test_resume_with_another_job_is_refused_unless_forced(store: ab.Store) -> None:
    await ab.run_batch(double, ITEMS, key=by_id, store=store, run_id="jobs")
    with pytest.raises(ab.ConfigError, match=r"job .*double.*triple"):
        await ab.run_batch(triple, ITEMS, key=by_id, store=store, run_id="jobs")
    forced = await ab.run_batch(
        triple, ITEMS, key=by_id, store=store, run_id="jobs", force_resume=True
    )
    assert forced.counts[ab.JobStatus.SKIPPED] == 20


async def test_a_rolled_back_run_resumes_by_running_the_undone_jobs_again(
    store: ab.Store,
) -> None:
    calls: list[int] = []
    fail = True

    async def job(i: int) -> int:
        calls.append(i)
        if fail and i == 7:
            raise ab.FatalError("stop")
        return i

    async def undo(item: int, result: int) -> None:
        pass

    with pytest.raises(ab.BatchAborted):
        await ab.run_batch(job, range(10), concurrency=1, store=store, run_id="rb", compensate=undo)
    undone = (await store.count_jobs("rb"))["compensated"]
    assert undone == 7
    fail = False
    calls.clear()
    result = await ab.run_batch(
        job, range(10), concurrency=1, store=store, run_id="rb", compensate=undo
    )
    assert result.ok
    assert result.counts[ab.JobStatus.SKIPPED] == 0  # nothing reported as done over undone work
    assert sorted(calls) == list(range(10))
    assert (await invariants(store, "rb"))["succeeded"] == 10


async def test_rollback_of_a_run_made_without_compensate_is_refused(store: ab.Store) -> None:
    async def job(i: int) -> int:
        return i

    async def undo(item: int, result: int) -> None:
        raise AssertionError("must not be called")

    await ab.run_batch(job, range(5), store=store, run_id="plain")
    with pytest.raises(ab.ConfigError, match="without compensate="):
        await ab.rollback(undo, store=store, run_id="plain")
    assert (await invariants(store, "plain"))["succeeded"] == 5


async def test_resuming_an_interrupted_rollback_without_compensate_is_refused(
    store: ab.Store,
) -> None:
    async def job(i: int) -> int:
        return i

    await ab.run_batch(job, range(5), store=store, run_id="half", compensate=_noop_undo)
    counts = await store.count_jobs("half")
    await store.end_run("half", "compensating", counts, {"aborted": "FatalError: x"})
    with pytest.raises(ab.ConfigError, match="rolling back"):
        await ab.run_batch(job, range(5), store=store, run_id="half")
    assert (await store.get_run("half")).status == "compensating"  # not abandoned


async def _noop_undo(item: Any, result: Any) -> None:
    return None


async def test_the_stored_report_is_the_whole_runs_after_resume_and_redrive(
    store: ab.Store,
) -> None:
    async def job(i: int) -> int:
        if i in (3, 4):
            raise ab.PermanentError(f"item {i} is malformed")
        return i

    await ab.run_batch(job, range(10), store=store, run_id="rep")
    await ab.run_batch(job, range(10), store=store, run_id="rep")  # all skipped

    async def fixed(i: int) -> int:
        return i

    await ab.redrive(
        fixed, store=store, run_id="rep", ids=[d.id for d in await store.dlq.list(run_id="rep")][:1]
    )
    report = ab.ErrorReport.from_dict((await store.get_run("rep")).report or {})
    assert report.counts["succeeded"] == 9
    assert report.counts["dead_lettered"] == 1
    assert report.dead_lettered == 1
    assert sum(g.count for g in report.groups) == 2  # both failed attempts are still there
    await invariants(store, "rep")


# ------------------------------------------------------- failing commits


class _Failing:
    """Wraps a store; its commits fail after ``ok`` successful ones (disk full)."""

    def __init__(self, inner: ab.Store, ok: int) -> None:
        self._inner = inner
        self._ok = ok
        self.url = inner.url
        self.dlq = inner.dlq

    # Every Store method spelt out: Python 3.12+ checks a runtime Protocol statically,
    # so a __getattr__ that forwards would not make this a Store.
    async def begin_run(self, run: Any, **kwargs: Any) -> Any:
        return await self._inner.begin_run(run, **kwargs)

    async def heartbeat(self, run_id: str, owner: str) -> None:
        await self._inner.heartbeat(run_id, owner)

    async def finished_jobs(self, run_id: str) -> Any:
        return await self._inner.finished_jobs(run_id)

    async def lookup(self, run_id: str, keys: Sequence[str]) -> Any:
        return await self._inner.lookup(run_id, keys)

    async def last_seq(self, run_id: str) -> int:
        return await self._inner.last_seq(run_id)

    async def end_run(self, *args: Any, **kwargs: Any) -> None:
        await self._inner.end_run(*args, **kwargs)

    async def get_run(self, run_id: str) -> Any:
        return await self._inner.get_run(run_id)

    async def list_runs(self) -> Any:
        return await self._inner.list_runs()

    async def count_jobs(self, run_id: str) -> dict[str, int]:
        return await self._inner.count_jobs(run_id)

    async def jobs(self, run_id: str) -> Any:
        return await self._inner.jobs(run_id)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def commit(
        self, records: Sequence[JobRecord], *, durability: Literal["normal", "full"] = "normal"
    ) -> None:
        if self._ok <= 0:
            raise ab.StoreError("SQLite store x.db: database or disk is full")
        self._ok -= 1
        await self._inner.commit(records, durability=durability)


async def test_a_failing_commit_fails_the_run_within_a_second_and_keeps_what_was_committed(
    store: ab.Store,
) -> None:
    async def job(i: int) -> int:
        await asyncio.sleep(0.001)
        return i

    failing = _Failing(store, ok=3)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(ab.StoreError, match="disk is full"):
        await ab.run_batch(job, range(5000), concurrency=50, store=failing, run_id="full")  # type: ignore[arg-type]
    assert loop.time() - t0 < 1.0
    committed = (await store.count_jobs("full"))["succeeded"]
    assert committed > 0
    # After space is freed the run resumes and completes, nothing lost or repeated.
    again = await ab.run_batch(job, range(5000), concurrency=50, store=store, run_id="full")
    assert again.counts[ab.JobStatus.SKIPPED] == committed
    assert (await invariants(store, "full"))["succeeded"] == 5000


# ------------------------------------------------------ cancelled streams


async def test_cancelling_a_stream_returns_promptly_and_commits_what_finished(
    store: ab.Store,
) -> None:
    finished: list[int] = []

    async def job(i: int) -> int:
        await asyncio.sleep(0.002)
        finished.append(i)
        return i

    seen: list[ab.JobOutcome[int]] = []

    async def read() -> None:
        batch = ab.Batch(job, concurrency=20, store=store, run_id="cancel")
        async with batch.stream(range(100_000)) as outcomes:
            async for outcome in outcomes:
                seen.append(outcome)

    loop = asyncio.get_running_loop()
    with anyio.move_on_after(0.3):
        await read()
    t_cancel = loop.time()
    await asyncio.sleep(0)
    assert loop.time() - t_cancel < 1.0
    committed = {j.key for j in await store.jobs("cancel")}
    assert {str(i) for i in finished} <= committed, "a finished job was not committed"
    assert {o.key for o in seen} <= committed
    resumed = await ab.run_batch(job, range(200), concurrency=20, store=store, run_id="cancel")
    assert resumed.counts[ab.JobStatus.SKIPPED] == len([k for k in committed if int(k) < 200])


# -------------------------------------------------------------- duplicates


def _key_of(item: dict[str, Any]) -> str:
    return str(item["id"])


async def _echo(item: dict[str, Any]) -> Any:
    return item["n"]


@pytest.mark.parametrize("second", [7, 700])  # in the same lookup chunk, and far apart
async def test_a_duplicate_key_is_refused_naming_the_key_and_both_positions(
    store: ab.Store, second: int
) -> None:
    items = [{"id": f"k{i}", "n": i} for i in range(1000)]
    items[second] = {"id": "k3", "n": -1}
    ran: list[int] = []

    async def job(item: dict[str, Any]) -> Any:
        ran.append(item["n"])
        return item["n"]

    with pytest.raises(ab.DuplicateKey) as caught:
        await ab.run_batch(job, items, key=_key_of, concurrency=4, store=store, run_id="dup")
    assert (caught.value.key, caught.value.first, caught.value.second) == ("k3", 3, second)
    assert "'k3'" in str(caught.value)
    assert "input position 3" in str(caught.value)
    assert -1 not in ran  # the duplicate never ran
    rows = {j.key: j for j in await store.jobs("dup")}
    if "k3" in rows:  # a refused first chunk never ran at all
        assert rows["k3"].result == 3  # nothing merged into the first item's row
    await invariants(store, "dup")


async def test_a_duplicate_key_is_refused_without_a_store_too() -> None:
    items = [{"id": i % 5, "n": i} for i in range(10)]
    with pytest.raises(ab.DuplicateKey, match="'0'"):
        await ab.run_batch(_echo, items, key=_key_of)


async def test_a_resume_never_hands_one_item_another_items_result(store: ab.Store) -> None:
    items = [{"id": f"k{i}", "n": i} for i in range(1200)]
    await ab.run_batch(_echo, items[:100], key=_key_of, store=store, run_id="r")  # stopped early
    items[900] = {"id": "k5", "n": -5}  # its key was finished by the first invocation
    with pytest.raises(ab.DuplicateKey, match="'k5'"):
        await ab.run_batch(_echo, items, key=_key_of, store=store, run_id="r")
    assert {j.key: j.result for j in await store.jobs("r")}["k5"] == 5
    await invariants(store, "r")


async def test_resume_skips_in_bounded_lookups_and_returns_stored_results(store: ab.Store) -> None:
    calls = 0

    async def job(i: int) -> int:
        nonlocal calls
        calls += 1
        return i * i

    n = 3 * 512 + 17  # several lookup chunks and a partial one
    await ab.run_batch(job, range(n), store=store, run_id="big")
    calls = 0
    again = await ab.run_batch(job, range(n + 5), store=store, run_id="big")
    assert calls == 5
    assert again.counts[ab.JobStatus.SKIPPED] == n
    assert [o.result for o in again.outcomes[:3]] == [0, 1, 4]
    assert (await invariants(store, "big"))["succeeded"] == n + 5


# ------------------------------------------------------------ result codecs


async def _as_set(i: int) -> set[int]:
    return {i, i + 1}


async def test_a_result_json_cannot_hold_warns_once_and_is_stored_as_null(store: ab.Store) -> None:
    with pytest.warns(RuntimeWarning, match=r"a set, which JSON cannot hold") as caught:
        result = await ab.run_batch(_as_set, range(5), store=store, run_id="sets")
    assert len([w for w in caught if "JSON cannot hold" in str(w.message)]) == 1
    assert result.outcomes[0].result == {0, 1}  # this invocation still returns it
    again = await ab.run_batch(_as_set, range(5), store=store, run_id="sets")
    assert again.outcomes[0].result is None


async def test_result_codec_pickle_returns_what_the_job_returned_on_resume(store: ab.Store) -> None:
    await ab.run_batch(_as_set, range(5), store=store, run_id="p", result_codec="pickle")
    again = await ab.run_batch(_as_set, range(5), store=store, run_id="p", result_codec="pickle")
    assert again.counts[ab.JobStatus.SKIPPED] == 5
    assert [o.result for o in again.outcomes] == [{i, i + 1} for i in range(5)]


class _Upper:
    name = "upper"

    def encode(self, value: Any) -> Any:
        return value.upper()

    def decode(self, stored: Any) -> Any:
        return stored.lower() + "!"


async def test_a_custom_result_codec_encodes_and_decodes(store: ab.Store) -> None:
    async def job(i: int) -> str:
        return f"v{i}"

    await ab.run_batch(job, range(3), store=store, run_id="c", result_codec=_Upper())
    assert [j.result for j in await store.jobs("c")] == ["V0", "V1", "V2"]
    again = await ab.run_batch(job, range(3), store=store, run_id="c", result_codec=_Upper())
    assert [o.result for o in again.outcomes] == ["v0!", "v1!", "v2!"]


def test_a_bad_result_codec_is_a_config_error() -> None:
    with pytest.raises(ab.ConfigError, match="result_codec"):
        ab.Batch(_as_set, result_codec="yaml")  # type: ignore[arg-type]


async def test_an_aborted_resume_reports_what_its_rollback_undid_and_what_failed(
    store: ab.Store,
) -> None:
    # Found by the property test on the shared path: its result left out the job the
    # rollback compensated (finished by an earlier invocation) and the FATAL one.
    fatal_at: int | None = None

    async def job(i: int) -> int:
        if i == fatal_at:
            raise ab.FatalError("stop")
        if i == 1:
            raise ab.PermanentError("bad")
        return i

    async def undo(item: int, result: int) -> None:
        return None

    once = ab.Retry(attempts=1)
    await ab.run_batch(job, range(2), store=store, run_id="rb", retry=once)
    fatal_at = 1
    with pytest.raises(ab.BatchAborted) as caught:
        await ab.run_batch(
            job, range(2), store=store, run_id="rb", retry=once, retry_dead=True,
            compensate=undo, concurrency=1,
        )  # fmt: skip
    result = caught.value.result
    assert [(o.key, o.status) for o in result.outcomes] == [
        ("0", ab.JobStatus.COMPENSATED),
        ("1", ab.JobStatus.FAILED),
    ]
    assert {s: n for s, n in result.counts.items() if n} == {
        ab.JobStatus.COMPENSATED: 1,
        ab.JobStatus.FAILED: 1,
    }
    stored = {j.key: j.status for j in await store.jobs("rb")}
    assert stored == {"0": ab.JobStatus.COMPENSATED, "1": ab.JobStatus.DEAD_LETTERED}


async def test_an_aborted_resume_reports_every_job_its_rollback_undid_that_it_never_reached(
    store: ab.Store,
) -> None:
    # Found by the property test: jobs 4 and 5 (finished by an earlier invocation)
    # were never reached before the abort (dead letters to run again came first);
    # the rollback undid both, and the result kept one of them: neither had a
    # position in this invocation, and the result kept one outcome per position.
    fatal_at: int | None = None

    async def job(i: int) -> int:
        if i == fatal_at:
            raise ab.FatalError("stop")
        if i in (1, 2, 3):
            raise ab.PermanentError("bad")
        return i

    async def undo(item: int, result: int) -> None:
        return None

    once = ab.Retry(attempts=1)
    await ab.run_batch(job, range(6), store=store, run_id="rb", retry=once)
    fatal_at = 1
    with pytest.raises(ab.BatchAborted) as caught:
        await ab.run_batch(
            job, range(6), store=store, run_id="rb", retry=once, retry_dead=True,
            compensate=undo, concurrency=1,
        )  # fmt: skip
    result = caught.value.result
    undone = [o.key for o in result.outcomes if o.status is ab.JobStatus.COMPENSATED]
    assert undone == ["0", "4", "5"]
    assert [o.index for o in result.outcomes] == sorted(o.index for o in result.outcomes)
    assert len(result.outcomes) == len({o.key for o in result.outcomes})
    assert result.counts[ab.JobStatus.COMPENSATED] == 3
    assert sum(result.counts.values()) == len(result.outcomes)
    stored = {j.key: j.status for j in await store.jobs("rb")}
    assert stored == {
        "0": ab.JobStatus.COMPENSATED,
        "1": ab.JobStatus.DEAD_LETTERED,
        "2": ab.JobStatus.DEAD_LETTERED,
        "3": ab.JobStatus.DEAD_LETTERED,
        "4": ab.JobStatus.COMPENSATED,
        "5": ab.JobStatus.COMPENSATED,
    }
    await invariants(store, "rb")
