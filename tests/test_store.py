"""The checkpoint stores: one behaviour suite run against memory, SQLite and PostgreSQL.

Each PostgreSQL test gets a fresh schema of its own (see conftest's ``pg_url``);
PostgreSQL-only behaviour is in test_store_postgres.py. SQLite-only behaviour
(files, schema versions, locks, corruption) and the ``open_store`` /
``as_store`` URL handling follow the shared suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import socket
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from stores import every_group_to_the_writer

import asyncbatch as ab
from asyncbatch import AttemptRecord, ConfigError, ErrorKind, JobStatus, StoreError, UnknownRun
from asyncbatch._store import (
    DeadLetterQueue,
    FinishedJob,
    JobRecord,
    MemoryStore,
    RunInfo,
    SQLiteStore,
    Store,
    _schema,
    _sqlite,
    as_store,
    open_store,
)
from asyncbatch._store._codec import new_run_warnings

S, D, C = JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED, JobStatus.COMPENSATED


class Clock:
    """A wall clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite", "sqlite-writer", "postgresql"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> AsyncIterator[Store]:
    if request.param == "memory":
        st: Store = MemoryStore(clock=clock)
    elif request.param.startswith("sqlite"):
        if request.param == "sqlite-writer":
            every_group_to_the_writer(request.getfixturevalue("monkeypatch"))
        st = await SQLiteStore.open(tmp_path / "store.db", clock=clock)
    else:
        from asyncbatch._store._postgres import PostgresStore

        st = await PostgresStore.open(request.getfixturevalue("pg_url"), clock=clock)
    try:
        yield st
    finally:
        await st.aclose()


def ok(key: str, result: Any = None, run_id: str = "r1", **kw: Any) -> JobRecord:
    return JobRecord(
        run_id=run_id, key=key, status=S, attempts=1, result=result, has_result=True, **kw
    )


def attempt(n: int, message: str = "boom", kind: ErrorKind = ErrorKind.TRANSIENT) -> AttemptRecord:
    return AttemptRecord(
        number=n,
        started_at=1.5 * n,
        duration=0.25,
        kind=kind,
        error_type="ValueError",
        message=message,
    )


def dead(
    key: str,
    run_id: str = "r1",
    *,
    kind: ErrorKind = ErrorKind.PERMANENT,
    error_type: str = "ValueError",
    message: str = "bad item",
    history: tuple[AttemptRecord, ...] = (),
    **kw: Any,
) -> JobRecord:
    kw.setdefault("payload", {"item": key})
    return JobRecord(
        run_id=run_id,
        key=key,
        status=D,
        attempts=len(history) or 1,
        kind=kind,
        error_type=error_type,
        message=message,
        traceback=f"Traceback ...\n{error_type}: {message}\n",
        history=history,
        **kw,
    )


async def begin(store: Store, *run_ids: str) -> None:
    for run_id in run_ids or ("r1",):
        await store.begin_run(
            RunInfo(run_id=run_id, job="tests.jobs:work", config={"concurrency": 4})
        )


# --------------------------------------------------------------- run lifecycle


async def test_begin_run_creates_a_running_run_and_returns_none(store: Store, clock: Clock) -> None:
    assert await store.begin_run(RunInfo(run_id="r1", job="m:f", config={"c": 1})) is None

    run = await store.get_run("r1")
    assert (run.run_id, run.job, run.status, run.config) == ("r1", "m:f", "running", {"c": 1})
    assert run.created_at == clock.now


async def test_begin_run_again_returns_the_previous_state_and_runs_again(
    store: Store, clock: Clock
) -> None:
    await begin(store)
    created = clock.now
    await store.end_run("r1", "interrupted", {"succeeded": 3}, {"groups": []})
    clock.now += 60

    previous = await store.begin_run(RunInfo(run_id="r1", job="m:f"))

    assert previous is not None
    assert (previous.status, previous.counts, previous.report) == (
        "interrupted",
        {"succeeded": 3},
        {"groups": []},
    )
    run = await store.get_run("r1")
    assert run.status == "running"
    assert (run.created_at, run.updated_at) == (created, clock.now)
    assert run.config == {"concurrency": 4}  # an empty config keeps the stored one


# --------------------------------------------------------------- ownership

A = "host-a:101:aaaa"  # owners on other hosts: only their lease says whether they live
B = "host-b:202:bbbb"


async def take(store: Store, owner: str, run_id: str = "r1") -> RunInfo | None:
    return await store.begin_run(RunInfo(run_id=run_id, job="m:f"), owner=owner, lease=15)


async def test_a_run_with_a_fresh_lease_is_refused_to_another_owner(
    store: Store, clock: Clock
) -> None:
    await take(store, A)
    clock.now += 5

    with pytest.raises(ab.RunOwned) as refused:
        await take(store, B)

    assert (refused.value.run_id, refused.value.owner, refused.value.since) == ("r1", A, 1.7e9)
    assert str(refused.value).startswith(
        "run 'r1' is owned by another process, host-a:101:aaaa since 2023-11-14 22:13:20 UTC"
    )
    assert "\n" not in str(refused.value)
    assert isinstance(refused.value, ab.StoreError)
    assert str(pickle.loads(pickle.dumps(refused.value))) == str(refused.value)
    await store.heartbeat("r1", A)  # the owner was not disturbed


async def test_the_owner_may_begin_its_run_again(store: Store) -> None:
    await take(store, A)
    assert await take(store, A) is not None


async def test_heartbeats_keep_the_lease_and_a_stale_one_is_taken_over(
    store: Store, clock: Clock
) -> None:
    await take(store, A)
    for _ in range(4):  # 40 s, longer than the lease, but renewed every 10 s
        clock.now += 10
        await store.heartbeat("r1", A)
    with pytest.raises(ab.RunOwned):
        await take(store, B)

    clock.now += 16  # A stopped beating (a paused or vanished process)
    await take(store, B)

    with pytest.raises(ab.RunOwned, match="host-b:202:bbbb") as lost:
        await store.heartbeat("r1", A)
    assert lost.value.owner == B


async def test_an_owner_process_of_this_host_that_is_gone_is_taken_over_at_once(
    store: Store,
) -> None:
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()  # exited and reaped: no process has this pid now
    await take(store, f"{socket.gethostname()}:{gone.pid}:cccc")

    await take(store, B)  # no waiting for the lease to expire

    await store.heartbeat("r1", B)


async def test_end_run_releases_the_lease_and_only_its_owner_may_end_it(
    store: Store, clock: Clock
) -> None:
    await take(store, A)
    await store.end_run("r1", "finished", {}, owner=A)
    await take(store, B)  # at once

    with pytest.raises(ab.RunOwned):
        await store.end_run("r1", "interrupted", {}, owner=A)
    assert (await store.get_run("r1")).status == "running"  # B's run is left alone


async def test_a_run_rolling_back_keeps_its_lease(store: Store) -> None:
    await take(store, A)
    await store.end_run("r1", "compensating", {})  # the abort's rollback has begun

    with pytest.raises(ab.RunOwned):
        await take(store, B)
    await store.heartbeat("r1", A)


async def test_taking_a_run_puts_dead_letters_stranded_by_a_dead_redrive_back(
    store: Store,
) -> None:
    await take(store, A)
    await store.commit([dead("k"), dead("m")])
    entries = await store.dlq.list()
    await store.dlq.mark_redriven([entries[0].id])  # what a redrive killed midway left

    await take(store, A)

    assert [e.key for e in await store.dlq.list()] == ["k", "m"]


async def test_a_redriven_job_that_fails_again_counts_a_redrive_of_a_dead_entry(
    store: Store,
) -> None:
    # ab.redrive leaves entries "dead" while it runs: the outcome's commit counts the redrive.
    await begin(store)
    await store.commit([dead("k"), dead("m")])
    k, m = await store.dlq.list()

    await store.commit([dead("k", redrive_of=k.id), ok("m", 1, redrive_of=m.id)])

    assert [(e.status, e.redrive_count) for e in await store.dlq.list(status=None)] == [
        ("dead", 1),
        ("resolved", 1),
    ]


async def test_end_run_records_status_counts_and_report(store: Store) -> None:
    await begin(store)
    await store.end_run("r1", "finished", {"succeeded": 2, "dead_lettered": 1}, {"total": 3})

    run = await store.get_run("r1")
    assert (run.status, run.counts, run.report) == (
        "finished",
        {"succeeded": 2, "dead_lettered": 1},
        {"total": 3},
    )


async def test_a_running_run_counts_the_jobs_it_committed(store: Store) -> None:
    await begin(store)
    await store.commit([ok("a"), ok("b"), dead("c")])

    counts = (await store.get_run("r1")).counts
    assert counts["succeeded"] == 2
    assert counts["dead_lettered"] == 1
    assert counts["failed"] == 0


async def test_count_jobs_counts_every_finished_job_also_after_the_run_ended(
    store: Store,
) -> None:
    await begin(store)
    await store.commit([ok("a"), ok("b"), dead("c")])
    await store.end_run("r1", "finished", {"succeeded": 99})  # counts as the caller said

    counts = await store.count_jobs("r1")
    assert counts == {**dict.fromkeys(counts, 0), "succeeded": 2, "dead_lettered": 1}
    assert set(counts) == {s.value for s in JobStatus}


async def test_list_runs_is_newest_first(store: Store, clock: Clock) -> None:
    for run_id in ("old", "mid", "new"):
        await begin(store, run_id)
        clock.now += 1
    await begin(store, "tie")  # same created_at as nothing else, but later than "new"

    assert [r.run_id for r in await store.list_runs()] == ["tie", "new", "mid", "old"]


async def test_unknown_run_raises_unknown_run_everywhere(store: Store) -> None:
    with pytest.raises(UnknownRun, match="no run 'nope'"):
        await store.get_run("nope")
    with pytest.raises(UnknownRun):
        await store.end_run("nope", "finished", {})
    with pytest.raises(UnknownRun):
        await store.finished_jobs("nope")
    with pytest.raises(UnknownRun):
        await store.jobs("nope")
    with pytest.raises(UnknownRun):
        await store.count_jobs("nope")


async def test_commit_for_an_unknown_run_writes_nothing(store: Store) -> None:
    await begin(store)
    with pytest.raises(UnknownRun):
        await store.commit([ok("a"), ok("b", run_id="nope")])

    assert await store.jobs("r1") == []


# --------------------------------------------------------------- commits, results, resume


async def test_a_commit_group_lands_whole_and_feeds_resume(store: Store) -> None:
    await begin(store)
    await store.commit(
        [
            ok("a", {"score": 1.5, "tags": ["x"]}),
            ok("b", "text"),
            dead("c"),
            JobRecord(run_id="r1", key="d", status=JobStatus.CANCELLED),
        ]
    )

    finished = await store.finished_jobs("r1")
    assert set(finished) == {"a", "b", "c"}  # a cancelled job must run again
    assert finished["a"] == FinishedJob(
        key="a", status=S, result={"score": 1.5, "tags": ["x"]}, has_result=True, attempts=1,
        seq=finished["a"].seq,
    )  # fmt: skip
    assert finished["b"].result == "text"
    assert finished["c"].status is D
    assert finished["c"].payload == {"item": "c"}
    assert [j.key for j in await store.jobs("r1")] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    "value",
    [None, 0, -7, 2**70, 1.25, "héllo\n", True, [], {}, {"a": [1, {"b": None}]}],
    ids=repr,
)
async def test_json_results_round_trip(store: Store, value: Any) -> None:
    await begin(store)
    await store.commit([ok("k", value)])

    job = (await store.finished_jobs("r1"))["k"]
    assert job.has_result is True
    assert job.result == value
    assert type(job.result) is type(value)


async def test_results_come_back_as_json_does(store: Store) -> None:
    await begin(store)
    await store.commit([ok("k", {"t": (1, 2), 3: "int key"})])

    assert (await store.finished_jobs("r1"))["k"].result == {"t": [1, 2], "3": "int key"}


async def test_a_result_that_is_not_json_is_not_stored_and_does_not_fail(store: Store) -> None:
    await begin(store)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    new_run_warnings("r1")
    with pytest.warns(RuntimeWarning, match="JSON cannot hold"):  # once for the run
        await store.commit([ok("set", {1, 2}), ok("obj", object()), ok("cycle", cyclic)])

    finished = await store.finished_jobs("r1")
    assert {k: (j.status, j.has_result, j.result) for k, j in finished.items()} == {
        "set": (S, False, None),
        "obj": (S, False, None),
        "cycle": (S, False, None),
    }


async def test_a_lone_surrogate_anywhere_in_a_group_does_not_fail_the_group(
    store: Store,
) -> None:
    await begin(store)
    bad = "\udcff"  # os.fsdecode(b"\xff"): not UTF-8, refused by a database driver as is
    await store.commit(
        [
            ok("plain", 1),
            ok("result", {"file": bad}),
            ok(f"key-{bad}", 2),
            dead("payload", payload=[bad]),
            dead("message", message=f"cannot open {bad}", error_type=f"Err{bad}"),
            ok("after", 3),
        ]
    )

    finished = await store.finished_jobs("r1")
    assert {k: j.result for k, j in finished.items() if j.status is S} == {
        "plain": 1,
        "result": {"file": bad},  # JSON escapes: the very same string comes back
        "key-\\udcff": 2,  # keys and texts are stored with the surrogate escaped
        "after": 3,
    }
    entries = {e.key: e for e in await store.dlq.list()}
    assert entries["payload"].payload == [bad]
    assert entries["message"].message == "cannot open \\udcff"
    assert entries["message"].error_type == "Err\\udcff"
    assert entries["message"].traceback == "Traceback ...\nErr\\udcff: cannot open \\udcff\n"


@pytest.mark.parametrize("plain", [True, False], ids=["plain-group", "mixed-group"])
async def test_a_nul_character_anywhere_in_a_group_does_not_fail_the_group(
    store: Store, plain: bool
) -> None:
    await begin(store)
    nul = "\x00"  # PostgreSQL's text cannot hold it; JSON writes it as \u0000
    records = [ok("plain", 1), ok("result", {"a": nul}), ok(f"key-{nul}", 2)]
    if not plain:
        records += [
            dead("payload", payload=[nul]),
            dead("message", message=f"cannot open {nul}", error_type=f"Err{nul}"),
        ]
    await store.commit(records)

    finished = await store.finished_jobs("r1")
    assert {k: j.result for k, j in finished.items() if j.status is S} == {
        "plain": 1,
        "result": {"a": nul},  # exactly
        "key-\\x00": 2,  # keys and texts are stored with the NUL escaped
    }
    assert set(await store.lookup("r1", ["key-\\x00", "result"])) == {"key-\\x00", "result"}
    if not plain:
        entries = {e.key: e for e in await store.dlq.list()}
        assert entries["payload"].payload == [nul]
        assert entries["message"].message == "cannot open \\x00"
        assert entries["message"].error_type == "Err\\x00"


async def test_a_value_nested_too_deep_is_stored_without_a_recursion_error(
    store: Store,
) -> None:
    await begin(store)
    deep: list[Any] = []
    node = deep
    for _ in range(10_000):
        node.append([])
        node = node[0]
    new_run_warnings("r1")
    with pytest.warns(RuntimeWarning, match="JSON cannot hold"):  # named, not a crash
        await store.commit([ok("deep", deep), dead("d", payload=deep), ok("after", 1)])

    finished = await store.finished_jobs("r1")
    assert (finished["deep"].has_result, finished["after"].result) == (False, 1)
    (entry,) = await store.dlq.list()
    assert entry.payload_is_repr
    assert entry.payload.startswith("[[[[")


async def test_no_result_is_stored_without_has_result(store: Store) -> None:
    await begin(store)
    await store.commit([JobRecord(run_id="r1", key="k", status=S, result="ignored")])

    job = (await store.finished_jobs("r1"))["k"]
    assert (job.has_result, job.result) == (False, None)


async def test_callers_cannot_mutate_stored_state(store: Store) -> None:
    await begin(store)
    result = {"items": [1, 2]}
    payload = {"x": [1]}
    await store.commit([ok("a", result), dead("b", payload=payload)])
    result["items"].append(3)
    payload["x"].append(2)

    first = (await store.finished_jobs("r1"))["a"].result
    first["items"].append(4)
    (await store.dlq.list())[0].payload["x"].append(3)

    assert (await store.finished_jobs("r1"))["a"].result == {"items": [1, 2]}
    assert (await store.dlq.list())[0].payload == {"x": [1]}


async def test_seq_follows_commit_order_across_groups(store: Store) -> None:
    await begin(store)
    await store.commit([ok("z"), ok("a")])
    await store.commit([ok("m")])
    await store.commit([ok("b"), ok("y")])

    jobs = await store.jobs("r1")
    assert [j.key for j in jobs] == ["z", "a", "m", "b", "y"]
    seqs = [j.seq for j in jobs]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5


async def test_a_large_group_keeps_every_record_its_order_and_its_results(store: Store) -> None:
    # More plain successes than one multi-row statement takes (SQLite writes
    # 256 to a statement, then halves), with other kinds of record between them
    # and a key that must be escaped: every row lands, in commit order.
    await begin(store)
    records = [ok(f"k{i}", result={"i": i}, index=i, duration=i / 7) for i in range(600)]
    records[300:300] = [dead("poison"), ok("odd-\udcff", result=[1]), ok("none")]
    records.append(JobRecord(run_id="r1", key="k5", status=C))  # undo an earlier one
    await store.commit(records)

    jobs = await store.jobs("r1")
    assert len(jobs) == 603
    seqs = {j.key: j.seq for j in jobs}
    keys_in_order = [r.key for r in records[:-1]]
    assert sorted(seqs, key=seqs.__getitem__) == [ab._store.storable_key(k) for k in keys_in_order]
    finished = await store.finished_jobs("r1")
    assert finished["k599"].result == {"i": 599}
    assert finished["k599"].index == 599
    assert finished["k5"].status is C
    assert finished[ab._store.storable_key("odd-\udcff")].result == [1]
    assert finished["none"].result is None
    assert finished["none"].has_result
    assert [e.key for e in await store.dlq.list()] == ["poison"]


async def test_seqs_are_per_run_and_independent(store: Store) -> None:
    await begin(store, "r1", "r2")
    await store.commit([ok("a", run_id="r1"), ok("a", run_id="r2"), ok("b", run_id="r1")])

    assert [j.key for j in await store.jobs("r1")] == ["a", "b"]
    assert [j.key for j in await store.jobs("r2")] == ["a"]
    assert (await store.finished_jobs("r2"))["a"].status is S


async def test_a_job_finishing_again_replaces_its_row_and_moves_to_the_end(store: Store) -> None:
    await begin(store)
    await store.commit([dead("a"), ok("b")])
    await store.commit([ok("a", "second life")])

    jobs = await store.jobs("r1")
    assert [(j.key, j.status, j.result) for j in jobs] == [("b", S, None), ("a", S, "second life")]


async def test_empty_commit_is_a_no_op(store: Store) -> None:
    await begin(store)
    await store.commit([])
    assert await store.jobs("r1") == []


@pytest.mark.parametrize("durability", ["normal", "full"])
async def test_commit_at_either_durability_persists(store: Store, durability: Any) -> None:
    await begin(store)
    await store.commit([ok("a", 1)], durability=durability)
    await store.commit([ok("b", 2)])

    assert {k: j.result for k, j in (await store.finished_jobs("r1")).items()} == {"a": 1, "b": 2}


async def test_an_unknown_durability_is_a_config_error(store: Store) -> None:
    await begin(store)
    with pytest.raises(ConfigError, match=r"'normal'.*'full'"):
        await store.commit([ok("a")], durability="fsync")  # type: ignore[arg-type]


# --------------------------------------------------------------- compensation


async def test_compensated_job_keeps_its_order_result_and_payload(store: Store) -> None:
    await begin(store)
    await store.commit([ok("a", 1, payload={"p": "a"}), ok("b", 2, payload={"p": "b"})])
    before = {j.key: j.seq for j in await store.jobs("r1")}

    await store.commit([JobRecord(run_id="r1", key="b", status=C, result=2, has_result=True)])

    b = (await store.finished_jobs("r1"))["b"]
    assert (b.status, b.result, b.payload, b.seq) == (C, 2, {"p": "b"}, before["b"])
    assert [j.key for j in await store.jobs("r1")] == ["a", "b"]


async def test_a_failed_compensation_leaves_the_job_succeeded_in_place(store: Store) -> None:
    await begin(store)
    await store.commit([ok("a", 1, payload={"p": "a"}), ok("b", 2)])
    failed = JobRecord(run_id="r1", key="a", status=S, compensation_error="OSError: refund failed")
    await store.commit([failed])

    a = (await store.finished_jobs("r1"))["a"]
    assert (a.status, a.result, a.payload) == (S, 1, {"p": "a"})
    assert [j.key for j in await store.jobs("r1")] == ["a", "b"]


async def test_success_then_compensation_in_one_group_applies_in_order(store: Store) -> None:
    await begin(store)
    await store.commit([ok("a", 1), JobRecord(run_id="r1", key="a", status=C)])

    assert (await store.finished_jobs("r1"))["a"].status is C


# ------------------------------------------------- plain successes as outcomes


def done(key: str, result: Any, index: int | None = None) -> ab.JobOutcome[Any]:
    return ab.JobOutcome(key=key, status=S, result=result, attempts=2, duration=0.5, index=index)


async def test_plain_successes_given_as_outcomes_are_stored_like_their_records(
    store: Store,
) -> None:
    """What a run hands its store for most jobs (no record built): `Store.commit`'s run_id."""
    assert type(store).takes_outcomes  # type: ignore[attr-defined]
    await begin(store, "r1", "r2")
    await store.commit([dead("b"), dead("c")])  # open DLQ entries that a success resolves
    group: list[Any] = [
        done("a", {"x": [1, "é"]}, index=0),
        dead("d"),
        done("b", 7, index=1),  # succeeded on a retry of the whole run: resolves its entry
        done("k\x00ey", None, index=2),  # a key no store writes as is: escaped
        done("e", 3, index=4),
        JobRecord(run_id="r1", key="e", status=C),  # undone later in the same group
        ok("other-run", 1, run_id="r2"),
    ]
    await store.commit(group, run_id="r1")  # type: ignore[call-arg]
    last = [done("f", 5, index=5)]
    await store.commit(last, durability="full", run_id="r1")  # type: ignore[call-arg]

    finished = await store.finished_jobs("r1")
    assert {k: (j.status, j.result, j.attempts, j.index) for k, j in finished.items()} == {
        "a": (S, {"x": [1, "é"]}, 2, 0),
        "b": (S, 7, 2, 1),
        "c": (D, None, 1, None),
        "d": (D, None, 1, None),
        "k\\x00ey": (S, None, 2, 2),
        "e": (C, 3, 2, 4),
        "f": (S, 5, 2, 5),
    }
    assert finished["k\\x00ey"].has_result  # a None result is stored, not missing
    seqs = [finished[k].seq for k in ("a", "b", "k\\x00ey", "e", "f")]
    assert seqs == sorted(seqs)  # completion order kept
    assert len(set(seqs)) == 5
    assert [e.key for e in await store.dlq.list(status="resolved")] == ["b"]
    assert sorted(e.key for e in await store.dlq.list()) == ["c", "d"]
    assert set(await store.finished_jobs("r2")) == {"other-run"}


async def test_a_group_of_outcomes_only_is_stored_like_their_records(store: Store) -> None:
    """A busy run's every group: plain successes only (SQLite writes them in one pass)."""
    await begin(store)
    await store.commit([dead("b")])  # an open DLQ entry that a success resolves
    await store.commit(  # type: ignore[call-arg]
        [done("a", 1, index=0), done("b", [2], index=1), done("c", None, index=2)], run_id="r1"
    )
    # One key no store writes as is: the whole group is written as the general path writes it.
    await store.commit(  # type: ignore[call-arg]
        [done("d", 4, index=3), done("e\x00", 5, index=4)], run_id="r1"
    )
    finished = await store.finished_jobs("r1")
    assert {k: (j.status, j.result, j.attempts, j.index) for k, j in finished.items()} == {
        "a": (S, 1, 2, 0),
        "b": (S, [2], 2, 1),
        "c": (S, None, 2, 2),
        "d": (S, 4, 2, 3),
        "e\\x00": (S, 5, 2, 4),
    }
    seqs = [finished[k].seq for k in ("a", "b", "c", "d", "e\\x00")]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5
    assert [e.key for e in await store.dlq.list(status="resolved")] == ["b"]
    assert await store.dlq.list() == []
    counts = await store.count_jobs("r1")
    assert counts["succeeded"] == 5


async def test_a_group_of_outcomes_stores_each_kind_of_result_as_its_records_would(
    store: Store,
) -> None:
    """Ints (SQLite writes a group of only ints with str()), a bool, text, a float, and
    results JSON cannot hold (an int too long for str(), a set): stored as null, warned."""
    run = f"kinds-{uuid.uuid4()}"  # the warning comes once per run (and process)
    await begin(store, run)
    await store.commit([done("i", 7, index=0), done("n", -3, index=1)], run_id=run)  # type: ignore[call-arg]
    await store.commit(  # type: ignore[call-arg]
        [done("t", True, index=2), done("s", "7", index=3), done("f", 1.5, index=4)], run_id=run
    )
    with pytest.warns(RuntimeWarning, match="stored as null"):
        await store.commit(  # type: ignore[call-arg]
            [done("big", 10**5000, index=5), done("set", {1}, index=6), done("j", 8, index=7)],
            run_id=run,
        )
    finished = await store.finished_jobs(run)
    assert {k: (j.result, type(j.result)) for k, j in finished.items()} == {
        "i": (7, int),
        "n": (-3, int),
        "t": (True, bool),
        "s": ("7", str),
        "f": (1.5, float),
        "big": (None, type(None)),
        "set": (None, type(None)),
        "j": (8, int),
    }
    assert sorted(j.seq for j in finished.values()) == list(range(1, 9))


async def test_a_long_int_result_is_kept_when_the_digit_limit_is_lifted(store: Store) -> None:
    """`sys.set_int_max_str_digits(0)` in the run's process: the SQLite writer process
    (which -I keeps at the default limit) writes the text of such an int too."""
    run = f"digits-{uuid.uuid4()}"
    await begin(store, run)
    await store.commit([done("i", 1, index=1)], run_id=run)  # type: ignore[call-arg]  # run known
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        await store.commit([done("big", -(10**5000), index=0)], run_id=run)  # type: ignore[call-arg]
        finished = await store.finished_jobs(run)
        assert finished["big"].result == -(10**5000)
    finally:
        sys.set_int_max_str_digits(before)
    assert finished["i"].result == 1


async def test_outcomes_of_a_run_the_store_does_not_know_fail_the_whole_group(
    store: Store,
) -> None:
    await begin(store)
    with pytest.raises(UnknownRun):
        await store.commit([ok("a", 1), done("b", 2)], run_id="nope")  # type: ignore[call-arg]
    assert await store.finished_jobs("r1") == {}


# --------------------------------------------------------------- dead-letter queue


async def test_dead_lettered_job_becomes_a_dlq_entry(store: Store, clock: Clock) -> None:
    await begin(store)
    history = (attempt(1, "blip"), attempt(2, "bad item", ErrorKind.PERMANENT))
    await store.commit([dead("k", history=history, payload={"id": 7})])

    (entry,) = await store.dlq.list()
    assert entry == ab.DeadLetter(
        id=entry.id,
        run_id="r1",
        key="k",
        payload={"id": 7},
        kind=ErrorKind.PERMANENT,
        error_type="ValueError",
        message="bad item",
        traceback="Traceback ...\nValueError: bad item\n",
        attempts=history,
        redrive_count=0,
        status="dead",
        created_at=clock.now,
        payload_is_repr=False,
    )
    assert await store.dlq.get(entry.id) == entry


async def test_a_payload_that_is_not_json_is_kept_as_its_repr(store: Store) -> None:
    await begin(store)
    await store.commit(
        [dead("k", payload={1, 2}), dead("r", payload="<Item 3>", payload_is_repr=True)]
    )

    entries = {e.key: e for e in await store.dlq.list()}
    assert (entries["k"].payload, entries["k"].payload_is_repr) == ("{1, 2}", True)
    assert (entries["r"].payload, entries["r"].payload_is_repr) == ("<Item 3>", True)


async def test_unknown_dlq_id_is_a_clear_key_error(store: Store) -> None:
    with pytest.raises(KeyError, match="no dead letter with id 999"):
        await store.dlq.get(999)


async def _three_runs_of_dead_letters(store: Store, clock: Clock) -> None:
    await begin(store, "r1", "r2")
    await store.commit([dead("a", kind=ErrorKind.PERMANENT, error_type="ValueError")])
    clock.now += 10
    await store.commit(
        [dead("b", kind=ErrorKind.TRANSIENT, error_type="httpx.ConnectError", message="refused")]
    )
    clock.now += 10
    await store.commit(
        [dead("c", "r2", kind=ErrorKind.RECOVERABLE, error_type="mylib.RateLimited")]
    )


async def test_dlq_list_filters(store: Store, clock: Clock) -> None:
    await _three_runs_of_dead_letters(store, clock)
    t0 = clock.now - 20

    async def keys(**filters: Any) -> list[str]:
        return [e.key for e in await store.dlq.list(**filters)]

    assert await keys() == ["a", "b", "c"]  # oldest first
    assert await keys(run_id="r1") == ["a", "b"]
    assert await keys(kind=ErrorKind.TRANSIENT) == ["b"]
    assert await keys(kind="recoverable") == ["c"]
    assert await keys(kind="PERMANENT") == ["a"]
    assert await keys(error_type="httpx.ConnectError") == ["b"]
    assert await keys(error_type="ConnectError") == ["b"]  # by its last dotted part
    assert await keys(error_type="Error") == []  # ...but not by any suffix
    assert await keys(since=t0 + 10) == ["b", "c"]
    assert await keys(until=t0 + 10) == ["a"]  # until is exclusive
    assert await keys(since=t0 + 5, until=t0 + 15) == ["b"]
    assert await keys(limit=2) == ["a", "b"]
    assert await keys(run_id="r1", kind="transient", limit=5) == ["b"]


async def test_dlq_list_accepts_datetimes(store: Store, clock: Clock) -> None:
    from datetime import UTC, datetime

    await _three_runs_of_dead_letters(store, clock)
    since = datetime.fromtimestamp(clock.now - 10, tz=UTC)
    assert [e.key for e in await store.dlq.list(since=since)] == ["b", "c"]


async def test_dlq_list_rejects_bad_filters(store: Store) -> None:
    with pytest.raises(ConfigError, match="unknown error kind 'weird'"):
        await store.dlq.list(kind="weird")
    with pytest.raises(ConfigError, match="unknown dead-letter status 'gone'"):
        await store.dlq.list(status="gone")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="limit"):
        await store.dlq.list(limit=-1)
    with pytest.raises(TypeError, match=r"unknown filter.*'colour'"):
        await store.dlq.export("x.jsonl", colour="red")


async def test_dlq_export_writes_one_json_object_per_line(
    store: Store, clock: Clock, tmp_path: Path
) -> None:
    await _three_runs_of_dead_letters(store, clock)
    out = tmp_path / "dlq.jsonl"

    assert await store.dlq.export(str(out), run_id="r1") == 2

    lines = out.read_text(encoding="utf-8").splitlines()
    expected = [e.to_dict() for e in await store.dlq.list(run_id="r1")]
    assert [json.loads(line) for line in lines] == expected
    assert await store.dlq.export(out, kind="fatal") == 0
    assert out.read_text() == ""


async def test_dlq_export_of_many_entries_is_complete_and_read_in_pages(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await begin(store)
    await store.commit([dead(f"k{i}", payload={"i": i, "pad": "x" * 100}) for i in range(1234)])
    pages: list[int] = []
    page = type(store.dlq)._page  # type: ignore[attr-defined]

    async def spy(self: Any, f: Any, after: int | None, size: int) -> Any:
        found = await page(self, f, after, size)
        pages.append(len(found))
        return found

    monkeypatch.setattr(type(store.dlq), "_page", spy)
    out = tmp_path / "dlq.jsonl"

    assert await store.dlq.export(out) == 1234

    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["key"] for line in lines] == [f"k{i}" for i in range(1234)]
    assert pages == [500, 500, 234]  # never every entry at once
    assert await store.dlq.export(out, limit=501) == 501
    assert len(out.read_text().splitlines()) == 501


async def test_a_failed_dlq_export_leaves_the_previous_file_intact(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await begin(store)
    await store.commit([dead(f"k{i}") for i in range(1200)])
    out = tmp_path / "dlq.jsonl"
    out.write_text("the previous export\n")
    page = type(store.dlq)._page  # type: ignore[attr-defined]

    async def disk_fails_midway(self: Any, f: Any, after: int | None, size: int) -> Any:
        if after is not None:  # the first page is already written to the temporary file
            raise OSError(28, "No space left on device")
        return await page(self, f, after, size)

    monkeypatch.setattr(type(store.dlq), "_page", disk_fails_midway)

    with pytest.raises(OSError, match="No space left"):
        await store.dlq.export(out)

    assert out.read_text() == "the previous export\n"  # not a torn half-export
    leftovers = [p.name async for p in anyio.Path(tmp_path).iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []  # the temporary file is gone too


async def test_dlq_export_file_has_the_mode_a_plain_write_would_give(
    store: Store, tmp_path: Path
) -> None:
    await begin(store)
    await store.commit([dead("k")])
    fresh, kept = anyio.Path(tmp_path / "new.jsonl"), anyio.Path(tmp_path / "kept.jsonl")
    await kept.write_text("old\n")
    await kept.chmod(0o600)
    umask = os.umask(0o022)
    os.umask(umask)

    await store.dlq.export(fresh)
    await store.dlq.export(kept)

    assert (await fresh.stat()).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert (await kept.stat()).st_mode & 0o777 == 0o600  # a replaced file keeps its mode


async def test_dlq_export_writes_surrogates_as_json_escapes(store: Store, tmp_path: Path) -> None:
    await begin(store)
    await store.commit([dead("k", payload={"file": "\udcff"}, message="bad \udcff")])
    out = tmp_path / "dlq.jsonl"

    assert await store.dlq.export(out) == 1

    (line,) = out.read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["payload"] == {"file": "\udcff"}
    assert json.loads(line)["message"] == "bad \\udcff"


async def test_dlq_purge_deletes_what_list_would_show(store: Store, clock: Clock) -> None:
    await _three_runs_of_dead_letters(store, clock)

    assert await store.dlq.purge(run_id="r1") == 2
    assert [e.key for e in await store.dlq.list()] == ["c"]
    assert await store.dlq.purge(run_id="r1") == 0
    assert await store.dlq.purge(kind="recoverable") == 1
    assert await store.dlq.list(status=None) == []


async def test_dlq_purge_keeps_resolved_entries_unless_asked(store: Store) -> None:
    await begin(store)
    await store.commit([dead("a"), dead("b")])
    resolved = (await store.dlq.list())[0]
    await store.commit([ok("a", redrive_of=resolved.id)])

    assert await store.dlq.purge() == 1
    assert [e.status for e in await store.dlq.list(status=None)] == ["resolved"]
    assert await store.dlq.purge(status=None) == 1
    assert await store.dlq.list(status=None) == []


async def test_a_purged_entry_is_not_resurrected_by_a_later_failure(store: Store) -> None:
    await begin(store)
    await store.commit([dead("a", message="first")])
    await store.dlq.purge()
    await store.commit([dead("a", message="second")])

    (entry,) = await store.dlq.list()
    assert (entry.message, len(entry.attempts), entry.redrive_count) == ("second", 0, 0)


# --------------------------------------------------------------- redrive


async def test_redrive_that_fails_again_updates_the_same_entry(store: Store, clock: Clock) -> None:
    await begin(store)
    await store.commit([dead("k", history=(attempt(1), attempt(2)), message="old")])
    (entry,) = await store.dlq.list()
    created = entry.created_at

    await store.dlq.mark_redriven([entry.id])
    marked = await store.dlq.get(entry.id)
    assert (marked.status, marked.redrive_count) == ("redriven", 1)
    assert await store.dlq.list() == []  # not "dead" while it is being redriven

    clock.now += 100
    again = dead(
        "k",
        history=(attempt(1, "new"),),
        kind=ErrorKind.RECOVERABLE,
        error_type="TimeoutError",
        message="new",
        redrive_of=entry.id,
    )
    await store.commit([again])

    (after,) = await store.dlq.list()
    assert after.id == entry.id
    assert (after.status, after.redrive_count, after.created_at) == ("dead", 1, created)
    assert (after.kind, after.error_type, after.message) == (
        ErrorKind.RECOVERABLE,
        "TimeoutError",
        "new",
    )
    assert [a.message for a in after.attempts] == ["boom", "boom", "new"]  # history kept
    assert after.payload == {"item": "k"}


async def test_redrive_that_succeeds_resolves_the_entry(store: Store) -> None:
    await begin(store)
    await store.commit([dead("k"), dead("other")])
    entry = (await store.dlq.list())[0]
    await store.dlq.mark_redriven([entry.id, 12345])  # unknown ids are ignored

    await store.commit([ok("k", "fixed", redrive_of=entry.id)])

    resolved = await store.dlq.get(entry.id)
    assert (resolved.status, resolved.redrive_count) == ("resolved", 1)
    assert [e.key for e in await store.dlq.list()] == ["other"]
    assert (await store.finished_jobs("r1"))["k"].result == "fixed"


async def test_retrying_a_dead_job_in_a_resumed_run_reuses_its_entry(store: Store) -> None:
    # retry_dead=True runs a dead job again without redrive(): still one entry per job.
    await begin(store)
    await store.commit([dead("k", history=(attempt(1),))])
    await store.commit([dead("k", history=(attempt(1, "again"),), message="again")])

    (entry,) = await store.dlq.list(status=None)
    assert (entry.message, entry.redrive_count) == ("again", 1)
    assert [a.message for a in entry.attempts] == ["boom", "again"]

    await store.commit([ok("k", 1)])
    assert (await store.dlq.get(entry.id)).status == "resolved"
    assert await store.dlq.list() == []


async def test_redrive_of_a_purged_entry_still_records_the_failure(store: Store) -> None:
    await begin(store)
    await store.commit([dead("k")])
    (entry,) = await store.dlq.list()
    await store.dlq.purge()

    await store.commit([dead("k", message="again", redrive_of=entry.id)])

    (fresh,) = await store.dlq.list()
    assert (fresh.key, fresh.message) == ("k", "again")


# --------------------------------------------------------------- lifecycle of the store


async def test_stores_satisfy_the_protocol(store: Store) -> None:
    assert isinstance(store, Store)
    assert isinstance(store.dlq, DeadLetterQueue)


async def test_a_closed_store_says_so(store: Store) -> None:
    await begin(store)
    await store.aclose()
    await store.aclose()  # twice is fine
    with pytest.raises(StoreError, match="closed"):
        await store.get_run("r1")
    with pytest.raises(StoreError, match="closed"):
        await store.commit([ok("a")])


# =============================================================== SQLite only


@contextlib.contextmanager
def _plain_sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection that commits and is closed on exit.

    ``with sqlite3.connect(path)`` alone only commits: the connection stays
    open, and Python 3.13 reports that as ``ResourceWarning: unclosed database``.
    """
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        yield db


def _pragma(path: Path, name: str) -> Any:
    with _plain_sqlite(path) as db:
        return db.execute(f"PRAGMA {name}").fetchone()[0]


EXPORT_KILLED_MIDWAY = """
import asyncio, sys
import asyncbatch as ab
from asyncbatch._store._sqlite_dlq import SQLiteDeadLetterQueue

page = SQLiteDeadLetterQueue._page

async def stall_after_the_first_page(self, f, after, size):
    if after is not None:
        print("midway", flush=True)
        await asyncio.sleep(3600)
    return await page(self, f, after, size)

SQLiteDeadLetterQueue._page = stall_after_the_first_page

async def main():
    async with ab.open_store(sys.argv[1]) as store:
        await store.dlq.export(sys.argv[2])

asyncio.run(main())
"""


@pytest.mark.slow
async def test_a_dlq_export_killed_midway_leaves_no_torn_file(tmp_path: Path) -> None:
    path, out = tmp_path / "s.db", tmp_path / "dlq.jsonl"
    async with open_store(str(path)) as store:
        await begin(store)
        await store.commit([dead(f"k{i}", payload={"pad": "x" * 200}) for i in range(1200)])
    await anyio.Path(out).write_text("the previous export\n")

    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", EXPORT_KILLED_MIDWAY, str(path), str(out),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    assert await asyncio.wait_for(child.stdout.readline(), 30) == b"midway\n"
    child.kill()
    await child.wait()

    assert await anyio.Path(out).read_text() == "the previous export\n"
    (partial,) = [p async for p in anyio.Path(tmp_path).glob(".dlq.jsonl.*.tmp")]
    assert (await partial.stat()).st_size > 0  # the kill did land mid-export


async def test_sqlite_schema_is_versioned_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with await open_store(str(path)) as store:
        assert await store.list_runs() == []
    assert _pragma(path, "user_version") == _schema.SCHEMA_VERSION
    assert _pragma(path, "application_id") == _schema.APPLICATION_ID
    assert _pragma(path, "journal_mode") == "wal"


async def test_sqlite_connection_pragmas(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "s.db")
    try:
        db = store._db

        async def pragma(name: str) -> Any:
            return next(iter(await db.execute_fetchall(f"PRAGMA {name}")))[0]

        assert await pragma("foreign_keys") == 1
        assert await pragma("synchronous") == 1  # NORMAL
        await store.begin_run(RunInfo(run_id="r1"))
        await store.commit([ok("a")], durability="full")
        assert await pragma("synchronous") == 2  # FULL: fsync at commit
        await store.commit([ok("b")])
        assert await pragma("synchronous") == 1
    finally:
        await store.aclose()


async def test_sqlite_reopen_keeps_everything_and_seq_keeps_growing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    async with open_store(url) as store:
        await begin(store)
        await store.commit([ok("a", [1]), dead("b", history=(attempt(1),))])
        await store.end_run("r1", "interrupted", {"succeeded": 1}, {"x": 1})

    async with open_store(url) as store:
        previous = await store.begin_run(RunInfo(run_id="r1"))
        assert previous is not None
        assert (previous.status, previous.report) == ("interrupted", {"x": 1})
        await store.commit([ok("c", 3)])
        finished = await store.finished_jobs("r1")
        assert finished["a"].result == [1]
        assert [j.key for j in await store.jobs("r1")] == ["a", "b", "c"]
        (entry,) = await store.dlq.list()
        assert entry.attempts == (attempt(1),)
        # the dead entry is still known as open: a later success resolves it
        await store.commit([ok("b", 2)])
        assert (await store.dlq.get(entry.id)).status == "resolved"


async def test_sqlite_migrates_an_older_schema_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    async with open_store(str(path)) as store:
        await begin(store)
        await store.commit([ok("a", 1)])

    step = ("CREATE TABLE notes (run_id TEXT REFERENCES runs(id), text TEXT)",)
    monkeypatch.setattr(_sqlite, "MIGRATIONS", (*_schema.MIGRATIONS, step))
    monkeypatch.setattr(_sqlite, "SCHEMA_VERSION", _schema.SCHEMA_VERSION + 1)
    async with open_store(str(path)) as store:
        assert (await store.finished_jobs("r1"))["a"].result == 1

    assert _pragma(path, "user_version") == _schema.SCHEMA_VERSION + 1
    with _plain_sqlite(path) as db:
        assert db.execute("SELECT count(*) FROM notes").fetchone() == (0,)


async def test_a_store_from_before_ownership_is_migrated_and_its_runs_can_be_owned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    with monkeypatch.context() as old:  # the schema of the first release
        old.setattr(_sqlite, "MIGRATIONS", _schema.MIGRATIONS[:1])
        old.setattr(_sqlite, "SCHEMA_VERSION", 1)
        async with open_store(str(path)) as store:
            await begin(store)
            await store.commit([ok("a", 1)])
    assert _pragma(path, "user_version") == 1

    async with open_store(str(path)) as store:
        await take(store, A)
        with pytest.raises(ab.RunOwned):
            await take(store, B)
        assert (await store.finished_jobs("r1"))["a"].result == 1

    assert _pragma(path, "user_version") == _schema.SCHEMA_VERSION == 2


async def test_sqlite_from_a_newer_asyncbatch_asks_to_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_store(str(path)):
        pass
    with _plain_sqlite(path) as db:
        db.execute(f"PRAGMA user_version={_schema.SCHEMA_VERSION + 1}")

    with pytest.raises(StoreError, match=r"newer asyncbatch.*upgrade asyncbatch"):
        async with open_store(str(path)):
            pass


async def _not_ours(path: Path) -> str:
    with pytest.raises(StoreError) as info:
        async with open_store(str(path)):
            pass
    message = str(info.value)
    assert "\n" not in message
    return message


async def test_a_non_sqlite_file_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)

    message = await _not_ours(path)
    assert message.startswith(f"{path} is not an asyncbatch SQLite database: ")
    assert path.read_text().startswith("these are my notes")  # untouched


async def test_a_corrupt_store_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_store(str(path)) as store:
        await begin(store)
    with path.open("r+b") as f:  # garble the schema page after the file header
        f.seek(100)
        f.write(b"\xa5" * 3000)

    assert "is not an asyncbatch SQLite database" in await _not_ours(path)


async def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with _plain_sqlite(path) as db:
        db.execute("CREATE TABLE users (id INTEGER)")

    assert "holds other data" in await _not_ours(path)
    with _plain_sqlite(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert tables == {"users"}


async def test_a_locked_database_is_a_clear_store_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_store(f"sqlite:///{path}?busy_timeout=0.05") as store:
        await begin(store)
        other = sqlite3.connect(path, isolation_level=None, timeout=0.05)
        try:
            other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
            with pytest.raises(StoreError, match="database is locked by another writer") as info:
                await store.commit([ok("a")])
            assert "\n" not in str(info.value)
            other.execute("ROLLBACK")
        finally:
            other.close()
        await store.commit([ok("a")])  # the store is usable once the lock is gone
        assert [j.key for j in await store.jobs("r1")] == ["a"]


async def test_a_missing_directory_is_a_clear_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"cannot open SQLite store .*directory"):
        async with open_store(str(tmp_path / "nope" / "s.db")):
            pass


@pytest.mark.parametrize("via", ["thread", "writer-process"])
async def test_a_failed_commit_rolls_back_whole_and_the_next_one_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    # A later commit is one trip to the connection's thread (or, for a large
    # group, to the writer process): when it fails (here, another writer holds
    # the lock past busy_timeout) nothing of it stays, the error is the usual
    # one-line StoreError, and completion orders go on from what was committed.
    if via == "writer-process":
        every_group_to_the_writer(monkeypatch)
    path = tmp_path / "s.db"
    async with open_store(f"sqlite:///{path}?busy_timeout=0.05") as store:
        await begin(store)
        await store.commit([ok("a")])
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="locked by another writer"):
                await store.commit([ok("b"), ok("c")])
            other.execute("ROLLBACK")
        finally:
            other.close()
        await store.commit([ok("d")])
        jobs = await store.jobs("r1")
        assert [(j.key, j.seq) for j in jobs] == [("a", 1), ("d", 2)]


@pytest.mark.parametrize("earlier", [0, 1], ids=["first-commit", "later-commit"])
async def test_a_cancelled_commit_leaves_no_transaction_open(tmp_path: Path, earlier: int) -> None:
    # A run's first commit reads the run first (several trips to the connection's
    # thread); later ones are one trip. Either way a cancelled caller leaves the
    # transaction to finish, and completion orders go on after it.
    async with open_store(str(tmp_path / "s.db")) as store:
        await begin(store)
        await store.commit([ok(f"early-{i}") for i in range(earlier)])
        task = asyncio.create_task(store.commit([ok(str(i)) for i in range(2000)]))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the shielded transaction finished: all of it is there, and the next commit works
        await store.commit([ok("last")])
        jobs = await store.jobs("r1")
        assert len(jobs) == 2001 + earlier
        assert [j.seq for j in jobs] == list(range(1, 2002 + earlier))  # in completion order
        assert jobs[-1].key == "last"


# =============================================================== open_store / as_store


async def test_memory_url_opens_a_memory_store() -> None:
    async with open_store("memory://") as store:
        assert isinstance(store, MemoryStore)
        assert store.url == "memory://"


@pytest.mark.parametrize(
    ("url", "relative"),
    [
        ("sqlite:///runs.db", "runs.db"),
        ("sqlite:///sub/../runs.sqlite3", "runs.sqlite3"),
        ("runs.db", "runs.db"),
        ("plain-file", "plain-file"),
    ],
)
async def test_sqlite_urls_and_paths_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, relative: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    async with open_store(url) as store:
        assert isinstance(store, SQLiteStore)
        await begin(store)
    assert (tmp_path / relative).exists()


async def test_four_slashes_is_an_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "abs.db"
    url = "sqlite:///" + str(path)
    assert url.startswith("sqlite:////")
    async with open_store(url) as store:
        assert store.url == url
    assert path.exists()


async def test_open_store_can_be_awaited(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "s.db")
    try:
        assert isinstance(store, SQLiteStore)
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user@db/asyncbatch",
        "postgres://user:secret@db:5433/asyncbatch?schema=proj",
        "postgresql+asyncpg://db/asyncbatch?retry_timeout=5&sslmode=disable",
    ],
)
def test_postgres_urls_are_accepted_without_connecting(url: str) -> None:
    open_store(url)  # validated at once; the connection is made on entering


def test_a_bad_postgres_url_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="schema='no-dash'"):
        open_store("postgresql://db/x?schema=no-dash")
    with pytest.raises(ConfigError, match="retry_timeout"):
        open_store("postgresql://db/x?retry_timeout=soon")
    with pytest.raises(ConfigError, match="busy_timeout= is a SQLite option"):
        open_store("postgresql://db/x", busy_timeout=1)


@pytest.mark.parametrize(
    "url",
    ["mysql://db/x", "", "http://example.com/x.db", "sqlite:x.db", "sqlite://host/x.db"],
)
def test_unsupported_urls_are_a_one_line_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(url)
    message = str(info.value)
    assert "'memory://'" in message
    assert "sqlite:///" in message
    assert "\n" not in message


def test_unknown_url_options_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown store URL option.*'timeout'"):
        open_store("sqlite:///x.db?timeout=3")
    with pytest.raises(ConfigError, match="busy_timeout"):
        open_store("sqlite:///x.db?busy_timeout=soon")


def test_bad_durability_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="durability"):
        open_store("memory://", durability="paranoid")  # type: ignore[arg-type]


async def test_as_store_none_is_a_fresh_memory_store_closed_at_exit() -> None:
    async with as_store(None) as store:
        assert isinstance(store, MemoryStore)
        await begin(store)
    with pytest.raises(StoreError, match="closed"):
        await store.list_runs()


async def test_as_store_opens_urls_and_paths_and_closes_them(tmp_path: Path) -> None:
    for target in (tmp_path / "a.db", f"sqlite:///{tmp_path}/b.db"):
        async with as_store(target, durability="full") as store:
            assert isinstance(store, SQLiteStore)
        with pytest.raises(StoreError, match="closed"):
            await store.list_runs()


async def test_as_store_leaves_a_given_store_open(store: Store) -> None:
    async with as_store(store) as same:
        assert same is store
    await begin(store)
    assert [r.run_id for r in await store.list_runs()] == ["r1"]


def test_as_store_rejects_other_values() -> None:
    with pytest.raises(ConfigError, match="store= must be"):
        as_store(42)  # type: ignore[arg-type]
