"""The hot path's layout twins build the same immutable values as the public constructors."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

import asyncbatch as ab
from asyncbatch._result import fast_outcome
from asyncbatch._run._entry import Entry
from asyncbatch._store import JobRecord
from asyncbatch._store._memory import MemoryStore


def test_fast_outcome_is_a_plain_job_outcome() -> None:
    fast = fast_outcome("k", ab.JobStatus.SUCCEEDED, {"x": 1}, 2, 0.5, 7)
    slow = ab.JobOutcome(
        key="k", status=ab.JobStatus.SUCCEEDED, result={"x": 1}, attempts=2, duration=0.5, index=7
    )
    assert type(fast) is ab.JobOutcome
    assert fast == slow
    assert repr(fast) == repr(slow)
    assert dataclasses.asdict(fast) == dataclasses.asdict(slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.key = "other"  # type: ignore[misc]


def test_success_record_sets_every_field_like_the_constructor() -> None:
    entry = Entry("run", 3, "k", {"item": 1})
    entry.attempt = 1
    entry.redrive_of = 9
    outcome = fast_outcome("k", ab.JobStatus.SUCCEEDED, 42, 1, 0.25, 3)
    fast = entry.record(outcome)
    slow = JobRecord(
        run_id="run", key="k", status=ab.JobStatus.SUCCEEDED, index=3, attempts=1,
        duration=0.25, result=42, has_result=True, redrive_of=9,
    )  # fmt: skip
    assert type(fast) is JobRecord
    # Every field is set (a field added to JobRecord but not to its twin fails here).
    assert dataclasses.asdict(fast) == dataclasses.asdict(slow)


def test_statuses_hash_like_their_values() -> None:
    # Dicts keyed by status take the value too, consistently with ==.
    assert {ab.JobStatus.SUCCEEDED: 1}["succeeded"] == 1
    assert {ab.ErrorKind.FATAL: 1}["fatal"] == 1


def test_a_success_committed_as_its_outcome_makes_the_record_its_entry_would() -> None:
    from asyncbatch._store._rows import outcome_record

    entry = Entry("run", 3, "k", {"item": 1})
    entry.attempt = 2
    outcome = fast_outcome("k", ab.JobStatus.SUCCEEDED, [1, 2], 2, 0.25, 3)
    assert outcome_record("run", outcome) == entry.record(outcome)


class _RecordsOnly(MemoryStore):
    """A store whose class does not say ``takes_outcomes`` (as a third-party one): it
    must be given records."""

    takes_outcomes = False

    def __init__(self) -> None:
        super().__init__()
        self.committed: list[object] = []

    async def commit(  # type: ignore[override]
        self, records: list[JobRecord], *, durability: Literal["normal", "full"] = "normal"
    ) -> None:
        self.committed += records
        await super().commit(records, durability=durability)


async def test_a_store_that_does_not_take_outcomes_is_given_records() -> None:
    store = _RecordsOnly()
    result = await ab.run_batch(_double, range(50), store=store, run_id="r")

    assert result.counts[ab.JobStatus.SUCCEEDED] == 50
    assert len(store.committed) == 50
    assert all(type(r) is JobRecord for r in store.committed)
    stored = {j.key: j.result for j in await store.jobs("r")}
    assert stored == {str(i): 2 * i for i in range(50)}


async def _double(x: int) -> int:
    return 2 * x
