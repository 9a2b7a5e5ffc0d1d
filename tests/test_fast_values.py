"""The hot path's layout twins build the same immutable values as the public constructors."""

from __future__ import annotations

import dataclasses

import pytest

import asyncbatch as ab
from asyncbatch._result import fast_outcome
from asyncbatch._run._entry import Entry
from asyncbatch._store import JobRecord


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
