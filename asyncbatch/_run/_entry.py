"""A job admitted to a run, and how it is written to a checkpoint."""

from __future__ import annotations

import json
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any, Protocol

from asyncbatch._context import JobContext
from asyncbatch._errors import ErrorKind, qualname
from asyncbatch._result import AttemptRecord, JobOutcome, JobStatus
from asyncbatch._store import JobRecord, safe_repr
from asyncbatch._store._codec import ResultCodec

__all__ = ["Entry", "Parking", "json_payload", "success_record"]


class Parking(Protocol):
    """What holds a parked job: a loop timer, or its place on a circuit."""

    def cancel(self) -> None: ...


def json_payload(item: Any, key: str) -> tuple[Any, bool]:
    """The item as JSON-safe payload, or a safe repr (with a warning) when it is not.

    Never raises: an item nested deeper than the recursion limit (which
    breaks `json` and `repr` alike) is kept as a short `safe_repr`, so it
    fails only its own redrive, never the commit or the run.
    """
    try:
        return json.loads(json.dumps(item)), False
    except (TypeError, ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else "not JSON-serialisable"
        warnings.warn(
            f"asyncbatch: payload of job {key!r} is {why}; "
            "the dead letter keeps its repr and cannot be redriven as is",
            RuntimeWarning,
            stacklevel=2,
        )
        return safe_repr(item), True


class Entry(JobContext):
    """A job admitted to the run and not yet finished.

    It is also the job's `JobContext` (what `current_job()` returns): one
    object per job instead of two keeps the hot path short.
    """

    __slots__ = ("__dict__", "history", "index", "started")
    # What most jobs never change is a class default, not a slot: an entry is
    # made with five writes fewer (its dict exists only once one is written).
    deadline_at: float | None = None
    prev_delay: float = 0.0
    kind: ErrorKind | None = None
    redrive_of: int | None = None
    timer: Parking | None = None
    """What holds the job while it is parked (cancel it to let go)."""

    def __init__(self, run_id: str, index: int | None, key: str, item: Any) -> None:
        self.run_id = run_id
        self.key = key
        self.attempt = 0
        self.item = item
        self.dependency = None
        self.index = index
        self.started = 0.0
        # Most jobs never fail: share one empty tuple instead of allocating a
        # list per job (fewer allocations, fewer garbage-collector passes).
        self.history: list[AttemptRecord] | tuple[()] = ()

    def outcome(
        self,
        status: JobStatus,
        *,
        result: Any = None,
        error: BaseException | None = None,
        fell_back: bool = False,
    ) -> JobOutcome[Any]:
        """This job's `JobOutcome` as of now (duration from its first start)."""
        return JobOutcome(
            key=self.key,
            status=status,
            result=result,
            error=error,
            attempts=self.attempt,
            duration=time.perf_counter() - self.started if self.started else 0.0,
            index=self.index,
            kind=self.kind,
            history=tuple(self.history),
            fell_back=fell_back,
        )

    def record(
        self,
        outcome: JobOutcome[Any],
        *,
        keep_payload: bool = False,
        exc: BaseException | None = None,
        codec: ResultCodec | None = None,
    ) -> JobRecord:
        """The checkpoint of this job's final ``outcome``.

        Dead letters always keep the payload (to be redriven); succeeded jobs
        keep it only when ``keep_payload`` (a batch that may be rolled back).
        """
        result = outcome.result
        if codec is not None and outcome.status is JobStatus.SUCCEEDED:
            result = codec.encode(result)
        if outcome.status is JobStatus.SUCCEEDED and exc is None and not keep_payload:
            return success_record(self, outcome, result)
        dead = outcome.status is JobStatus.DEAD_LETTERED
        payload, is_repr = (
            json_payload(self.item, self.key) if dead or keep_payload else (None, False)
        )
        return JobRecord(
            run_id=self.run_id,
            key=self.key,
            status=outcome.status,
            index=self.index,
            attempts=outcome.attempts,
            duration=outcome.duration,
            result=result,
            has_result=not dead,
            payload=payload,
            payload_is_repr=is_repr,
            kind=outcome.kind if dead else None,
            error_type=None if exc is None else qualname(type(exc)),
            message=None if exc is None else str(exc),
            traceback=None if exc is None else "".join(traceback.format_exception(exc)),
            history=outcome.history,
            redrive_of=self.redrive_of,
        )


class _SuccessRecord:
    """`JobRecord`'s layout twin, mutable: a plain success's record is built here.

    The frozen dataclass ``__init__`` costs ~2 µs for 17 fields, a sixth of a
    checkpointed job's whole cost. This class has exactly `JobRecord`'s
    slots, stores them with plain attribute writes and then becomes a
    `JobRecord` (``__class__`` assignment between identical layouts): the same
    immutable object for a fraction of the cost.
    """

    __slots__ = JobRecord.__slots__

    def __init__(self, entry: Entry, outcome: JobOutcome[Any], result: Any) -> None:
        self.run_id = entry.run_id
        self.key = entry.key
        self.status = JobStatus.SUCCEEDED
        self.index = entry.index
        self.attempts = outcome.attempts
        self.duration = outcome.duration
        self.result = result
        self.has_result = True
        self.payload = None
        self.payload_is_repr = False
        self.kind = None
        self.error_type = None
        self.message = None
        self.traceback = None
        self.history = outcome.history
        self.redrive_of = entry.redrive_of
        self.compensation_error = None
        self.__class__ = JobRecord  # type: ignore[assignment]


success_record: Callable[[Entry, JobOutcome[Any], Any], JobRecord]
success_record = _SuccessRecord  # type: ignore[assignment]
"""The record of a plain success: ``(entry, outcome, result)`` (result stored as is)."""
