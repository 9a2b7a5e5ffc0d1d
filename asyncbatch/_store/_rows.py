"""Job records as stored rows, and stored rows as values (`FinishedJob`, `DeadLetter`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from asyncbatch._errors import ErrorKind
from asyncbatch._result import AttemptRecord, DeadLetter, JobOutcome, JobStatus

from ._codec import warn_unstorable
from ._encoding import (
    decode,
    encode,
    encode_payload,
    optional_text,
    plain_text,
    storable_key,
)
from ._protocol import FinishedJob, JobRecord

__all__ = [
    "FINISHED",
    "JOB_COLUMNS",
    "JobRow",
    "as_records",
    "dead_letter",
    "finished_job",
    "is_compensation",
    "is_plain_success",
    "job_row",
    "outcome_record",
    "result_text",
    "storable_record",
    "success_row",
    "zero_counts",
]

FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.DEAD_LETTERED, JobStatus.COMPENSATED})

JobRow = tuple[Any, ...]
"""A job as stored: the columns of `JOB_COLUMNS`, in order."""

JOB_COLUMNS = (
    "run_id", "key", "idx", "status", "attempts", "duration", "result", "has_result",
    "payload", "payload_is_repr", "seq", "kind", "error_type", "message",
    "compensation_error", "updated_at",
)  # fmt: skip


def result_text(r: JobRecord) -> str | None:
    """A record's result as the JSON text every store writes (None: no result stored).

    A result JSON cannot hold is stored as None, with the run's one warning
    (`warn_unstorable`), on every store alike.
    """
    if not r.has_result:
        return None
    text = encode(r.result)
    if text is None:
        warn_unstorable(r.run_id, r.key, r.result)
    return text


def job_row(r: JobRecord, seq: int, now: float) -> JobRow:
    """The stored form of a job record (``seq``: its completion order)."""
    # The hot path of every commit: `_value_` skips Enum's `value` property.
    result = result_text(r)
    payload, is_repr = (
        (None, False) if r.payload is None else encode_payload(r.payload, r.payload_is_repr)
    )
    kind = r.kind
    return (
        r.run_id,
        r.key,
        r.index,
        r.status._value_,
        r.attempts,
        r.duration,
        result,
        result is not None,
        payload,
        is_repr,
        seq,
        None if kind is None else kind._value_,
        r.error_type,
        r.message,
        r.compensation_error,
        now,
    )


_STATUS = {s.value: s for s in JobStatus}


def finished_job(
    key: str,
    status: str,
    result: str | None,
    has_result: bool,
    attempts: int,
    seq: int,
    payload: str | None,
    index: int | None = None,
) -> FinishedJob:
    """A `FinishedJob` from stored columns (JSON decoded afresh)."""
    return FinishedJob(
        key=key,
        status=_STATUS[status],
        result=decode(result),
        has_result=bool(has_result),
        attempts=attempts,
        seq=seq,
        payload=decode(payload),
        index=index,
    )


def storable_record(r: JobRecord) -> JobRecord:
    """``r`` with its key and texts UTF-8 writable (`storable_text`); ``r`` itself when they are.

    Every store applies it to every record it commits, so a lone surrogate
    (or a NUL) in one job's key, message or traceback is stored escaped
    instead of failing the whole group's transaction. (Results and payloads
    are JSON: `encode` escapes them losslessly, a NUL as ``\\u0000``.)
    """
    m, tb, et, ce = r.message, r.traceback, r.error_type, r.compensation_error
    if (
        plain_text(r.key)
        and (m is None or plain_text(m))
        and (tb is None or plain_text(tb))
        and (et is None or plain_text(et))
        and (ce is None or plain_text(ce))
    ):
        return r
    return replace(
        r,
        key=storable_key(r.key),
        message=optional_text(m),
        traceback=optional_text(tb),
        error_type=optional_text(et),
        compensation_error=optional_text(ce),
    )


def outcome_record(run_id: str, outcome: JobOutcome[Any]) -> JobRecord:
    """The `JobRecord` of a plain success committed as its outcome (see
    `SQLiteStore.commit`'s ``run_id``): SUCCEEDED, its result stored as is."""
    return JobRecord(
        run_id=run_id,
        key=outcome.key,
        status=JobStatus.SUCCEEDED,
        index=outcome.index,
        attempts=outcome.attempts,
        duration=outcome.duration,
        result=outcome.result,
        has_result=True,
        history=outcome.history,
    )


def as_records(
    records: Sequence[JobRecord | JobOutcome[Any]], run_id: str | None
) -> Sequence[JobRecord]:
    """``records`` with each plain success given as its outcome (of ``run_id``, see
    `Store.commit`) made a `JobRecord`."""
    if run_id is None:
        return records  # type: ignore[return-value]
    return [outcome_record(run_id, r) if isinstance(r, JobOutcome) else r for r in records]


def is_plain_success(r: JobRecord) -> bool:
    """A success with nothing but its result to store (see `JOB_SUCCESS`)."""
    return (
        r.status is JobStatus.SUCCEEDED
        and r.payload is None
        and r.compensation_error is None
        and r.error_type is None
        and r.message is None
        and r.kind is None
    )


def success_row(r: JobRecord, seq: int, now: float) -> JobRow:
    """The `JOB_SUCCESS` parameters of a plain success."""
    result = result_text(r)
    return (r.run_id, r.key, r.index, r.attempts, r.duration, result, result is not None, seq, now)


def is_compensation(r: JobRecord) -> bool:
    """Whether the record only reports how a compensation went.

    Such a record changes the job's status (COMPENSATED) or notes that its
    compensation failed for good (SUCCEEDED + ``compensation_error``); the
    job keeps its completion order, result and payload.
    """
    return r.status is JobStatus.COMPENSATED or r.compensation_error is not None


def zero_counts() -> dict[str, int]:
    """A counts dict with every status present."""
    return {s.value: 0 for s in JobStatus}



def dead_letter(
    *,
    id: int,
    run_id: str,
    key: str,
    payload: str | None,
    payload_is_repr: bool,
    kind: str | None,
    error_type: str | None,
    message: str | None,
    traceback: str | None,
    attempts: str | None,
    redrive_count: int,
    status: str,
    created_at: float,
) -> DeadLetter:
    """A `DeadLetter` from stored columns (JSON decoded afresh)."""
    return DeadLetter(
        id=id,
        run_id=run_id,
        key=key,
        payload=decode(payload),
        payload_is_repr=bool(payload_is_repr),
        kind=ErrorKind(kind) if kind else ErrorKind.PERMANENT,
        error_type=error_type or "",
        message=message or "",
        traceback=traceback or "",
        attempts=tuple(AttemptRecord.from_dict(a) for a in decode(attempts) or ()),
        redrive_count=redrive_count,
        status=status,  # type: ignore[arg-type]  # only DLQ_STATUSES are ever written
        created_at=created_at,
    )


